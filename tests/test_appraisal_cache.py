"""The firmware-log cache in appraise(): a hit returns exactly what a miss computes, and only
the same log, with the same quoted boot PCRs, under the same policy, hits."""

from __future__ import annotations

import dataclasses
import hashlib
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from attest.pcrselect import PcrSelection
from attest.verify import eventlog, workarounds
from attest.verify.appraise import AppraisalCache, Evidence, Expectations, Verdict, appraise, default_cache
from attest.verify.pcrs import PcrValues
from attest.verify.policy import Policy, create_policy
from attest.verify.quote import load_ak
from attest.verify.tpmstructs import ClockInfo
from swtpm.measuredboot import BootProfile, simulate_boot
from swtpm.softtpm import SoftAk, quote_attest

DATA = Path(__file__).parent / "data" / "eventlogs"
LOGS = [
    "tpm2-tools/event-bootorder.bin",
    "tpm2-tools/event-sd-boot-fedora37.bin",
    "keylime/binary_bios_measurements-secureboot",
    "go-attestation/sb_cert_eventlog",
    "go-attestation/ebs_event_missing_eventlog",  # reproduces the quote only with a workaround
]
AK = SoftAk()


def _quoted(raw: bytes) -> dict[str, dict[int, bytes]]:
    """The PCRs 0-9 the machine would quote (sha256, or sha1 for a SHA-1 log): the replay
    that reproduces them."""
    log = eventlog.parse(raw)
    bank = "sha256" if any(b.name == "sha256" for b in log.banks) else "sha1"
    fixes = [workarounds.EXIT_BOOT_SERVICES_UNLOGGED] if raw == (DATA / LOGS[-1]).read_bytes() else []
    values = eventlog.replay(log, fixes, banks=[bank]).pcrs[bank]
    return {bank: {p: values[p] for p in range(10)}}


def _round(
    raw: bytes, pcrs: dict[str, dict[int, bytes]], policy: Policy | None, i: int = 0
) -> tuple[Evidence, Expectations]:
    nonce = hashlib.sha256(i.to_bytes(8, "big")).digest()
    (bank,) = pcrs
    selection = PcrSelection.parse(f"{bank}:0-9")
    values = PcrValues(pcrs)
    attest = quote_attest(nonce, selection, values, ClockInfo(1000 + i, 1, 0, True)).marshal()
    evidence = Evidence(attest, AK.sign(attest).marshal(), values, raw)
    ak = load_ak(AK.public.marshal_tpm2b())
    return evidence, Expectations(ak=ak, nonce=nonce, selection=selection, policy=policy, allow_sha1=True)


def _policy(raw: bytes) -> Policy:
    log = eventlog.parse(raw)
    return create_policy("cached", log, eventlog.replay(log).pcrs)


def _uncached(evidence: Evidence, expect: Expectations) -> Verdict:
    return appraise(evidence, expect, cache=AppraisalCache(0))


@pytest.mark.parametrize("name", LOGS)
def test_a_hit_gives_the_verdict_a_miss_gives(name: str) -> None:
    raw = (DATA / name).read_bytes()
    pcrs = _quoted(raw)
    cache = AppraisalCache()
    for policy in (None, _policy(raw)):
        for i in range(3):
            evidence, expect = _round(raw, pcrs, policy, i)
            verdict = appraise(evidence, expect, cache=cache)
            assert verdict == _uncached(evidence, expect)
            assert verdict.trusted or policy is not None
    assert (cache.misses, cache.hits, len(cache)) == (2, 4, 2)
    if name == LOGS[-1]:
        assert _uncached(*_round(raw, pcrs, None)).workarounds == ("exit-boot-services-unlogged",)


def test_policy_findings_are_replayed_from_the_cache() -> None:
    good = simulate_boot(BootProfile())
    policy = _policy(good.log)
    bad = simulate_boot(BootProfile(secure_boot=False))
    pcrs = _quoted(bad.log)
    cache = AppraisalCache()
    first = appraise(*_round(bad.log, pcrs, policy, 1), cache=cache)
    second = appraise(*_round(bad.log, pcrs, policy, 2), cache=cache)
    assert cache.hits == 1
    assert not first.trusted
    assert first.findings == second.findings == _uncached(*_round(bad.log, pcrs, policy, 2)).findings


def test_altered_boot_quoted_pcrs_or_policy_do_not_hit() -> None:
    raw = (DATA / LOGS[0]).read_bytes()
    pcrs = _quoted(raw)
    policy = _policy(raw)
    cache = AppraisalCache()
    assert appraise(*_round(raw, pcrs, policy), cache=cache).trusted
    # The same log, but the quote says PCR 4 holds something else: a mismatch, not the cached pass.
    altered = {"sha256": {**pcrs["sha256"], 4: bytes(32)}}
    verdict = appraise(*_round(raw, altered, policy, 1), cache=cache)
    assert not verdict.trusted
    assert verdict == _uncached(*_round(raw, altered, policy, 1))
    # An equal policy that is another object, no policy, another log: all misses.
    appraise(*_round(raw, pcrs, dataclasses.replace(policy), 2), cache=cache)
    appraise(*_round(raw, pcrs, None, 3), cache=cache)
    good = simulate_boot(BootProfile())
    other = appraise(*_round(good.log, pcrs, policy, 4), cache=cache)
    assert other == _uncached(*_round(good.log, pcrs, policy, 4))
    assert (cache.hits, cache.misses) == (0, 5)
    # An altered log under the same quote does not hit either.
    appraise(*_round(raw[:-1] + b"\x01", pcrs, policy, 5), cache=cache)
    assert cache.hits == 0


def test_bounded_and_least_recently_used_goes() -> None:
    cache = AppraisalCache(2)
    logs = [(DATA / n).read_bytes() for n in LOGS[:3]]
    for i, raw in enumerate(logs):
        appraise(*_round(raw, _quoted(raw), None, i), cache=cache)
    assert len(cache) == 2
    appraise(*_round(logs[0], _quoted(logs[0]), None, 9), cache=cache)
    assert cache.hits == 0
    appraise(*_round(logs[2], _quoted(logs[2]), None, 9), cache=cache)
    assert cache.hits == 1
    with pytest.raises(ValueError, match="negative"):
        AppraisalCache(-1)


def test_threads_share_one_cache() -> None:
    cache = AppraisalCache(2)  # smaller than the logs in play: entries come and go under load
    cases = []
    for n, name in enumerate(LOGS):
        raw = (DATA / name).read_bytes()
        for i in range(6):
            cases.append(_round(raw, _quoted(raw), None, 10 * n + i))
    expected = [_uncached(*c) for c in cases]
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda c: appraise(*c, cache=cache), cases * 3))
    assert got == expected * 3
    assert len(cache) <= 2


def test_the_default_cache_is_built_on_first_use() -> None:
    code = "import attest.verify.appraise as a; assert a._default_cache is None"
    subprocess.run([sys.executable, "-c", code], check=True)
    assert default_cache() is default_cache()
