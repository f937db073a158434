"""The container launch hook: record a starting container in the container log and PCR 23.

The runtime runs `attest-agent measure-container` as an OCI `createRuntime` hook with the
container's state on stdin (docs/containers.md has the hook files). The state's annotations say
which pod, container and image it is; CRI-O and containerd spell them differently.

Order under an exclusive flock on the log, so that concurrent hooks serialise and the log's
order is the order of the extends:

1. reconcile the log with the TPM's PCR 23 (below);
2. append the record's line and fsync it;
3. extend PCR 23 in every active bank with that bank's hash of the line.

Appending before extending makes every crash window repairable. A crash after 2 and before 3
leaves one trailing record that PCR 23 does not hold: the next hook (or the agent at start)
sees that the log without its last line reproduces PCR 23 and extends that line, which is the
truth of what was about to run. The other order would leave an extend that no line explains,
and the log could never replay again in this boot. An unfinished last line (a crash inside
2) was never extended and is cut off.

The lock is taken before the TPM is opened: a TPM without a resource manager (swtpm, /dev/tpm0)
serves one connection at a time, and a hook holding it while waiting for the lock would
deadlock the one holding the lock.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from attest.containerlog import (
    CONTAINER_PCR,
    DIGEST,
    SANDBOX_CONTAINER,
    ContainerLogMalformed,
    ContainerRecord,
    matching_prefix,
)
from attest.errors import TpmError
from attest.fileio import write_private
from attest.pcrselect import PcrSelection
from attest.tcg import hash_alg, hash_alg_available
from attest.wire import MAX_CONTAINER_LOG

if TYPE_CHECKING:
    from attest.tpm import Tpm

# /run is emptied at boot, when PCR 23 is reset: the log and the register live exactly as long.
DEFAULT_CONTAINER_LOG = Path("/run/attest-agent/containers.log")
MAX_STATE = 4 * 1024 * 1024  # the state and config.json carry every annotation, CNI results included
HOOK_LOCK_TIMEOUT = 60.0
READ_LOCK_TIMEOUT = 10.0
_POLL = 0.01

# CRI-O (pkg/annotations): set by CRI-O itself after it copies the pod's annotations, so a pod
# cannot choose their values.
CRIO_CONTAINER_TYPE = "io.kubernetes.cri-o.ContainerType"
CRIO_LABELS = "io.kubernetes.cri-o.Labels"  # JSON: kubelet's labels for the container
CRIO_IMAGE_NAME = "io.kubernetes.cri-o.ImageName"  # a fully qualified name of the image, may be ""
CRIO_IMAGE = "io.kubernetes.cri-o.Image"  # the image as the pod spec asked for it
CRIO_IMAGE_REF = "io.kubernetes.cri-o.ImageRef"  # REPO@DIGEST before 1.30ish, the image ID since
CRIO_REPO_DIGESTS = "io.kubernetes.cri-o.ImageRepoDigests"  # comma-separated REPO@DIGEST
# kubelet's container labels; CRI-O also copies them into annotations, last, over any other value.
POD_NAME = "io.kubernetes.pod.name"
POD_NAMESPACE = "io.kubernetes.pod.namespace"
CONTAINER_NAME = "io.kubernetes.container.name"
# containerd's CRI plugin (internal/cri/annotations). It carries no image digest: the digest is
# known only when the pod asked for the image by digest.
CRI_CONTAINER_TYPE = "io.kubernetes.cri.container-type"
CRI_SANDBOX_NAME = "io.kubernetes.cri.sandbox-name"
CRI_SANDBOX_NAMESPACE = "io.kubernetes.cri.sandbox-namespace"
CRI_CONTAINER_NAME = "io.kubernetes.cri.container-name"
CRI_IMAGE_NAME = "io.kubernetes.cri.image-name"
CRI_SANDBOX_IMAGE_NAME = "io.kubernetes.cri.podsandbox.image-name"
SANDBOX_TYPE = "sandbox"


class OciStateError(Exception):
    """The runtime's state (or the bundle's config.json) cannot be turned into a record."""


class ContainerLogError(Exception):
    """The container log cannot be locked, read or written."""


# --- the OCI state -------------------------------------------------------------------------


def parse_oci_state(data: bytes, *, now: dt.datetime | None = None) -> ContainerRecord:
    """The record for a container, from the OCI runtime state a hook receives on stdin. The
    bundle's config.json is read only when the state's annotations do not name a runtime (some
    runtimes leave annotations out of the state)."""
    state = _json_object(data, "the OCI state")
    container_id = state.get("id")
    if not isinstance(container_id, str) or not container_id:
        raise OciStateError("the OCI state has no container id")
    annotations = _annotations(state.get("annotations"), "the state's annotations")
    if _runtime(annotations) == "oci":
        bundle = state.get("bundle")
        if not isinstance(bundle, str) or not bundle:
            raise OciStateError("the OCI state has no bundle, and its annotations do not name the container")
        config = _json_object(_read_bounded(Path(bundle) / "config.json"), f"{bundle}/config.json")
        annotations = {**_annotations(config.get("annotations"), "config.json annotations"), **annotations}
    when = ContainerRecord.timestamp(now or dt.datetime.now(dt.UTC))
    try:
        return _record(container_id, annotations, when)
    except ContainerLogMalformed as e:
        raise OciStateError(f"container {container_id[:80]!r}: {e.message}") from None


def _json_object(data: bytes, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as e:
        raise OciStateError(f"{what} is not JSON: {str(e)[:120]}") from None
    if not isinstance(doc, dict):
        raise OciStateError(f"{what} is not a JSON object")
    return doc


def _annotations(value: Any, what: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise OciStateError(f"{what} are not a map of strings")
    return value


def _read_bounded(path: Path) -> bytes:
    try:
        with path.open("rb") as f:
            data = f.read(MAX_STATE + 1)
    except OSError as e:
        raise OciStateError(f"cannot read {path}: {e.strerror or e}") from None
    if len(data) > MAX_STATE:
        raise OciStateError(f"{path} is larger than {MAX_STATE} bytes")
    return data


def _runtime(annotations: Mapping[str, str]) -> str:
    # CRI-O first: CRI-O copies a pod's own annotations into its containers, so on CRI-O a pod
    # could set containerd's keys, but never CRI-O's (it overwrites them). containerd passes a
    # pod's annotations on only when configured to (pod_annotations), which docs/containers.md
    # says must not include these prefixes.
    if CRIO_CONTAINER_TYPE in annotations:
        return "cri-o"
    if CRI_CONTAINER_TYPE in annotations:
        return "containerd"
    return "oci"


def _record(container_id: str, a: Mapping[str, str], when: str) -> ContainerRecord:
    runtime = _runtime(a)
    if runtime == "cri-o":
        labels = _crio_labels(a)
        image = a.get(CRIO_IMAGE_NAME) or a.get(CRIO_IMAGE, "")
        return ContainerRecord(
            time=when,
            container_id=container_id,
            pod=labels.get(POD_NAME) or a.get(POD_NAME, ""),
            namespace=labels.get(POD_NAMESPACE) or a.get(POD_NAMESPACE, ""),
            container=SANDBOX_CONTAINER
            if a[CRIO_CONTAINER_TYPE] == SANDBOX_TYPE
            else labels.get(CONTAINER_NAME) or a.get(CONTAINER_NAME, ""),
            image=image,
            image_digest=_crio_digest(a, image),
            runtime=runtime,
        )
    if runtime == "containerd":
        sandbox = a[CRI_CONTAINER_TYPE] == SANDBOX_TYPE
        image = a.get(CRI_SANDBOX_IMAGE_NAME if sandbox else CRI_IMAGE_NAME, "")
        return ContainerRecord(
            time=when,
            container_id=container_id,
            pod=a.get(CRI_SANDBOX_NAME, ""),
            namespace=a.get(CRI_SANDBOX_NAMESPACE, ""),
            container=SANDBOX_CONTAINER if sandbox else a.get(CRI_CONTAINER_NAME, ""),
            image=image,
            image_digest=reference_digest(image),
            runtime=runtime,
        )
    return ContainerRecord(
        time=when,
        container_id=container_id,
        pod="",
        namespace="",
        container="",
        image="",
        image_digest="",
        runtime=runtime,
    )


def _crio_labels(a: Mapping[str, str]) -> dict[str, str]:
    text = a.get(CRIO_LABELS)
    if not text:
        return {}
    try:
        labels = json.loads(text)
    except (ValueError, RecursionError):
        raise OciStateError(f"annotation {CRIO_LABELS} is not JSON") from None
    if not isinstance(labels, dict):
        raise OciStateError(f"annotation {CRIO_LABELS} is not a JSON object")
    return {k: v for k, v in labels.items() if isinstance(v, str)}


def repository(reference: str) -> str:
    """The repository a reference names: reg.example/team/app:1.0@sha256:... -> reg.example/team/app."""
    name = reference.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    return name.rsplit(":", 1)[0] if ":" in last else name


def reference_digest(reference: str) -> str:
    """The digest a reference pins ("REPO[:TAG]@sha256:HEX"), or ""."""
    _, at, digest = reference.rpartition("@")
    return digest if at and DIGEST.match(digest) else ""


def _crio_digest(a: Mapping[str, str], image: str) -> str:
    # A pod that asked for a digest got that content: the runtime resolved the image by it.
    # Otherwise the manifest digest under the image's own repository, else under any other
    # (the same manifest has the same digest everywhere). A bare image ID (CRI-O's ImageRef
    # today) digests the image's config, not a manifest, so no policy entry could mean it.
    asked = reference_digest(a.get(CRIO_IMAGE, ""))
    if asked:
        return asked
    pinned = [p.strip() for p in a.get(CRIO_REPO_DIGESTS, "").split(",")]
    pinned.append(a.get(CRIO_IMAGE_REF, ""))
    found = [(repository(p), reference_digest(p)) for p in pinned if reference_digest(p)]
    mine = repository(image)
    for repo, digest in found:
        if repo == mine:
            return digest
    return found[0][1] if found else ""


# --- the log and PCR 23 --------------------------------------------------------------------


@dataclass(frozen=True)
class Reconciliation:
    """What reconciling the log with PCR 23 found and did."""

    records: int  # complete records in the log afterwards
    extended: int = 0  # trailing records a crash left unextended, extended now
    cut: int = 0  # bytes of an unfinished last line removed
    restarted: bool = False  # PCR 23 was at reset under an older log: kept as .previous, log emptied
    diverged: bool = False  # no prefix reproduces PCR 23: beyond repair until the next boot

    def notes(self) -> list[str]:
        out = []
        if self.cut:
            out.append(f"removed an unfinished last line ({self.cut} bytes) from the container log")
        if self.extended:
            out.append("extended PCR 23 with the last container log record, which a crash had left out")
        if self.restarted:
            out.append(
                "PCR 23 is at its reset value but the container log is not: the log is from an earlier "
                "boot (or PCR 23 was reset) and was kept as .previous; a new log starts"
            )
        if self.diverged:
            out.append(
                "warning: the container log does not reproduce PCR 23 (edited, removed, or PCR 23 "
                "extended by someone else); the verifier will refuse it until the node reboots"
            )
        return out


@dataclass(frozen=True)
class Measurement:
    index: int  # the new record's index in the log
    banks: tuple[str, ...]  # the PCR banks extended
    reconciliation: Reconciliation


def measure_container(
    record: ContainerRecord,
    log_path: Path = DEFAULT_CONTAINER_LOG,
    tcti: str = "device:/dev/tpmrm0",
    *,
    lock_timeout: float = HOOK_LOCK_TIMEOUT,
) -> Measurement:
    """Reconcile, append `record`, extend PCR 23 (module docstring: why in that order)."""
    from attest.tpm import Tpm, pcr_extend

    line = record.encode()
    fd = _open_log(log_path)
    try:
        _lock(fd, fcntl.LOCK_EX, lock_timeout, log_path)
        with Tpm(tcti) as tpm:
            banks = active_banks(tpm)
            done = _reconcile(fd, log_path, tpm, banks)
            _append(fd, line + b"\n", log_path)
            pcr_extend(tpm, CONTAINER_PCR, {b: hash_alg(b).digest(line) for b in banks})
    finally:
        os.close(fd)  # releases the lock
    return Measurement(done.records, banks, done)


def reconcile_container_log(
    log_path: Path = DEFAULT_CONTAINER_LOG,
    tcti: str = "device:/dev/tpmrm0",
    *,
    lock_timeout: float = HOOK_LOCK_TIMEOUT,
) -> Reconciliation:
    """Repair what a crashed hook left behind; for the agent to run when it starts."""
    from attest.tpm import Tpm

    fd = _open_log(log_path)
    try:
        _lock(fd, fcntl.LOCK_EX, lock_timeout, log_path)
        with Tpm(tcti) as tpm:
            return _reconcile(fd, log_path, tpm, active_banks(tpm))
    finally:
        os.close(fd)


def read_container_log(
    path: Path = DEFAULT_CONTAINER_LOG, *, lock_timeout: float = READ_LOCK_TIMEOUT
) -> bytes | None:
    """The log as evidence: complete lines only, read under a shared lock so that no hook is
    halfway through appending. None when no container has been measured in this boot."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise ContainerLogError(f"cannot open the container log {path}: {e.strerror or e}") from None
    try:
        _lock(fd, fcntl.LOCK_SH, lock_timeout, path)
        size = os.fstat(fd).st_size
        if size > MAX_CONTAINER_LOG:
            raise ContainerLogError(
                f"the container log {path} is larger than the {MAX_CONTAINER_LOG} bytes the protocol carries"
            )
        data = _read_all(fd, size)
    finally:
        os.close(fd)
    return data[: data.rfind(b"\n") + 1]


def active_banks(tpm: Tpm) -> tuple[str, ...]:
    """The PCR banks with PCR 23 allocated, whose hash this host can compute. A bank left out
    keeps PCR 23 at reset, which no log with records reproduces: a verifier quoting it refuses."""
    from tpm2_pytss import TPM2_CAP

    from attest.tpm.session import tpm_errors

    with tpm_errors("reading the PCR allocation"):
        _, caps = tpm.esapi.get_capability(TPM2_CAP.PCRS, 0, 1)
    banks = []
    for sel in caps.data.assignedPCR:
        bitmap = bytes(sel.pcrSelect)[: sel.sizeofSelect]
        if len(bitmap) <= CONTAINER_PCR // 8 or not bitmap[CONTAINER_PCR // 8] & (1 << CONTAINER_PCR % 8):
            continue
        try:
            h = hash_alg(int(sel.hash))
        except KeyError:
            continue
        if hash_alg_available(h):
            banks.append(h.name)
    if not banks:
        raise TpmError(f"no active PCR bank has PCR {CONTAINER_PCR}")
    return tuple(banks)


def _reconcile(fd: int, path: Path, tpm: Tpm, banks: tuple[str, ...]) -> Reconciliation:
    from attest.tpm import pcr_extend, pcr_read

    data = _read_all(fd, os.fstat(fd).st_size)
    keep = data.rfind(b"\n") + 1
    cut = len(data) - keep
    if cut:
        _truncate(fd, keep, path)
        data = data[:keep]
    lines = data[:-1].split(b"\n") if data else []
    quoted = pcr_read(tpm, PcrSelection.of({b: [CONTAINER_PCR] for b in banks}))
    k = matching_prefix(lines, {b: quoted[b][CONTAINER_PCR] for b in banks})
    n = len(lines)
    if k == n:
        return Reconciliation(n, cut=cut)
    if k == n - 1:
        pcr_extend(tpm, CONTAINER_PCR, {b: hash_alg(b).digest(lines[-1]) for b in banks})
        return Reconciliation(n, extended=1, cut=cut)
    if k == 0:
        # More than one record and none extended: not a crash (that leaves one), so the log
        # predates PCR 23's last reset. Its records can never replay; keep them for the operator.
        previous = path.with_name(path.name + ".previous")
        try:
            write_private(previous, data)
        except OSError as e:
            raise ContainerLogError(
                f"cannot keep the old container log as {previous}: {e.strerror or e}"
            ) from None
        _truncate(fd, 0, path)
        return Reconciliation(0, cut=cut, restarted=True)
    # Appending still records the container: the verifier sees the divergence either way, and
    # refusing to start containers would not repair a trail that is already broken.
    return Reconciliation(n, cut=cut, diverged=True)


def _open_log(path: Path) -> int:
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise ContainerLogError(f"cannot open the container log {path}: {e.strerror or e}") from None


def _lock(fd: int, operation: int, timeout: float, path: Path) -> None:
    # Polling rather than a blocking flock: a hook stuck on a hung TPM must not stall every
    # container start (and the agent's reads) forever.
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, operation | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise ContainerLogError(f"the container log {path} stayed locked for {timeout:g} s") from None
            time.sleep(_POLL)


def _read_all(fd: int, size: int) -> bytes:
    chunks = []
    offset = 0
    while offset < size:
        chunk = os.pread(fd, size - offset, offset)
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def _append(fd: int, data: bytes, path: Path) -> None:
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except OSError as e:
        raise ContainerLogError(f"cannot append to the container log {path}: {e.strerror or e}") from None


def _truncate(fd: int, size: int, path: Path) -> None:
    try:
        os.ftruncate(fd, size)
        os.fsync(fd)
    except OSError as e:
        raise ContainerLogError(f"cannot truncate the container log {path}: {e.strerror or e}") from None
