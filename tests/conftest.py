"""Shared fixtures: software TPMs (swtpm) for integration and end-to-end tests.

    swtpm_ca        (session)  the local CA (swtpm.provision.LocalCa): .root_cert, .intermediate_cert
    swtpm_template  (session)  one TPM provisioned by that CA (swtpm.provision.TpmState), copied per test
    swtpm           (function) a started TPM of its own (swtpm.instance.SwtpmInstance):
                               .tcti ("swtpm:path=..."), .state_dir, .ca, .restart(startup=True)
    swtpm_factory   (function) swtpm_factory(n=1, distinct=False, startup=True) -> [SwtpmInstance, ...]
                               distinct=True provisions each with a fresh EK (about 1 s each);
                               otherwise they are copies of the template and share its EK
    swtpm_booted    (function) `swtpm` after the "good" simulated boot and IMA start (BootedTpm)

Every instance is stopped at teardown. Tests using these fixtures get the `swtpm` marker
automatically. Missing swtpm binaries fail the test: CI must run them, not skip them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

# tpm2-tss logs errors we handle (a missing NV index, say) to stderr; tests opt back in if needed.
os.environ.setdefault("TSS2_LOG", "all+NONE")

from swtpm import SwtpmError, require_binary
from swtpm.instance import SwtpmInstance
from swtpm.measuredboot import BootProfile, SimulatedBoot, boot
from swtpm.provision import LocalCa, TpmState, copy_state, provision_ca, provision_tpm

if TYPE_CHECKING:
    # swtpm.imalog imports the verifier's IMA encoder: only the fixture that needs it pays for it.
    from swtpm.imalog import ImaLog

# Database fixtures (PostgreSQL server, stores over SQLite and PostgreSQL): tests/pg.py.
# `attest-verifier serve` as a process over TLS: tests/verifier_process.py.
pytest_plugins = ["tests.pg", "tests.verifier_process", "tests.webhook_api"]

SWTPM_FIXTURES = frozenset({"swtpm", "swtpm_ca", "swtpm_template", "swtpm_factory", "swtpm_booted"})
_BINARIES = ("swtpm", "swtpm_setup", "swtpm_localca")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SWTPM_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.swtpm)


def _require_swtpm() -> None:
    try:
        for name in _BINARIES:
            require_binary(name)
    except SwtpmError as e:
        pytest.fail(f"{e} (scripts/setup.sh installs them)", pytrace=False)


@pytest.fixture(scope="session")
def swtpm_ca(tmp_path_factory: pytest.TempPathFactory) -> LocalCa:
    _require_swtpm()
    return provision_ca(tmp_path_factory.mktemp("swtpm-ca"))


@pytest.fixture(scope="session")
def swtpm_template(swtpm_ca: LocalCa, tmp_path_factory: pytest.TempPathFactory) -> TpmState:
    return provision_tpm(tmp_path_factory.mktemp("swtpm-template") / "state", swtpm_ca)


SwtpmFactory = Callable[..., list[SwtpmInstance]]


@pytest.fixture
def swtpm_factory(
    swtpm_template: TpmState, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SwtpmFactory]:
    made: list[SwtpmInstance] = []

    def make(count: int = 1, *, distinct: bool = False, startup: bool = True) -> list[SwtpmInstance]:
        out = []
        for _ in range(count):
            state_dir = tmp_path_factory.mktemp("swtpm") / "state"
            if distinct:
                state = provision_tpm(state_dir, swtpm_template.ca)
            else:
                state = copy_state(swtpm_template, state_dir)
            inst = SwtpmInstance(state.state_dir, ca=state.ca)
            made.append(inst)
            inst.start(startup=startup)
            out.append(inst)
        return out

    try:
        yield make
    finally:
        for inst in made:
            inst.close()


@pytest.fixture
def swtpm(swtpm_factory: SwtpmFactory) -> SwtpmInstance:
    return swtpm_factory(1)[0]


@dataclass(frozen=True)
class BootedTpm:
    tpm: SwtpmInstance
    boot: SimulatedBoot
    ima: ImaLog
    eventlog_path: Path  # the binary TCG event log, as /sys/kernel/security/tpm0/binary_bios_measurements
    ima_path: Path  # the ASCII IMA list, as /sys/kernel/security/ima/ascii_runtime_measurements


@pytest.fixture
def swtpm_booted(swtpm: SwtpmInstance, tmp_path: Path) -> BootedTpm:
    from swtpm.imalog import simulate_ima

    simulated = boot(swtpm, BootProfile())
    ima = simulate_ima(swtpm.tcti)
    eventlog_path = tmp_path / "binary_bios_measurements"
    eventlog_path.write_bytes(simulated.log)
    ima_path = tmp_path / "ascii_runtime_measurements"
    ima_path.write_text(ima.text())
    return BootedTpm(swtpm, simulated, ima, eventlog_path, ima_path)
