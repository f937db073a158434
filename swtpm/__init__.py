"""A software-TPM harness for development, tests and the demo (not shipped in the wheel).

- `swtpm.provision`: a local certificate authority and TPM states whose EK certificates it issued.
- `swtpm.instance`: start, stop and power-cycle swtpm processes (`SwtpmInstance`).
- `swtpm.measuredboot`: a simulated UEFI measured boot: a `BootProfile`, its TCG event log, the extends.
- `swtpm.imalog`: an IMA ima-ng measurement list extending PCR 10.
- `swtpm.tools`: run a tpm2-tools command against an instance (`run_tool`), flushing what it left loaded.

`python -m swtpm --help` drives the same from a shell; docs/swtpm.md explains what is simulated.
"""

from __future__ import annotations

import shutil

from attest.errors import TpmError


class SwtpmError(TpmError):
    """The harness could not provision, start or drive a software TPM."""


def require_binary(name: str) -> str:
    """The absolute path of a swtpm or tpm2-tools program, or a SwtpmError saying what to install."""
    path = shutil.which(name)
    if path is None:
        raise SwtpmError(f"{name} not found on PATH: install the swtpm, swtpm-tools and tpm2-tools packages")
    return path
