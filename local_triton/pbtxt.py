"""Reads a Triton config.pbtxt (protobuf text format) without its schema: the launcher runs in the
cpu image, which has neither build/ nor tritonclient's model_config_pb2, and needs only a few
fields (the rate limiter's resources and instance counts).

  parse('instance_group [ { count: 2 rate_limiter { priority: 3 } } ]')
  -> {"instance_group": [{"count": ["2"], "rate_limiter": [{"priority": ["3"]}]}]}

Every field maps to the list of its values (a repeated field written as `f [ a, b ]` or as `f: a
f: b` reads the same); messages are dicts, scalars stay strings (quotes removed).
"""

from __future__ import annotations

import re
from typing import Union

Value = Union[str, "Message"]
Message = dict[str, list[Value]]

_TOKEN = re.compile(
    r"""\s+|\#[^\n]*|"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|[{}\[\]<>:,;]|[^\s{}\[\]<>:,;"'\#]+"""
)
_CLOSE = {"{": "}", "<": ">"}


class PbtxtError(ValueError):
    """The text is not protobuf text format."""


def parse(text: str) -> Message:
    return _Parser(_tokens(text)).message(end=None)


def _tokens(text: str) -> list[str]:
    tokens, pos = [], 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:  # an unterminated string
            raise PbtxtError(f"unexpected {text[pos]!r} at character {pos}")
        token, pos = match.group(), match.end()
        if token.strip() and not token.startswith("#"):
            tokens.append(token)
    return tokens


class _Parser:
    def __init__(self, tokens: list[str]) -> None:
        self.tokens, self.pos = tokens, 0

    def next(self) -> str:
        if self.pos >= len(self.tokens):
            raise PbtxtError("unexpected end of text")
        token = self.tokens[self.pos]
        self.pos += 1
        return token

    def peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def message(self, end: str | None) -> Message:
        fields: Message = {}
        while self.peek() != end:
            name = self.next()
            if not re.fullmatch(r"[A-Za-z_][\w.]*", name):
                raise PbtxtError(f"expected a field name, got {name!r}")
            if self.peek() == ":":
                self.next()
            fields.setdefault(name, []).extend(self.values())
            if self.peek() in (",", ";"):
                self.next()
        if end is not None:
            self.next()
        return fields

    def values(self) -> list[Value]:
        if self.peek() != "[":
            return [self.value()]
        self.next()
        items: list[Value] = []
        while self.peek() != "]":
            items.append(self.value())
            if self.peek() == ",":
                self.next()
        self.next()
        return items

    def value(self) -> Value:
        token = self.next()
        if token in _CLOSE:
            return self.message(end=_CLOSE[token])
        if token[0] in "\"'":
            return token[1:-1]
        if token in "}]>:,;":
            raise PbtxtError(f"unexpected {token!r}")
        return token
