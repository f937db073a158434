"""A simulated IMA measurement list (ima-ng template, SHA-256 file digests) extending PCR 10.

Rules followed, as Linux 5.8+ applies them on a TPM 2.0:

- boot_aggregate, always the first entry, is the SHA-256 of PCR 0 || PCR 1 || ... || PCR 9 read
  from the TPM's sha256 bank (ima_calc_boot_aggregate picks the bank matching ima_hash=sha256,
  and since 5.8 adds PCRs 8 and 9 to any non-SHA-1 aggregate). Its d-ng field says "sha256:".
- The ima-ng template data is encoded by the verifier's own encoder
  (`attest.verify.ima.encode_template_data`): one encoder for the lists written and parsed.
- Each entry extends PCR 10 in every bank by that bank's hash of the template data (since 5.8;
  older kernels extended the SHA-1 hash, padded, into the other banks). The ASCII list shows
  the SHA-1 template hash, as /sys/kernel/security/ima/ascii_runtime_measurements does;
  `text("sha256")` gives the ascii_runtime_measurements_sha256 variant.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from attest.tcg import HashAlg, extend, hash_alg, pcr_reset_value
from attest.verify.ima import encode_template_data, template_hash

IMA_PCR = 10
TEMPLATE_NAME = "ima-ng"
BOOT_AGGREGATE = "boot_aggregate"

# What a node runs: kubelet, a container runtime and their libraries (contents are stand-ins).
DEFAULT_FILES: tuple[tuple[str, bytes], ...] = (
    ("/usr/lib/systemd/systemd", b"simulated systemd 255"),
    ("/usr/bin/containerd", b"simulated containerd 1.7.24"),
    ("/usr/bin/runc", b"simulated runc 1.1.14"),
    ("/usr/bin/kubelet", b"simulated kubelet v1.31.2"),
    ("/usr/lib/x86_64-linux-gnu/libc.so.6", b"simulated glibc 2.39"),
)


def boot_aggregate(sha256_pcrs: Mapping[int, bytes]) -> bytes:
    """SHA-256 over PCRs 0-9 of the sha256 bank, in order."""
    return hashlib.sha256(b"".join(sha256_pcrs[i] for i in range(10))).digest()


@dataclass(frozen=True)
class ImaEntry:
    path: str
    file_digest: bytes  # SHA-256 of the file content (or the boot aggregate)
    template_data: bytes
    template_digests: Mapping[str, bytes]  # per PCR bank, what PCR 10 was extended with

    def line(self, bank: str = "sha1") -> str:
        digest = self.template_digests[bank].hex()
        return f"{IMA_PCR} {digest} {TEMPLATE_NAME} sha256:{self.file_digest.hex()} {self.path}"


def make_entry(path: str, file_digest: bytes, banks: Sequence[str]) -> ImaEntry:
    if not path or any(c.isspace() for c in path):
        # The ASCII list separates fields by spaces and does not escape them.
        raise ValueError(f"IMA path {path!r} must be non-empty without whitespace")
    data = encode_template_data(TEMPLATE_NAME, "sha256", file_digest, path)
    return ImaEntry(path, file_digest, data, {b: template_hash(b, data, TEMPLATE_NAME) for b in banks})


@dataclass(frozen=True)
class ImaLog:
    banks: tuple[str, ...]
    entries: tuple[ImaEntry, ...]

    def text(self, bank: str = "sha1") -> str:
        """The ASCII measurement list, template hashes of `bank` in the second column."""
        return "".join(e.line(bank) + "\n" for e in self.entries)

    @property
    def pcr10(self) -> dict[str, bytes]:
        """PCR 10 per bank after replaying every entry from its reset value."""
        out: dict[str, bytes] = {}
        for name in self.banks:
            alg: HashAlg = hash_alg(name)
            value = pcr_reset_value(IMA_PCR, alg.size)
            for e in self.entries:
                value = extend(alg, value, e.template_digests[name])
            out[name] = value
        return out

    def with_files(self, files: Sequence[tuple[str, bytes]]) -> ImaLog:
        """This list with `files` measured after it (contents hashed with SHA-256)."""
        new = tuple(make_entry(p, hashlib.sha256(c).digest(), self.banks) for p, c in files)
        return ImaLog(self.banks, self.entries + new)


def simulate_ima(
    tcti: str, files: Sequence[tuple[str, bytes]] = DEFAULT_FILES, banks: Sequence[str] = ("sha1", "sha256")
) -> ImaLog:
    """IMA's start on a booted TPM: boot_aggregate from PCRs 0-9, then `files`, all extended into PCR 10."""
    from swtpm.measuredboot import read_pcrs

    pcrs = read_pcrs(tcti, ["sha256"], range(10))["sha256"]
    log = ImaLog(tuple(banks), (make_entry(BOOT_AGGREGATE, boot_aggregate(pcrs), banks),))
    log = log.with_files(files)
    _extend(tcti, log.entries)
    return log


def measure_files(tcti: str, log: ImaLog, files: Sequence[tuple[str, bytes]]) -> ImaLog:
    """Files executed later: appended to `log` and extended into PCR 10."""
    longer = log.with_files(files)
    _extend(tcti, longer.entries[len(log.entries) :])
    return longer


def _extend(tcti: str, entries: Sequence[ImaEntry]) -> None:
    from attest.tpm import Tpm, pcr_extend

    with Tpm(tcti) as tpm:
        for e in entries:
            pcr_extend(tpm, IMA_PCR, e.template_digests)
