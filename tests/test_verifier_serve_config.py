"""How `attest-verifier serve` configures uvicorn and the collector, without serving: uvicorn's
Server is replaced by one that records its configuration."""

from __future__ import annotations

import gc
import signal
from pathlib import Path
from typing import Any, ClassVar

import pytest
import uvicorn

from attest import pki
from webhook import cli
from webhook.config import Settings


class FakeServer:
    configs: ClassVar[list[Any]] = []

    def __init__(self, config: Any) -> None:
        self.configs.append(config)
        self.started = False

    def run(self) -> None:
        self.started = True


def test_serve_uses_uvloop_and_httptools_and_freezes_the_heap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pki.init_verifier_pki(tmp_path / "pki", ["localhost"], ["127.0.0.1"])
    settings = Settings(
        listen=("127.0.0.1", 0),
        tls_cert=tmp_path / "pki" / pki.SERVER_CERT,
        tls_key=tmp_path / "pki" / pki.SERVER_KEY,
        database=f"sqlite:///{tmp_path / 'verifier.db'}",
        controllers=False,
    )
    calls: list[str] = []
    thresholds: list[tuple[int, ...]] = []
    monkeypatch.setattr(uvicorn, "Server", FakeServer)
    monkeypatch.setattr(signal, "signal", lambda *_: None)  # leave pytest's handlers alone

    def collect(*_: int) -> int:
        calls.append("collect")
        return 0

    monkeypatch.setattr(gc, "collect", collect)
    monkeypatch.setattr(gc, "freeze", lambda: calls.append("freeze"))
    monkeypatch.setattr(gc, "set_threshold", lambda *t: thresholds.append(t))
    FakeServer.configs.clear()

    assert cli.serve(settings) == cli.EXIT_OK

    (config,) = FakeServer.configs
    assert (config.loop, config.http) == ("uvloop", "httptools")
    assert config.timeout_graceful_shutdown == cli.GRACEFUL_SHUTDOWN_SECONDS
    assert config.ssl_context_factory is not None
    assert calls == ["collect", "freeze"]
    assert [t[0] for t in thresholds] == [cli.GC_GEN0_THRESHOLD]


def test_uvloop_and_httptools_are_installed_with_the_verifier() -> None:
    # They are the verifier extra's: serve names them, so a missing one fails at start.
    import httptools  # noqa: F401
    import uvloop  # noqa: F401
