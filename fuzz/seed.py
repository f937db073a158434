"""Seeds for fuzz/corpus/ from the real data the tests use (`python -m fuzz seed`).

Adds, never removes: each seed is stored under the SHA-1 of its bytes, as libFuzzer names its
inputs, so running this again changes nothing. Inputs larger than the fuzzers' MAX_LEN are
left out: libFuzzer would only cut them.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterator
from pathlib import Path

from fuzz import CORPUS, ROOT

DATA = ROOT.parent / "tests" / "data"


def _files(under: Path, max_len: int) -> Iterator[Path]:
    for path in sorted(under.rglob("*")):
        if (
            path.is_file()
            and path.suffix not in (".json", ".yaml", ".warn")
            and path.stat().st_size <= max_len
        ):
            yield path


def seeds(max_len: int) -> Iterator[tuple[str, bytes]]:
    """(harness, input) for every seed."""
    from attest.containerlog import ContainerRecord
    from attest.verify import eventlog, ima, policy
    from fuzz.tpmstructs import STRUCTURES
    from tests.recorded_gcp import gcp
    from tests.recorded_swtpm import SWTPM_AK, SWTPM_QUOTE, SWTPM_SIG

    for path in _files(DATA / "eventlogs", max_len):
        yield "eventlog", path.read_bytes()
    for path in _files(DATA / "ima", max_len - 1):
        yield "ima", b"\0" + path.read_bytes()  # first byte 0: no partial tail
    doc = gcp()
    structures = [
        ("attest", SWTPM_QUOTE),
        ("signature", SWTPM_SIG),
        ("public", SWTPM_AK),
        ("attest", base64.b64decode(doc["Quote"]["Quote"])),
        ("signature", base64.b64decode(doc["Quote"]["Signature"])),
        ("public", base64.b64decode(doc["AK"]["Public"])),
    ]
    for kind, raw in structures:
        yield "tpmstructs", bytes([STRUCTURES.index(kind)]) + raw
    for path in sorted((DATA / "k8s" / "admission").glob("*.json")):
        yield "admission", path.read_bytes()

    yield "policy", b"version: 1\nname: minimal\n"
    for block in re.findall(r"```yaml\n(.*?)```", (ROOT.parent / "docs" / "policy.md").read_text(), re.S):
        yield "policy", block.encode()
    logs = DATA / "eventlogs"
    for path in (logs / "tpm2-tools/event-sd-boot-fedora37.bin", logs / "go-attestation/sb_cert_eventlog"):
        log = eventlog.parse(path.read_bytes())
        replayed = eventlog.replay(log).pcrs
        bank = "sha256" if "sha256" in replayed else "sha1"
        yield "policy", policy.dump_policy(policy.create_policy("seed", log, {bank: replayed[bank]})).encode()
    log = eventlog.parse((logs / "tpm2-tools/event.bin").read_bytes())
    entries = ima.parse((DATA / "ima/tpm2-tss/sml-ima-ng-sha1.bin").read_bytes(), allow_partial_tail=True)
    made = policy.create_policy(
        "seed-ima", log, {"sha1": eventlog.replay(log).pcrs["sha1"]}, entries.entries, with_ima=True
    )
    yield "policy", policy.dump_policy(made).encode()

    web = ContainerRecord(
        "2024-05-01T12:00:00Z",
        "3f2a" * 16,
        "shop-7d9c4b6f5-x2x9q",
        "prod",
        "web",
        "ghcr.io/acme/shop:1.4",
        "sha256:" + "a" * 64,
        "cri-o",
    )
    sandbox = ContainerRecord(
        web.time, "9b" * 32, web.pod, web.namespace, "POD", "registry.k8s.io/pause:3.9", "", "containerd"
    )
    yield "containerlog", web.encode() + b"\n"
    yield "containerlog", web.encode() + b"\n" + sandbox.encode() + b"\n"


def seed(max_len: int) -> dict[str, int]:
    """Write the seeds; how many were new, per harness."""
    added: dict[str, int] = {}
    for harness, data in seeds(max_len):
        path = CORPUS / harness / hashlib.sha1(data).hexdigest()  # noqa: S324 - libFuzzer's naming
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            added[harness] = added.get(harness, 0) + 1
    return added
