"""The served repository's files for versions: numbered version directories, and the block at
the end of each config.pbtxt that says which versions Triton loads, which one new requests go
to, and that version's model.json (the gateway reads both from Triton, service/triton.py).

The block is appended to the build's reviewed config text and replaced as a whole, so the rest
of the file stays as the build wrote it. Every write is a rename: Triton (polling or loading)
never reads half a file or half a version directory.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from service.model_info import CONTRACT_PARAMETER, SERVING_VERSION_PARAMETER, ModelMetadata

BLOCK_MARK = "# Versions (make publish / make rollback, release/): do not edit below this line"
CONTRACT_FILE = "model.json"  # in each version directory: the model.json it was built with


class ReleaseError(Exception):
    """A one-line reason; nothing Triton serves was changed by the step that raised it."""


@dataclass
class ServedModel:
    path: Path
    body: str  # config.pbtxt without the versions block
    config: model_config_pb2.ModelConfig  # the whole file, block included

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def is_ensemble(self) -> bool:
        return self.config.platform == "ensemble"

    def versions(self) -> list[int]:
        """Version directories on disk, oldest first."""
        return sorted(int(p.name) for p in self.path.iterdir() if p.is_dir() and p.name.isdigit())

    def serving(self) -> int:
        """The version new requests go to: the block's, else (never published) the newest."""
        value = self.config.parameters[SERVING_VERSION_PARAMETER].string_value
        if value.isdigit():
            return int(value)
        versions = self.versions()
        if not versions:
            raise ReleaseError(f"{self.path}: no version directory")
        return versions[-1]

    def contract(self, version: int) -> str:
        """The model.json text of one version (written there by the publish that added it)."""
        path = self.path / str(version) / CONTRACT_FILE
        if not path.is_file():
            raise ReleaseError(f"{path} is missing: version {version} has no model.json")
        return path.read_text()

    def write_block(self, loaded: list[int], serving: int, contract: str) -> None:
        block = model_config_pb2.ModelConfig()
        block.version_policy.specific.versions.extend(sorted(set(loaded)))
        block.parameters[SERVING_VERSION_PARAMETER].string_value = str(serving)
        block.parameters[CONTRACT_PARAMETER].string_value = compact(contract)
        text = f"{self.body.rstrip()}\n\n{BLOCK_MARK}\n{text_format.MessageToString(block)}"
        write_atomically(self.path / "config.pbtxt", text)
        self.body, self.config = _read_config(self.path / "config.pbtxt")


def _read_config(path: Path) -> tuple[str, model_config_pb2.ModelConfig]:
    text = path.read_text()
    body = text.split(f"\n{BLOCK_MARK}\n")[0]
    try:
        config = text_format.Parse(text, model_config_pb2.ModelConfig())
    except text_format.ParseError as exc:
        raise ReleaseError(f"{path}: not a Triton model config: {exc}") from exc
    if config.HasField("version_policy") and BLOCK_MARK not in text:
        raise ReleaseError(
            f"{path} sets its own version_policy: make publish owns it (remove it from the config)"
        )
    return body, config


def read_models(repository: Path) -> list[ServedModel]:
    """Every model directory of a Triton repository, composing models before ensembles (an
    ensemble loads after what it runs)."""
    if not repository.is_dir():
        raise ReleaseError(f"{repository} is not a directory")
    models = []
    for path in sorted(p for p in repository.iterdir() if (p / "config.pbtxt").is_file()):
        body, config = _read_config(path / "config.pbtxt")
        models.append(ServedModel(path, body, config))
    if not models:
        raise ReleaseError(f"{repository} holds no model (no */config.pbtxt)")
    return sorted(models, key=lambda m: (m.is_ensemble, m.name))


def signature(config: model_config_pb2.ModelConfig) -> str:
    """What one config.pbtxt fixes for every version of a model: what runs it and its tensors."""
    kept = model_config_pb2.ModelConfig(
        platform=config.platform, backend=config.backend, max_batch_size=config.max_batch_size
    )
    for tensor in config.input:
        kept.input.add(name=tensor.name, data_type=tensor.data_type, dims=tensor.dims)
    for tensor in config.output:
        kept.output.add(name=tensor.name, data_type=tensor.data_type, dims=tensor.dims)
    return text_format.MessageToString(kept, as_one_line=True)


def compact(contract: str) -> str:
    """A model.json as one line, checked to be one the gateway reads."""
    try:
        raw = json.loads(contract)
        ModelMetadata.from_dict(raw)
    except (KeyError, TypeError, ValueError) as exc:
        raise ReleaseError(f"not a valid model.json: {exc}") from exc
    return json.dumps(raw, separators=(",", ":"))


@contextmanager
def exclusive(repository: Path) -> Iterator[None]:
    """One publish or rollback at a time on a repository: two would interleave their configs.
    The lock is the kernel's (flock), so a killed run leaves none behind."""
    if not repository.is_dir():
        raise ReleaseError(f"{repository} is not a directory")
    with (repository / ".release.lock").open("a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            lock.seek(0)
            holder = lock.read().strip() or "another process"
            raise ReleaseError(
                f"a publish or rollback is already running on {repository} ({holder})"
            ) from exc
        lock.seek(0)
        lock.truncate()
        lock.write(f"pid {os.getpid()}")
        lock.flush()
        yield


def write_atomically(path: Path, text: str) -> None:
    staging = path.with_name(f".{path.name}.staging")
    staging.write_text(text)
    os.replace(staging, path)


def copy_atomically(source: Path, path: Path) -> None:
    staging = path.with_name(f".{path.name}.staging")
    shutil.copyfile(source, staging)
    os.replace(staging, path)


def copy_version(source: Path, model: ServedModel, version: int, contract: str) -> None:
    """source (a built model's version directory) becomes the model's `version`, with its
    model.json, in one rename."""
    staging = model.path / f".{version}.staging"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(source, staging, ignore=shutil.ignore_patterns("__pycache__"))
    (staging / CONTRACT_FILE).write_text(contract)
    os.replace(staging, model.path / str(version))


def remove_version(model: ServedModel, version: int) -> None:
    path = model.path / str(version)
    staging = model.path / f".{version}.removed"
    if path.is_dir():
        os.replace(path, staging)  # gone for Triton at once; the files after
        shutil.rmtree(staging, ignore_errors=True)
