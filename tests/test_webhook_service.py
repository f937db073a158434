"""The verifier service's decisions (webhook.service, webhook.admin) without HTTP: enrollment
and EK acceptance, challenges, evidence and the carried state, on an in-memory store and
software TPMs."""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
from collections.abc import Callable
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from attest.errors import AttestError
from attest.store.api import NonceRejected, StoreError
from attest.verify.quote import AK_REQUIRED
from attest.verify.tpmstructs import ObjectAttr
from attest.wire import ActivateRequest, EkEnrollRequest, PolicyIn, VerdictOut
from swtpm.measuredboot import BootProfile
from tests.webhook_api import Secrets
from tests.webhook_support import NOW, FakeStore, SoftAk, SoftNode, TestCa, policy_text, software_ima
from webhook.admin import Admin, node_state
from webhook.config import Settings
from webhook.errors import BadRequest, Conflicting, EvidenceRejected, Forbidden, Missing, ServiceError
from webhook.metrics import Metrics
from webhook.service import Verifier, key_fingerprint


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)


@dataclasses.dataclass
class World:
    store: FakeStore
    clock: Clock
    secrets: Secrets
    ca: TestCa
    verifier: Verifier
    admin: Admin
    metrics: Metrics

    def enroll(self, node: SoftNode) -> None:
        self.verifier.enroll(node.enroll_request())
        enrollment_id = next(reversed(self.store.enrollments))
        self.verifier.activate(enrollment_id, ActivateRequest(secret=self.secrets.last))

    def attest(self, node: SoftNode, **kwargs: Any) -> VerdictOut:
        challenge = self.verifier.challenge(node.name)
        offset = kwargs.pop("ima_offset", challenge.ima_offset)
        return self.verifier.submit_evidence(
            node.name, node.evidence(challenge.nonce, challenge.selection, ima_offset=offset, **kwargs)
        )

    def sample(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(name, labels) or 0.0


@pytest.fixture(scope="module")
def ca() -> TestCa:
    return TestCa.create()


@pytest.fixture
def make_world(ca: TestCa) -> Callable[..., World]:
    def make(**overrides: Any) -> World:
        store, clock, random = FakeStore(), Clock(), Secrets()
        store.clock = clock
        settings = Settings(ek_roots=(ca.root.cert,), ek_intermediates=(ca.intermediate.cert,), **overrides)
        admin = Admin(store, clock)
        metrics = Metrics(admin.node_state_counts)
        verifier = Verifier(settings, store, metrics, clock=clock, random_bytes=random)
        return World(store, clock, random, ca, verifier, admin, metrics)

    return make


@pytest.fixture
def world(make_world: Callable[..., World]) -> World:
    return make_world()


@pytest.fixture
def good(world: World) -> SoftNode:
    """An enrolled node that booted the known-good chain, with the policy made from it."""
    node = SoftNode("node-a.example", world.ca)
    world.store.put_policy("default", policy_text(node.boot))
    world.enroll(node)
    return node


def code_of(e: pytest.ExceptionInfo[Exception]) -> str:
    value = e.value
    assert isinstance(value, (ServiceError, AttestError, StoreError)), value
    return str(value.code)


# --- enrollment ----------------------------------------------------------------------------


def test_enrollment_binds_the_ak_after_activation(world: World) -> None:
    node = SoftNode("node-a", world.ca)
    challenge = world.verifier.enroll(node.enroll_request())
    assert challenge.expires_at == NOW + Settings().enrollment_ttl
    assert world.store.get_node("node-a") is None  # not before the TPM proved it holds both keys
    result = world.verifier.activate(challenge.enrollment_id, ActivateRequest(secret=world.secrets.last))
    bound = world.store.get_node("node-a")
    assert bound is not None
    assert result.ak_name == bound.ak_name.hex() == node.ak.public.name().hex()
    assert bound.ek_fingerprint == key_fingerprint(node.ek_key.public_key())
    stored, _ = world.store.enrollments[challenge.enrollment_id]
    assert world.secrets.last not in (stored.secret_hash, stored.ak_public)  # only its hash is kept
    assert world.sample("attest_enrollments_total", result="activated") == 1


def test_wrong_secret_is_refused(world: World) -> None:
    challenge = world.verifier.enroll(SoftNode("node-a", world.ca).enroll_request())
    with pytest.raises(StoreError) as e:
        world.verifier.activate(challenge.enrollment_id, ActivateRequest(secret=bytes(32)))
    assert code_of(e) == "credential_invalid"
    assert world.store.get_node("node-a") is None


def test_ek_without_certificate_or_operator_is_refused(world: World) -> None:
    with pytest.raises(Forbidden) as e:
        world.verifier.enroll(SoftNode("node-a").enroll_request())
    assert code_of(e) == "ek_not_enrolled"
    assert world.sample("attest_enrollments_total", result="refused") == 1


def test_ek_certificate_from_an_untrusted_ca_is_refused(world: World) -> None:
    with pytest.raises(AttestError) as e:
        world.verifier.enroll(SoftNode("node-a", TestCa.create("Rogue")).enroll_request())
    assert code_of(e) == "ek_cert_untrusted"


def test_ek_public_area_must_be_the_certified_key(world: World) -> None:
    node, other = SoftNode("node-a", world.ca), SoftNode("node-b", world.ca)
    request = node.enroll_request().model_copy(update={"ek_public": other.ek.marshal_tpm2b()})
    with pytest.raises(AttestError) as e:
        world.verifier.enroll(request)
    assert code_of(e) == "ek_key_mismatch"


def test_operator_enrolled_ek_is_accepted_for_its_node_only(world: World) -> None:
    node = SoftNode("node-a")
    pem = node.ek_key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode()
    ek = world.admin.enroll_ek(EkEnrollRequest(node="node-a", ek_public_pem=pem))
    assert ek.fingerprint == key_fingerprint(node.ek_key.public_key())
    assert ek.source == "operator"
    world.enroll(node)
    assert world.store.get_node("node-a") is not None
    with pytest.raises(Forbidden) as e:
        world.verifier.enroll(node.enroll_request().model_copy(update={"node": "node-b"}))
    assert code_of(e) == "ek_not_enrolled"  # the operator vouched for it as node-a only


def test_one_tpm_cannot_become_two_nodes(world: World) -> None:
    node = SoftNode("node-a", world.ca)
    world.enroll(node)
    with pytest.raises(StoreError) as e:
        world.enroll(_renamed(node, "node-b"))
    assert code_of(e) == "ek_node_conflict"
    assert world.store.get_node("node-b") is None


def _renamed(node: SoftNode, name: str) -> SoftNode:
    twin = copy.copy(node)
    twin.name = name
    return twin


def test_operator_ek_for_another_node_does_not_vouch(world: World) -> None:
    node = SoftNode("node-a")
    pem = node.ek_key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode()
    world.admin.enroll_ek(EkEnrollRequest(node="node-b", ek_public_pem=pem))
    with pytest.raises(Forbidden) as e:
        world.verifier.enroll(node.enroll_request())
    assert code_of(e) == "ek_not_enrolled"


def test_revoked_operator_ek_no_longer_vouches_even_with_a_good_chain(world: World) -> None:
    node = SoftNode("node-a", world.ca)
    cert = node.ek_cert
    assert cert is not None
    ek = world.admin.enroll_ek(EkEnrollRequest(node="node-a", ek_certificate=cert.public_bytes(Encoding.DER)))
    world.admin.revoke_ek(ek.id)
    with pytest.raises(Forbidden) as e:
        world.verifier.enroll(node.enroll_request())
    assert code_of(e) == "ek_not_enrolled"


def test_a_new_tpm_never_takes_over_an_enrolled_node(world: World, good: SoftNode) -> None:
    with pytest.raises(Conflicting) as e:
        world.verifier.enroll(SoftNode(good.name, world.ca).enroll_request())
    assert code_of(e) == "ek_node_conflict"


def test_same_tpm_may_enroll_a_new_ak(world: World, good: SoftNode) -> None:
    good.ak = SoftAk()
    world.enroll(good)
    bound = world.store.get_node(good.name)
    assert bound is not None
    assert bound.ak_name == good.ak.public.name()


def test_ak_that_is_not_a_restricted_signing_key_is_refused(world: World) -> None:
    node = SoftNode("node-a", world.ca)
    node.ak.public = dataclasses.replace(node.ak.public, attributes=int(AK_REQUIRED & ~ObjectAttr.RESTRICTED))
    with pytest.raises(AttestError) as e:
        world.verifier.enroll(node.enroll_request())
    assert code_of(e) == "ak_attributes_invalid"


def test_revoked_node_cannot_attest_until_it_enrolls_again(world: World, good: SoftNode) -> None:
    world.admin.revoke_node(good.name)
    assert world.admin.node(good.name).state == "revoked"
    with pytest.raises(Forbidden) as e:
        world.verifier.challenge(good.name)
    assert code_of(e) == "node_revoked"
    # Revoking releases the name: the operator's way to let a replacement TPM take it.
    replacement = SoftNode(good.name, world.ca)
    world.enroll(replacement)
    assert world.admin.node(good.name).state == "enrolled"
    assert world.attest(replacement).trusted


# --- challenges --------------------------------------------------------------------------


def test_challenge_for_an_unknown_node(world: World) -> None:
    with pytest.raises(Missing) as e:
        world.verifier.challenge("nobody")
    assert code_of(e) == "ak_not_bound"


def test_challenge_is_fresh_and_short_lived(world: World, good: SoftNode) -> None:
    first, second = world.verifier.challenge(good.name), world.verifier.challenge(good.name)
    assert len(first.nonce) == 32
    assert first.nonce != second.nonce
    assert first.expires_at == NOW + dt.timedelta(seconds=60)
    assert first.ima_offset == 0


def test_challenge_selection_covers_what_the_policy_needs(make_world: Callable[..., World]) -> None:
    from attest.pcrselect import PcrSelection

    world = make_world(pcrs=PcrSelection.parse("sha256:0-3+sha1:0"))
    node = SoftNode("node-a", world.ca)
    world.enroll(node)
    assert world.verifier.challenge("node-a").selection == "sha256:0,1,2,3+sha1:0"
    world.store.put_policy("default", policy_text(node.boot))
    selection = world.verifier.challenge("node-a").selection
    assert selection.startswith("sha256:0,1,2,3,4,6,7,8,9+sha1:0")


# --- evidence ----------------------------------------------------------------------------


def test_good_node_is_trusted_and_the_verdict_kept(world: World, good: SoftNode) -> None:
    verdict = world.attest(good)
    assert verdict.trusted, verdict.reasons
    assert verdict.expires_at == NOW + dt.timedelta(seconds=300)
    node = world.store.get_node(good.name)
    assert node is not None
    assert node.last_verdict is not None
    assert node.last_verdict.trusted
    assert node.last_verdict.policy == "default@1"
    assert node.clock is not None
    assert node.clock["reset_count"] == 7
    assert world.admin.node(good.name).state == "trusted"
    assert world.sample("attest_attestations_total", result="trusted", reason="none") == 1
    assert world.sample("attest_appraisal_seconds_count") == 1
    world.clock.advance(301)
    assert world.admin.node(good.name).state == "stale"
    assert world.admin.node_state_counts() == {"stale": 1}


def test_altered_boot_is_untrusted_with_the_failed_rule(world: World, good: SoftNode) -> None:
    assert world.attest(good).trusted
    good.reboot(BootProfile().with_kernel(b"patched kernel"))
    verdict = world.attest(good)
    assert not verdict.trusted
    assert verdict.expires_at is None
    assert verdict.reboot
    rules = {(r.code, r.rule) for r in verdict.reasons}
    assert ("policy_event_not_allowed", "boot/efi_applications") in rules
    assert world.admin.node(good.name).state == "untrusted"
    assert world.admin.node(good.name).reasons == verdict.reasons
    assert world.sample("attest_attestation_reasons_total", reason="policy_event_not_allowed") >= 1


def test_quote_under_another_ak_is_rejected_and_not_stored(world: World, good: SoftNode) -> None:
    world.attest(good)
    before = world.store.get_node(good.name)
    with pytest.raises(EvidenceRejected) as e:
        world.attest(good, ak=SoftAk())
    assert e.value.code == "quote_signature_invalid"
    assert world.store.get_node(good.name) == before  # verdict, clock and IMA state untouched
    assert world.store.audit[-1].kind == "rejected-evidence"
    assert world.sample("attest_attestations_total", result="rejected", reason="quote_signature_invalid") == 1


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"magic": 0x12345678}, "quote_bad_magic"),
        ({"extra_data": b"another nonce"}, "quote_nonce_mismatch"),
    ],
)
def test_quote_failures_before_the_logs_store_nothing(
    world: World, good: SoftNode, change: dict[str, Any], code: str
) -> None:
    with pytest.raises(EvidenceRejected) as e:
        world.attest(good, **change)
    assert code in {f.code.value for f in e.value.findings}
    assert world.store.verdicts == []


def test_other_selection_than_asked_is_rejected(world: World, good: SoftNode) -> None:
    challenge = world.verifier.challenge(good.name)
    evidence = good.evidence(challenge.nonce, "sha256:0-7")
    with pytest.raises(EvidenceRejected) as e:
        world.verifier.submit_evidence(good.name, evidence)
    assert "quote_pcr_selection_mismatch" in {f.code.value for f in e.value.findings}


def test_nonce_is_single_use_and_bound_to_its_node(world: World, good: SoftNode) -> None:
    other = SoftNode("node-b", world.ca)
    world.enroll(other)
    challenge = world.verifier.challenge(good.name)
    evidence = good.evidence(challenge.nonce, challenge.selection)
    with pytest.raises(NonceRejected) as e:
        world.verifier.submit_evidence("node-b", other.evidence(challenge.nonce, challenge.selection))
    assert code_of(e) == "nonce_wrong_node"
    challenge = world.verifier.challenge(good.name)
    evidence = good.evidence(challenge.nonce, challenge.selection)
    assert world.verifier.submit_evidence(good.name, evidence).trusted
    with pytest.raises(NonceRejected) as e:
        world.verifier.submit_evidence(good.name, evidence)
    assert code_of(e) == "nonce_reused"
    assert world.sample("attest_attestations_total", result="rejected", reason="nonce_reused") == 1


def test_expired_nonce_is_refused(world: World, good: SoftNode) -> None:
    challenge = world.verifier.challenge(good.name)
    world.clock.advance(61)
    with pytest.raises(NonceRejected) as e:
        world.verifier.submit_evidence(good.name, good.evidence(challenge.nonce, challenge.selection))
    assert code_of(e) == "nonce_expired"


def test_missing_policy_is_untrusted_unless_not_required(make_world: Callable[..., World]) -> None:
    for required, trusted in ((True, False), (False, True)):
        world = make_world(require_policy=required)
        node = SoftNode("node-a", world.ca)
        world.enroll(node)
        verdict = world.attest(node)
        assert verdict.trusted is trusted
        assert [r.code for r in verdict.reasons] == ([] if trusted else ["policy_missing"])


def test_newest_policy_version_is_used(world: World, good: SoftNode) -> None:
    other = SoftNode("other", world.ca, BootProfile().with_kernel(b"another kernel"))
    world.store.put_policy("default", policy_text(other.boot))
    verdict = world.attest(good)
    assert not verdict.trusted
    node = world.store.get_node(good.name)
    assert node is not None
    assert node.last_verdict is not None
    assert node.last_verdict.policy == "default@2"


def test_clock_rollback_is_untrusted_and_the_high_water_mark_kept(world: World, good: SoftNode) -> None:
    world.attest(good)
    node = world.store.get_node(good.name)
    assert node is not None
    kept = node.clock
    good.clock = dataclasses.replace(good.clock, clock=1_000)
    verdict = world.attest(good)
    assert "quote_clock_rollback" in {r.code for r in verdict.reasons}
    node = world.store.get_node(good.name)
    assert node is not None
    assert node.clock == kept


def test_malformed_pcr_hex_is_rejected(world: World, good: SoftNode) -> None:
    challenge = world.verifier.challenge(good.name)
    evidence = good.evidence(challenge.nonce, challenge.selection)
    bad = evidence.model_copy(update={"pcrs": {"sha256": {0: "abc"}}})
    with pytest.raises(EvidenceRejected) as e:
        world.verifier.submit_evidence(good.name, bad)
    assert e.value.code == "pcr_values_malformed"


# --- IMA across rounds -------------------------------------------------------------------


@pytest.fixture
def ima_node(world: World) -> SoftNode:
    node = SoftNode("node-i", world.ca)
    node.ima = software_ima(node.boot)
    world.store.put_policy("default", policy_text(node.boot, ima=node.ima))
    world.enroll(node)
    return node


def test_ima_continues_from_the_accepted_offset(world: World, ima_node: SoftNode) -> None:
    first = world.attest(ima_node)
    assert first.trusted, first.reasons
    assert ima_node.ima is not None
    assert first.ima_offset == len(ima_node.ima.entries)
    assert world.verifier.challenge(ima_node.name).ima_offset == first.ima_offset
    ima_node.ima = ima_node.ima.with_files([("/usr/bin/kubelet", b"simulated kubelet v1.31.2")])
    second = world.attest(ima_node)
    assert second.trusted, second.reasons
    assert second.ima_offset == first.ima_offset + 1


def test_ima_from_a_wrong_offset_is_untrusted_and_starts_over(world: World, ima_node: SoftNode) -> None:
    world.attest(ima_node)
    verdict = world.attest(ima_node, ima_offset=2)
    assert not verdict.trusted
    assert [r.code for r in verdict.reasons] == ["ima_replay_mismatch"]
    assert verdict.ima_offset == 0
    assert world.verifier.challenge(ima_node.name).ima_offset == 0
    assert world.attest(ima_node).trusted  # the whole list again: back to trusted


def test_ima_offset_after_a_reboot_must_start_over(world: World, ima_node: SoftNode) -> None:
    first = world.attest(ima_node)
    ima_node.reboot()
    ima_node.ima = software_ima(ima_node.boot, files=(("/usr/bin/a", b"a"),) * first.ima_offset)
    verdict = world.attest(ima_node, ima_offset=first.ima_offset)
    assert not verdict.trusted
    assert "ima_replay_mismatch" in {r.code for r in verdict.reasons}
    assert world.verifier.challenge(ima_node.name).ima_offset == 0


def test_a_bad_file_keeps_the_node_untrusted_until_reboot(world: World, ima_node: SoftNode) -> None:
    first = world.attest(ima_node)
    assert ima_node.ima is not None
    ima_node.ima = ima_node.ima.with_files([("/tmp/evil", b"miner")])
    bad = world.attest(ima_node)
    assert "policy_ima_not_allowed" in {r.code for r in bad.reasons}
    assert bad.ima_offset == first.ima_offset  # not advanced past the bad entry
    again = world.attest(ima_node)
    assert not again.trusted  # judged again, and fails again


# --- admin -------------------------------------------------------------------------------


def test_policy_is_validated_before_it_is_stored(world: World) -> None:
    with pytest.raises(AttestError) as e:
        world.admin.put_policy(PolicyIn(text="version: 1\nname: x\nboot: {nope: 1}\n"))
    assert code_of(e) == "policy_invalid"
    with pytest.raises(BadRequest) as b:
        world.admin.put_policy(PolicyIn(text="version: 1\nname: 'has space'\n"))
    assert code_of(b) == "policy_invalid"
    assert world.store.policies == {}


def test_node_states(world: World, good: SoftNode) -> None:
    record = world.store.get_node(good.name)
    assert record is not None
    assert node_state(record, NOW) == "enrolled"
    assert world.admin.node_state_counts() == {"enrolled": 1}
