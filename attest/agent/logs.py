"""The logs a node sends with its quotes: the TCG event log, the IMA measurement list, the boot id.

The kernel exports them in securityfs; tests and unusual setups point at files instead. The
event log is sent whole every round (it is fixed after boot and small). The IMA list only
grows during a boot and can reach tens of megabytes, so it is sent from the entry the
verifier asks for, cut at entry boundaries, and the boundaries found are remembered so that
each round only parses what the kernel appended since the last one.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from attest.errors import ParseError
from attest.verify import ima
from attest.wire import MAX_EVENTLOG, MAX_IMA

DEFAULT_EVENTLOG = Path("/sys/kernel/security/tpm0/binary_bios_measurements")
# The binary list rather than the ASCII one: it is the authoritative form, and the only one
# that carries every template (the ASCII form cannot represent some fields).
DEFAULT_IMA = Path("/sys/kernel/security/ima/binary_runtime_measurements")
DEFAULT_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")

_READ_CHUNK = 1 << 20
_BOOT_ID_MAX = 64


class LogError(Exception):
    """A log exists but cannot be read or is too large to send."""


def _read_bounded(path: Path, limit: int, what: str) -> bytes | None:
    """The file's bytes, or None when it does not exist. securityfs files report a size of 0,
    so read until end of file rather than trusting stat."""
    try:
        with path.open("rb") as f:
            chunks: list[bytes] = []
            total = 0
            while chunk := f.read(_READ_CHUNK):
                total += len(chunk)
                if total > limit:
                    raise LogError(f"{what} {path} is larger than the {limit} bytes the protocol carries")
                chunks.append(chunk)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise LogError(f"cannot read {what} {path}: {e.strerror or e}") from None
    return b"".join(chunks)


def read_eventlog(path: Path) -> bytes | None:
    """The TCG event log, or None when the machine has none (no TPM driver, or a VM without one)."""
    return _read_bounded(path, MAX_EVENTLOG, "event log")


def read_boot_id(path: Path) -> str | None:
    """The kernel's random id of this boot, or None when unavailable (then reboots are left to
    the verifier, which sees them in the quote's resetCount)."""
    data = _read_bounded(path, _BOOT_ID_MAX, "boot id")
    if data is None:
        return None
    text = data.decode("ascii", "replace").strip()
    return text or None


@dataclass(frozen=True)
class ImaSnapshot:
    """The IMA list as read once: `data` holds `len(bounds) - 1` complete entries, entry i in
    data[bounds[i]:bounds[i + 1]]. `whole` is set when the list could not be split, so it can
    only be sent from its start."""

    data: bytes
    bounds: tuple[int, ...]
    whole: bool = False

    @property
    def entries(self) -> int:
        return len(self.bounds) - 1

    def since(self, offset: int) -> tuple[int, bytes]:
        """(first entry sent, bytes) for a verifier asking for entries from `offset` on.

        From the start when the list cannot be split, or is shorter than the verifier
        thinks: then it belongs to a boot the verifier has not seen yet."""
        if self.whole or offset > self.entries:
            return 0, self.data[: self.bounds[-1]]
        return offset, self.data[self.bounds[offset] : self.bounds[-1]]


def _boundaries(fragment: bytes, start: int, first_index: int) -> list[int]:
    """Where each complete entry of `fragment` ends, as offsets from the start of the list.

    Parsing (not just framing) the fragment keeps one definition of the formats, the
    verifier's; a trailing entry cut off by a concurrent append is left for the next read."""
    log = ima.parse(fragment, first_index=first_index, allow_partial_tail=True)
    ends: list[int] = []
    pos = start
    if log.format == "ascii":
        for _ in log.entries:
            pos = fragment.index(b"\n", pos - start) + 1 + start
            ends.append(pos)
    else:
        for entry in log.entries:
            pos += ima.binary_record_size(entry)
            ends.append(pos)
    return ends


class ImaReader:
    """Reads the IMA list (ASCII or binary, told apart by content) and splits it into entries.

    The list is append-only during a boot, so the boundaries of a prefix already seen stay
    valid; a digest of that prefix detects a list that was replaced (a reboot, a test
    rewriting the file) and starts the split over."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._bounds: list[int] = [0]
        self._prefix_digest = hashlib.sha256().digest()

    def read(self) -> ImaSnapshot | None:
        """The current list, or None when the kernel runs without IMA (no file)."""
        data = _read_bounded(self.path, MAX_IMA, "IMA list")
        if data is None:
            self._reset()
            return None
        known = self._bounds[-1]
        if len(data) < known or hashlib.sha256(memoryview(data)[:known]).digest() != self._prefix_digest:
            self._reset()
            known = 0
        try:
            self._bounds += _boundaries(data[known:], known, len(self._bounds) - 1)
        except ParseError:
            # Unsplittable: the verifier judges it (and finds it malformed), so send it all.
            self._reset()
            return ImaSnapshot(data, (0, len(data)), whole=True)
        end = self._bounds[-1]
        self._prefix_digest = hashlib.sha256(memoryview(data)[:end]).digest()
        return ImaSnapshot(data, tuple(self._bounds))

    def _reset(self) -> None:
        self._bounds = [0]
        self._prefix_digest = hashlib.sha256().digest()
