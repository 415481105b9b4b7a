"""Publish a new build as a numbered version, or roll back to the previous one, without
downtime: the swap every served model goes through.

  1. every model's config loads both versions, the old one still named as served: Triton loads
     the new version beside the old and swaps the config in only once it is READY (a reload
     keeps serving what was loaded: measured, 0 failed requests);
  2. every config names the new version: each gateway reads it from Triton within
     CATALOG_REFRESH_S (service/triton.py) and sends each new request, wholly, to it;
  3. the drain: that refresh plus the gateway's REQUEST_TIMEOUT_S, so no request is left on
     the old version;
  4. every config loads the new version alone: Triton unloads the old.

A step 1 that fails (a build Triton cannot load) puts every config back and removes the new
version: no gateway ever named it, and what Triton serves is unchanged. Triton started with
--model-control-mode=explicit takes load requests (make serve, compose and deploy/kubernetes
start it so); one that polls its repository picks the configs up by itself (--poll).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path

import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from release.served import (
    CONTRACT_FILE,
    ReleaseError,
    ServedModel,
    compact,
    copy_atomically,
    copy_version,
    exclusive,
    read_models,
    remove_version,
    signature,
    write_atomically,
)
from service.model_info import SERVING_VERSION_PARAMETER

# The gateway's catalog refresh (service/triton.CATALOG_REFRESH_S) + its default REQUEST_TIMEOUT_S
# + a margin: after this, no gateway sends or holds a request on the old version.
DEFAULT_DRAIN_S = 2.0 + 10.0 + 3.0
NO_LOAD_API = "explicit model load / unload is not allowed"


def addresses(url: str, every_address: bool = False) -> list[str]:
    """host:port[,host:port...]; every_address: each host name as all the addresses it resolves
    to (a Kubernetes headless Service: one per Triton pod, each its own model control)."""
    urls = [u.strip() for u in url.split(",") if u.strip()]
    if not every_address:
        return urls
    found: list[str] = []
    for one in urls:
        host, _, port = one.rpartition(":")
        try:
            infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
        except (OSError, ValueError) as exc:
            raise ReleaseError(f"{one}: cannot resolve it: {exc}") from exc
        for info in infos:
            address = str(info[4][0])
            entry = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
            if entry not in found:
                found.append(entry)
    return found


class Triton:
    """The repository API of every Triton serving the repository (explicit model control), or
    a wait for their polling. Each step is done on every server before the next step."""

    def __init__(
        self,
        url: str,
        poll: bool = False,
        load_timeout_s: float = 600.0,
        every_address: bool = False,
    ) -> None:
        self.urls = addresses(url, every_address)
        if not self.urls:
            raise ReleaseError(f"no Triton address in {url!r}")
        self.poll = poll  # Triton polls its repository: no load requests, wait for what it read
        self.load_timeout_s = load_timeout_s
        self.clients = [grpcclient.InferenceServerClient(u) for u in self.urls]
        self.client = self.clients[0]

    def check_mode(self) -> None:
        """Before anything is written: each Triton takes load requests, or (poll) does not. The
        probe unloads a model that does not exist: a no-op under explicit model control."""
        for url, client in zip(self.urls, self.clients, strict=True):
            try:
                client.unload_model("vit-release-mode-probe")
            except InferenceServerException as exc:
                if NO_LOAD_API not in str(exc):
                    raise ReleaseError(f"Triton at {url}: {exc.message()}") from exc
                if not self.poll:
                    raise ReleaseError(
                        f"Triton at {url} takes no load requests: start it with "
                        "--model-control-mode=explicit --load-model=* (make serve, compose and "
                        "deploy/kubernetes do), or pass --poll if it polls its repository"
                    ) from exc
                continue
            if self.poll:
                raise ReleaseError(f"Triton at {url} takes load requests: drop --poll")

    def apply(self, model: ServedModel, loaded: list[int], serving: int) -> None:
        """Every Triton serves model's config as written now: `loaded` READY, `serving` named."""
        for url, client in zip(self.urls, self.clients, strict=True):
            if not self.poll:
                try:
                    client.load_model(model.name)
                except InferenceServerException as exc:
                    error = f"{model.name}: Triton at {url} did not load it: {_one_line(exc)}"
                    raise ReleaseError(error) from exc
            deadline = time.monotonic() + self.load_timeout_s
            while not _serves(client, model.name, loaded, serving):
                if time.monotonic() > deadline:
                    hint = " (does it poll its repository?)" if self.poll else ""
                    raise ReleaseError(
                        f"{model.name}: Triton at {url} does not serve versions {loaded} with "
                        f"{serving} named after {self.load_timeout_s:.0f} s{hint}"
                    )
                time.sleep(0.5)


def _one_line(exc: InferenceServerException, limit: int = 400) -> str:
    """Triton's load error without the backend's traceback ("At: ..."), on one line."""
    text = " ".join(str(exc.message()).split("\nAt:")[0].split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _serves(
    client: grpcclient.InferenceServerClient, name: str, loaded: list[int], serving: int
) -> bool:
    try:
        config = client.get_model_config(name, as_json=True)["config"]
        index = client.get_model_repository_index(as_json=True).get("models", [])
    except InferenceServerException:
        return False
    named = config.get("parameters", {}).get(SERVING_VERSION_PARAMETER, {})
    ready = {
        int(m["version"])
        for m in index
        if m.get("name") == name and m.get("state") == "READY" and m.get("version", "").isdigit()
    }
    return named.get("string_value") == str(serving) and ready == set(loaded)


def _contract_of_served(models: list[ServedModel], root_contract: Path) -> None:
    """A repository that was never published to: its version has the repository's model.json."""
    for model in models:
        version = model.path / str(model.serving())
        if not (version / CONTRACT_FILE).is_file():
            if not root_contract.is_file():
                raise ReleaseError(f"{root_contract} is missing: which model.json is served?")
            (version / CONTRACT_FILE).write_text(root_contract.read_text())


def _swap(
    triton: Triton,
    models: list[ServedModel],
    old: int,
    new: int,
    drain_s: float,
    say: Callable[[str], None],
    bodies: dict[str, str] | None = None,
    undo: Callable[[], None] = lambda: None,
) -> None:
    """Serve `new` instead of `old` on every model (the steps above). bodies: the configs
    (without the versions block) to put back if loading fails; undo: what else to remove then."""
    contract = {m.name: m.contract(new) for m in models}
    done: list[ServedModel] = []
    try:  # 1. new loaded beside old on every model; old still named: no gateway sees new yet
        for model in models:
            done.append(model)
            model.write_block([old, new], old, model.contract(old))
            triton.apply(model, [old, new], old)
            say(f"{model.name}: version {new} loaded beside {old}")
    except ReleaseError:
        for model in done:  # back as it was: old alone (new was never named: nothing used it)
            model.body = (bodies or {}).get(model.name, model.body)
            model.write_block([old], old, model.contract(old))
            try:
                triton.apply(model, [old], old)
            except ReleaseError as again:
                say(f"{model.name}: could not be put back: {again}")
        undo()
        raise
    for model in models:  # 2. new named: gateways follow within CATALOG_REFRESH_S
        model.write_block([old, new], new, contract[model.name])
        triton.apply(model, [old, new], new)
    say(f"version {new} named on every model; draining {drain_s:.0f} s (requests on {old} finish)")
    time.sleep(drain_s)  # 3.
    for model in models:  # 4. old unloaded
        model.write_block([new], new, contract[model.name])
        triton.apply(model, [new], new)
    say(f"version {old} unloaded; every model serves version {new}")


def publish(
    repository: Path,
    build: Path,
    target: str,
    triton: Triton,
    drain_s: float = DEFAULT_DRAIN_S,
    keep: int = 3,
    say: Callable[[str], None] = print,
) -> int:
    """The build at `build` (a `make repo` output) becomes the next version of `repository`
    (the served one); returns its number."""
    if keep < 1:
        raise ReleaseError("--keep must be at least 1: the served version stays on disk")
    triton.check_mode()
    with exclusive(repository):
        return _publish(repository, build, target, triton, drain_s, keep, say)


def _publish(
    repository: Path,
    build: Path,
    target: str,
    triton: Triton,
    drain_s: float,
    keep: int,
    say: Callable[[str], None],
) -> int:
    served = read_models(repository / target)
    built = {m.name: m for m in read_models(build / target)}
    names = {m.name for m in served}
    if names != set(built):
        added, missing = sorted(set(built) - names) or "none", sorted(names - set(built)) or "none"
        raise ReleaseError(
            f"the new build's models differ from the served ones (added: {added}, missing: "
            f"{missing}): a version replaces every model; another set is a new repository"
        )
    for model in served:
        if signature(model.config) != signature(built[model.name].config):
            raise ReleaseError(
                f"{model.name}: the new build's inputs, outputs or backend differ from the served "
                "ones (a different input size or class count?): Triton keeps one config per "
                "model, so a version keeps them; serve a different model as a new repository"
            )
        if not (built[model.name].path / "1").is_dir():
            raise ReleaseError(f"{built[model.name].path}/1 is missing: not a finished build")
    contract_path = build / "model.json"
    if not contract_path.is_file():
        raise ReleaseError(f"{contract_path} is missing: not a finished build (make repo)")
    contract = contract_path.read_text()
    compact(contract)  # one the gateway reads, checked before anything is written
    _contract_of_served(served, repository / "model.json")
    olds = {m.serving() for m in served}
    if len(olds) != 1:
        raise ReleaseError(
            f"the served models name different versions {sorted(olds)} (an interrupted "
            "publish?): make rollback TO=<version> first"
        )
    old = olds.pop()
    new = max(v for m in served for v in m.versions()) + 1
    bodies = {m.name: m.body for m in served}
    for model in served:
        source = built[model.name]
        copy_version(source.path / "1", model, new, contract)
        model.body = source.body  # the new build's reviewed config (same signature)
        for extra in source.path.iterdir():  # model-level files, e.g. labels.txt
            if extra.is_file() and extra.name != "config.pbtxt":
                copy_atomically(extra, model.path / extra.name)
    say(f"version {new} copied into {repository / target} ({len(served)} models)")

    def undo() -> None:
        for model in served:
            remove_version(model, new)

    _swap(triton, served, old, new, drain_s, say, bodies, undo)
    write_atomically(repository / "model.json", contract)
    for model in served:  # the newest `keep` stay on disk for make rollback
        for version in model.versions()[:-keep]:
            remove_version(model, version)
    return new


def rollback(
    repository: Path,
    target: str,
    triton: Triton,
    to: int | None = None,
    drain_s: float = DEFAULT_DRAIN_S,
    say: Callable[[str], None] = print,
) -> int:
    """Serve the version before the served one (or `to`) again; returns its number."""
    triton.check_mode()
    with exclusive(repository):
        return _rollback(repository, target, triton, to, drain_s, say)


def _rollback(
    repository: Path,
    target: str,
    triton: Triton,
    to: int | None,
    drain_s: float,
    say: Callable[[str], None],
) -> int:
    served = read_models(repository / target)
    olds = {m.serving() for m in served}
    current = max(olds)
    if to is None:
        earlier = [v for v in served[0].versions() if v < current]
        if not earlier:
            raise ReleaseError(f"no version before {current} is on disk to roll back to")
        to = earlier[-1]
    for model in served:
        if to not in model.versions():
            raise ReleaseError(f"{model.name} has no version {to} on disk: {model.versions()}")
    if olds == {to}:
        raise ReleaseError(f"version {to} is already served")
    _swap(triton, served, current, to, drain_s, say)
    write_atomically(repository / "model.json", served[0].contract(to))
    return to


def status(repository: Path, target: str) -> list[str]:
    lines = []
    for model in read_models(repository / target):
        loaded = list(model.config.version_policy.specific.versions) or ["newest"]
        lines.append(
            f"{model.name}: serving {model.serving()}, loaded {loaded}, on disk {model.versions()}"
        )
    return lines
