"""A node for the agent's tests: a software TPM booted through a simulated measured boot, and
the files securityfs would show for it, which the agent is pointed at."""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from swtpm.imalog import ImaLog, measure_files, simulate_ima
from swtpm.instance import SwtpmInstance
from swtpm.measuredboot import BootProfile, boot


def publish(path: Path, data: bytes) -> None:
    """Replace `path` atomically, as a reader of securityfs never sees a half-written list."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


@dataclass
class SwtpmNode:
    """`tpm` booted through `profile`, its logs as files in `dir` (which must exist)."""

    tpm: SwtpmInstance
    dir: Path
    profile: BootProfile = field(default_factory=BootProfile)
    ima_log: ImaLog | None = None
    log: bytes = b""  # the TCG event log of the last boot

    @property
    def eventlog(self) -> Path:
        return self.dir / "binary_bios_measurements"

    @property
    def ima(self) -> Path:
        return self.dir / "ascii_runtime_measurements"

    @property
    def boot_id(self) -> Path:
        return self.dir / "boot_id"

    @property
    def container_log(self) -> Path:
        return self.dir / "containers.log"

    def boot(self) -> None:
        """Boot (or reboot) the TPM through `profile`: its event log, a new IMA list that starts
        with boot_aggregate, and a new boot id."""
        simulated = boot(self.tpm, self.profile)
        self.log = simulated.log
        publish(self.eventlog, simulated.log)
        self.ima_log = simulate_ima(self.tpm.tcti)
        publish(self.ima, self.ima_log.text().encode())
        publish(self.boot_id, f"{uuid.uuid4()}\n".encode())

    def execute(self, files: list[tuple[str, bytes]]) -> None:
        """As the kernel does: the entries join the list, then PCR 10 is extended."""
        assert self.ima_log is not None
        publish(self.ima, self.ima_log.with_files(files).text().encode())
        self.ima_log = measure_files(self.tpm.tcti, self.ima_log, files)
