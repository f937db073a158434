"""The agent's state directory: where the AK blob lives across restarts."""

from __future__ import annotations

from pathlib import Path

from attest.tpm import AttestationKey, Tpm, create_ak

DEFAULT_STATE_DIR = Path("/var/lib/attest-agent")
AK_FILE = "ak.json"


def load_or_create_ak(tpm: Tpm, state_dir: Path, alg: str = "ecc") -> tuple[AttestationKey, bool]:
    """The AK this node enrolled with, or a new one saved for next time; True when new."""
    path = state_dir / AK_FILE
    if path.exists():
        return AttestationKey.from_file(path), False
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    ak = create_ak(tpm, alg)
    ak.save(path)
    return ak, True
