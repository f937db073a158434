"""The verifier's side of the container launch trail: replay against the quoted PCR 23, the
longer-than-quote rule, the image policy, and the whole appraisal over real swtpm quotes."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from tpm2_pytss import ESYS_TR

from attest.agent.measure import measure_container, parse_oci_state, read_container_log
from attest.containerlog import ContainerRecord, fold, parse_log
from attest.pcrselect import PcrSelection
from attest.reasons import Reason
from attest.tpm import Tpm, create_ak, quote
from attest.verify import appraise
from attest.verify.containers import appraise_containers, match_quote
from attest.verify.pcrs import PcrValues
from attest.verify.policy import Policy, evaluate_containers, load_policy
from attest.verify.quote import load_ak
from swtpm.instance import SwtpmInstance
from tests.test_container_hook import NGINX, PAUSE, SHOP, containerd_state, crio_state
from tests.test_containerlog import DIGEST_A, DIGEST_B, log_of, record

EVIL = "sha256:" + "66" * 32
POLICY = load_policy(
    f"""
version: 1
name: images
containers:
  images:
    - "ghcr.io/acme/*@{DIGEST_A}"
    - "{DIGEST_B}"
    - "registry.k8s.io/pause@{PAUSE}"
    - "docker.io/library/nginx@{NGINX}"
    - "ghcr.io/acme/shop@{SHOP}"
"""
)


def records(n: int) -> list[ContainerRecord]:
    return [record(container_id=f"{i:064x}", pod=f"pod-{i}") for i in range(n)]


def quoted_after(recs: list[ContainerRecord], *banks: str) -> dict[str, dict[int, bytes]]:
    """The PCR 23 a TPM holds after extending `recs`, per bank, as appraise sees quoted values."""
    lines = [r.encode() for r in recs]
    return {b: {23: fold(lines, b)[-1]} for b in banks or ("sha256",)}


def test_a_log_that_replays_is_accepted_in_every_bank() -> None:
    recs = records(3)
    result = appraise_containers(log_of(*recs), quoted_after(recs, "sha1", "sha256"), POLICY)
    assert (result.findings, result.pending) == ((), 0)
    assert [e.record for e in result.accepted] == recs


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(lambda rs: rs[:1] + rs[2:], id="removed"),
        pytest.param(lambda rs: [rs[1], rs[0], rs[2]], id="reordered"),
        pytest.param(
            lambda rs: [rs[0], record(container_id="e" * 64, image_digest=EVIL), rs[2]], id="edited"
        ),
        pytest.param(lambda rs: rs[:2], id="truncated"),
    ],
)
def test_an_altered_log_does_not_replay(
    tamper: Callable[[list[ContainerRecord]], list[ContainerRecord]],
) -> None:
    recs = records(3)
    altered = tamper(recs)
    result = appraise_containers(log_of(*altered), quoted_after(recs), POLICY)
    assert [f.code for f in result.findings] == [Reason.CONTAINERLOG_REPLAY_MISMATCH]
    assert (result.accepted, result.findings[0].pcr) == ((), 23)


def test_one_bank_disagreeing_is_a_mismatch() -> None:
    recs = records(2)
    quoted = {"sha1": quoted_after(recs[:1], "sha1")["sha1"], "sha256": quoted_after(recs)["sha256"]}
    result = appraise_containers(log_of(*recs), quoted, None)
    assert [f.code for f in result.findings] == [Reason.CONTAINERLOG_REPLAY_MISMATCH]


def test_a_log_longer_than_the_quote_is_accepted_up_to_it() -> None:
    recs = records(4)
    bad_later = [*recs, record(container_id="f" * 64, image_digest=EVIL)]
    result = appraise_containers(log_of(*bad_later), quoted_after(recs[:2]), POLICY)
    assert [e.index for e in result.accepted] == [0, 1]
    assert (result.pending, result.findings) == (3, ())  # pending records are not judged yet


def test_an_image_not_allowed_names_the_pod_and_entry() -> None:
    recs = [
        record(),
        record(
            container_id="e" * 64, pod="miner-1", namespace="batch", image="evil.io/x:1", image_digest=EVIL
        ),
    ]
    result = appraise_containers(log_of(*recs), quoted_after(recs), POLICY)
    (finding,) = result.findings
    assert (finding.code, finding.rule, finding.pcr, finding.event) == (
        Reason.POLICY_IMAGE_NOT_ALLOWED,
        "containers/images",
        23,
        1,
    )
    assert "batch/miner-1" in finding.message
    assert "'evil.io/x:1'" in finding.message
    assert len(result.accepted) == 2  # a refused record is still one the node ran


def test_the_same_digest_under_another_repository_is_judged_by_the_rule() -> None:
    pinned_to_repo = record(image="docker.io/evil/shop:1", image_digest=DIGEST_A)  # rule: ghcr.io/acme/*@A
    any_name = record(image="anything/at-all:2", image_digest=DIGEST_B)  # rule: B under any name
    findings = evaluate_containers(POLICY, parse_log(log_of(pinned_to_repo, any_name)))
    assert [f.event for f in findings] == [0]


def test_a_record_without_a_digest_is_refused_even_if_its_repository_is_allowed() -> None:
    policy = load_policy('version: 1\nname: p\ncontainers:\n  images: ["ghcr.io/acme/*"]\n')
    recs = [record(image="ghcr.io/acme/shop:1.4", image_digest=""), record(container_id="b" * 64)]
    findings = evaluate_containers(policy, parse_log(log_of(*recs)))
    assert [(f.code, f.event) for f in findings] == [(Reason.POLICY_IMAGE_NOT_ALLOWED, 0)]
    assert "no image digest" in findings[0].message


def test_without_an_image_policy_only_integrity_is_judged() -> None:
    recs = [record(image_digest=""), record(container_id="b" * 64, image_digest=EVIL)]
    assert appraise_containers(log_of(*recs), quoted_after(recs), Policy(name="boot-only")).findings == ()
    assert appraise_containers(log_of(*recs), quoted_after(recs), None).findings == ()


@pytest.mark.parametrize(
    "data",
    [
        b"{not json}\n",
        record().encode(),  # no newline: never completely written
        b"x" * 9000 + b"\n",
        record().encode().replace(b'"prod"', b"1") + b"\n",
    ],
)
def test_a_malformed_log_fails_cleanly(data: bytes) -> None:
    result = appraise_containers(data, quoted_after(records(1)), POLICY)
    assert [(f.code, f.pcr) for f in result.findings] == [(Reason.CONTAINERLOG_MALFORMED, 23)]
    assert "line 1" in result.findings[0].message


def test_no_log_is_fine_when_pcr_23_is_at_reset() -> None:
    assert appraise_containers(None, quoted_after([]), POLICY).findings == ()


def test_no_log_with_containers_started_is_missing_evidence() -> None:
    result = appraise_containers(None, quoted_after(records(1)), POLICY)
    assert [f.code for f in result.findings] == [Reason.CONTAINERLOG_MISSING]
    assert appraise_containers(None, quoted_after(records(1)), None).findings == ()


def test_an_image_policy_needs_pcr_23_in_the_quote() -> None:
    result = appraise_containers(log_of(*records(1)), {"sha256": {0: bytes(32)}}, POLICY)
    assert [(f.code, f.rule) for f in result.findings] == [
        (Reason.POLICY_PCR_UNVERIFIED, "containers/images")
    ]
    assert appraise_containers(log_of(*records(1)), {"sha256": {0: bytes(32)}}, None).findings == ()


def test_fewer_launches_than_an_earlier_round_means_pcr_23_was_reset() -> None:
    recs = records(3)
    # After a reset the old log still replays from zero, to an empty prefix: all of it pending.
    result = appraise_containers(log_of(*recs), quoted_after([]), POLICY, previous=2)
    assert [f.code for f in result.findings] == [Reason.CONTAINERLOG_REPLAY_MISMATCH]
    assert "was reset" in result.findings[0].message
    assert appraise_containers(log_of(*recs), quoted_after(recs[:2]), POLICY, previous=2).findings == ()


def test_match_quote_refuses_a_value_of_the_wrong_size() -> None:
    with pytest.raises(ValueError, match="not 32 bytes"):
        match_quote(parse_log(log_of(record())), {"sha256": bytes(20)})


# --- through appraise(), with quotes from a real TPM ---------------------------------------

NONCE = bytes.fromhex("c0ffee0123456789abcdef")
SEL = PcrSelection.parse("sha256:23")


def launch(swtpm: SwtpmInstance, log: Path, *states: dict[str, object]) -> None:
    for state in states:
        measure_container(parse_oci_state(json.dumps(state).encode()), log, swtpm.tcti)


def appraise_node(
    swtpm: SwtpmInstance,
    log: Path,
    policy: Policy | None = POLICY,
    *,
    selection: PcrSelection = SEL,
    containers_accepted: int | None = None,
) -> appraise.Verdict:
    with Tpm(swtpm.tcti) as tpm:
        ak = create_ak(tpm, "ecc")
        q = quote(tpm, ak, NONCE, selection)
    evidence = appraise.Evidence(
        attest=q.attest,
        signature=q.signature,
        pcrs=PcrValues(q.pcrs),
        container_log=read_container_log(log),  # read after quoting, as the agent does
    )
    expect = appraise.Expectations(
        ak=load_ak(ak.public),
        nonce=NONCE,
        selection=selection,
        policy=policy,
        allow_sha1=True,
        containers_accepted=containers_accepted,
    )
    return appraise.appraise(evidence, expect)


def test_allowed_containers_are_trusted_and_listed(swtpm: SwtpmInstance, tmp_path: Path) -> None:
    log = tmp_path / "containers.log"
    launch(
        swtpm,
        log,
        crio_state(
            cid="01" * 32,
            sandbox=True,
            image="registry.k8s.io/pause:3.9",
            **{"io.kubernetes.cri-o.ImageRepoDigests": f"registry.k8s.io/pause@{PAUSE}"},
        ),
        crio_state(cid="02" * 32, **{"io.kubernetes.cri-o.ImageRepoDigests": f"ghcr.io/acme/shop@{SHOP}"}),
        containerd_state(),
    )
    verdict = appraise_node(swtpm, log, selection=PcrSelection.parse("sha1:23+sha256:23"))
    assert (verdict.trusted, verdict.findings, verdict.containers_pending) == (True, (), 0)
    doc = verdict.to_json()
    assert [(c["index"], c["namespace"], c["pod"], c["container"]) for c in doc["containers"]] == [
        (0, "prod", "shop-7d9c4b6f5-x2x9q", "POD"),
        (1, "prod", "shop-7d9c4b6f5-x2x9q", "web"),
        (2, "default", "web-5c8d7", "nginx"),
    ]
    assert doc["containers"][2]["image_digest"] == NGINX


def test_a_container_outside_the_policy_makes_the_node_untrusted(
    swtpm: SwtpmInstance, tmp_path: Path
) -> None:
    log = tmp_path / "containers.log"
    launch(
        swtpm,
        log,
        containerd_state(cid="01" * 32),
        containerd_state(cid="02" * 32, pod="miner-6f", namespace="batch", image=f"evil.io/xmrig@{EVIL}"),
        containerd_state(cid="03" * 32, pod="web-tag", image="docker.io/library/nginx:1.25"),
    )
    verdict = appraise_node(swtpm, log)
    assert not verdict.trusted
    assert [(f.code, f.event) for f in verdict.findings] == [
        (Reason.POLICY_IMAGE_NOT_ALLOWED, 1),
        (Reason.POLICY_IMAGE_NOT_ALLOWED, 2),
    ]
    assert "batch/miner-6f" in verdict.findings[0].message
    assert "no image digest" in verdict.findings[1].message
    assert len(verdict.containers) == 3


def test_launches_after_the_quote_wait_for_the_next_one(swtpm: SwtpmInstance, tmp_path: Path) -> None:
    log = tmp_path / "containers.log"
    launch(swtpm, log, containerd_state(cid="01" * 32))
    with Tpm(swtpm.tcti) as tpm:
        ak = create_ak(tpm, "ecc")
        q = quote(tpm, ak, NONCE, SEL)
    launch(swtpm, log, containerd_state(cid="02" * 32, image=f"evil.io/xmrig@{EVIL}"))
    verdict = appraise.appraise(
        appraise.Evidence(q.attest, q.signature, PcrValues(q.pcrs), container_log=read_container_log(log)),
        appraise.Expectations(ak=load_ak(ak.public), nonce=NONCE, selection=SEL, policy=POLICY),
    )
    assert (verdict.trusted, len(verdict.containers), verdict.containers_pending) == (True, 1, 1)
    # The next quote covers it, and judges it.
    assert [f.event for f in appraise_node(swtpm, log).findings] == [1]


def test_an_edited_log_is_refused_through_appraise(swtpm: SwtpmInstance, tmp_path: Path) -> None:
    log = tmp_path / "containers.log"
    launch(swtpm, log, containerd_state(cid="01" * 32, image=f"evil.io/xmrig@{EVIL}"))
    lines = log.read_bytes()
    log.write_bytes(
        lines.replace(EVIL.encode(), NGINX.encode()).replace(b"evil.io/xmrig", b"docker.io/library/nginx")
    )
    verdict = appraise_node(swtpm, log)
    assert [f.code for f in verdict.findings] == [Reason.CONTAINERLOG_REPLAY_MISMATCH]
    assert verdict.containers == ()


def test_a_pcr_23_reset_to_hide_launches_is_caught(swtpm: SwtpmInstance, tmp_path: Path) -> None:
    log = tmp_path / "containers.log"
    launch(swtpm, log, containerd_state(cid="01" * 32), containerd_state(cid="02" * 32))
    first = appraise_node(swtpm, log)
    assert (first.trusted, len(first.containers)) == (True, 2)
    with Tpm(swtpm.tcti) as tpm:
        tpm.esapi.pcr_reset(ESYS_TR.PCR23)  # allowed from locality 0: PC Client profile
    later = appraise_node(swtpm, log, containers_accepted=len(first.containers))
    assert not later.trusted
    assert [f.code for f in later.findings] == [Reason.CONTAINERLOG_REPLAY_MISMATCH]
    assert later.containers_pending == 2
    # Without the earlier round to compare with, a reset before the quote leaves nothing judged.
    assert appraise_node(swtpm, log).trusted


def test_no_container_started_and_no_log(swtpm: SwtpmInstance, tmp_path: Path) -> None:
    verdict = appraise_node(swtpm, tmp_path / "never-written.log")
    assert (verdict.trusted, verdict.to_json()["containers"]) == (True, [])
