"""The agent's state directory: what survives a restart.

    ak.json          the AK blob (wrapped by the TPM's storage key: useless off this TPM)
    enrollment.json  which verifier bound that AK to which node, and when
    boot.json        the boot id of the last round the verifier appraised (reboot detection)
    ek.pem           the EK public key, written when the verifier refused an EK that has no
                     certificate: what an operator enrolls (attestctl ek enroll --ek-pub)

Every file is written atomically and 0600: a torn file after a power cut must read as
absent, never as half a key, and nothing here is for other users to read.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from attest.errors import TpmError
from attest.fileio import write_private
from attest.tpm import AttestationKey, Tpm, create_ak, load_ak

DEFAULT_STATE_DIR = Path("/var/lib/attest-agent")
AK_FILE = "ak.json"
ENROLLMENT_FILE = "enrollment.json"
BOOT_FILE = "boot.json"
EK_PUBLIC_FILE = "ek.pem"
_VERSION = 1


def load_or_create_ak(tpm: Tpm, state_dir: Path, alg: str = "ecc") -> tuple[AttestationKey, bool]:
    """The AK this node enrolled with, or a new one saved for next time; True when new."""
    path = state_dir / AK_FILE
    if path.exists():
        return AttestationKey.from_file(path), False
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    ak = create_ak(tpm, alg)
    ak.save(path)
    return ak, True


@dataclass(frozen=True)
class AkStatus:
    ak: AttestationKey
    created: bool  # no AK was stored, or the stored one was replaced
    replaced_because: str | None = None  # why the stored AK was unusable


def load_usable_ak(tpm: Tpm, state_dir: Path, alg: str = "ecc") -> AkStatus:
    """The stored AK if this TPM still loads it; otherwise a new one, saved in its place.

    A stored AK stops loading when the owner hierarchy was cleared (new storage seed) or the
    blob was damaged. A new AK is created before the old blob is overwritten, so a TPM that
    cannot create keys either (unreachable, locked) keeps the old blob for when it recovers.
    """
    path = state_dir / AK_FILE
    if not path.exists():
        ak, _ = load_or_create_ak(tpm, state_dir, alg)
        return AkStatus(ak, created=True)
    try:
        stored = AttestationKey.from_file(path)
        with load_ak(tpm, stored):
            return AkStatus(stored, created=False)
    except TpmError as e:
        problem = str(e)
    ak = create_ak(tpm, alg)
    ak.save(path)
    return AkStatus(ak, created=True, replaced_because=problem)


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_private(path, data)


def _write_json(path: Path, doc: dict[str, Any]) -> None:
    _write(path, (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode())


def _read_json(path: Path) -> dict[str, Any] | None:
    """The document, or None when absent or unreadable: every file here can be rebuilt, by
    enrolling again or by sending the whole IMA list once."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or doc.get("version") != _VERSION:
        return None
    return doc


@dataclass(frozen=True)
class Enrollment:
    """The verifier at `verifier` bound the AK named `ak_name` (hex) to `node`."""

    node: str
    verifier: str
    ak_name: str
    ek_kind: str
    enrolled_at: dt.datetime

    def matches(self, node: str, verifier: str, ak_name: str) -> bool:
        """Still valid for this configuration: a new node name, another verifier or a new AK
        each need their own enrollment."""
        return (self.node, self.verifier, self.ak_name) == (node, verifier, ak_name)

    def save(self, state_dir: Path) -> None:
        doc = asdict(self)
        doc["enrolled_at"] = self.enrolled_at.isoformat()
        doc["version"] = _VERSION
        _write_json(state_dir / ENROLLMENT_FILE, doc)

    @classmethod
    def load(cls, state_dir: Path) -> Enrollment | None:
        doc = _read_json(state_dir / ENROLLMENT_FILE)
        if doc is None:
            return None
        try:
            return cls(
                node=str(doc["node"]),
                verifier=str(doc["verifier"]),
                ak_name=str(doc["ak_name"]),
                ek_kind=str(doc["ek_kind"]),
                enrolled_at=dt.datetime.fromisoformat(doc["enrolled_at"]),
            )
        except (KeyError, TypeError, ValueError):
            return None

    @staticmethod
    def forget(state_dir: Path) -> None:
        (state_dir / ENROLLMENT_FILE).unlink(missing_ok=True)


def load_boot_id(state_dir: Path) -> str | None:
    doc = _read_json(state_dir / BOOT_FILE)
    boot_id = doc.get("boot_id") if doc else None
    return boot_id if isinstance(boot_id, str) else None


def save_boot_id(state_dir: Path, boot_id: str) -> None:
    _write_json(
        state_dir / BOOT_FILE,
        {"version": _VERSION, "boot_id": boot_id, "updated_at": dt.datetime.now(dt.UTC).isoformat()},
    )


def save_ek_public(state_dir: Path, pem: bytes) -> Path:
    path = state_dir / EK_PUBLIC_FILE
    _write(path, pem)
    return path
