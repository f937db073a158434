"""Reference policies: loading, generation from known-good evidence, and every rule failing."""

from __future__ import annotations

import dataclasses
import hashlib
import struct
from pathlib import Path

import pytest

from attest.errors import ParseError
from attest.reasons import Reason
from attest.tcg import EventType
from attest.verify import eventlog, ima
from attest.verify.policy import (
    create_policy,
    dump_policy,
    evaluate_boot,
    evaluate_ima,
    image_allowed,
    load_policy,
)
from swtpm.measuredboot import BootProfile, simulate_boot

DATA = Path(__file__).parent / "data"
ALL_PCRS = frozenset(range(24))


def _judge(profile: BootProfile) -> list[str]:
    good = simulate_boot(BootProfile())
    good_log = eventlog.parse(good.log)
    policy = create_policy("good", good_log, eventlog.replay(good_log).pcrs)
    boot = simulate_boot(profile)
    log = eventlog.parse(boot.log)
    quoted = eventlog.replay(log).pcrs[policy.bank]
    return [f.code.value + ":" + (f.rule or "") for f in evaluate_boot(policy, log, quoted, ALL_PCRS)]


def test_generated_policy_accepts_its_own_evidence_and_round_trips() -> None:
    good = simulate_boot(BootProfile())
    log = eventlog.parse(good.log)
    policy = create_policy("good", log, eventlog.replay(log).pcrs)
    assert policy.boot is not None
    assert policy.boot.secure_boot
    assert policy.boot.kernel_cmdline
    assert load_policy(dump_policy(policy)) == policy
    assert _judge(BootProfile()) == []


def test_altered_kernel_fails_on_the_kernel_digest() -> None:
    codes = _judge(BootProfile().with_kernel(b"evil kernel"))
    assert "policy_event_not_allowed:boot/efi_applications" in codes
    assert "policy_event_not_allowed:boot/event_digests/9" in codes


def test_secure_boot_off_fails() -> None:
    codes = _judge(BootProfile().with_secure_boot(False))
    assert "policy_secure_boot_disabled:boot/secure_boot" in codes


def test_extra_driver_fails_on_the_driver_rule() -> None:
    codes = _judge(BootProfile().with_driver(b"unsigned driver"))
    assert "policy_event_not_allowed:boot/efi_drivers" in codes


def test_changed_kernel_command_line_fails_with_the_line_named() -> None:
    profile = BootProfile()
    codes = _judge(profile.with_cmdline("root=/dev/sda1 ro init=/bin/sh"))
    assert "policy_kernel_cmdline:boot/kernel_cmdline" in codes


def test_retyped_application_event_still_fails() -> None:
    """An attacker rewrites the type of an unexpected boot application to EV_EFI_ACTION: the
    digest (which the replay binds) is still judged, because its data does not bind it."""
    good = simulate_boot(BootProfile())
    log = eventlog.parse(good.log)
    policy = create_policy("good", log, eventlog.replay(log).pcrs)
    raw = bytearray(simulate_boot(BootProfile().with_kernel(b"evil kernel")).log)
    for e in eventlog.parse(bytes(raw)).events:
        if e.type == EventType.EV_EFI_BOOT_SERVICES_APPLICATION:
            # TCG_PCR_EVENT2 starts with pcrIndex then eventType; nothing else changes.
            struct.pack_into("<I", raw, e.offset + 4, int(EventType.EV_EFI_ACTION))
    evil = eventlog.parse(bytes(raw))
    assert not any(e.type == EventType.EV_EFI_BOOT_SERVICES_APPLICATION for e in evil.events)
    quoted = eventlog.replay(evil).pcrs["sha256"]
    findings = evaluate_boot(policy, evil, quoted, ALL_PCRS)
    assert any(f.code is Reason.POLICY_EVENT_NOT_ALLOWED and f.pcr == 4 for f in findings)


def test_rules_on_unreplayed_or_unquoted_pcrs_fail_closed() -> None:
    good = simulate_boot(BootProfile())
    log = eventlog.parse(good.log)
    policy = create_policy("good", log, eventlog.replay(log).pcrs)
    quoted = eventlog.replay(log).pcrs["sha256"]
    findings = evaluate_boot(policy, log, quoted, ALL_PCRS - {7})
    assert [f.pcr for f in findings if f.code is Reason.POLICY_PCR_UNVERIFIED] == [7]
    partial = {p: v for p, v in quoted.items() if p != 0}
    findings = evaluate_boot(policy, log, partial, ALL_PCRS)
    assert any(f.code is Reason.POLICY_PCR_UNVERIFIED and f.pcr == 0 for f in findings)


def test_pinned_firmware_pcr_mismatch_names_the_pcr() -> None:
    good = simulate_boot(BootProfile())
    log = eventlog.parse(good.log)
    policy = create_policy("good", log, eventlog.replay(log).pcrs)
    quoted = dict(eventlog.replay(log).pcrs["sha256"])
    quoted[0] = b"\x01" * 32
    findings = evaluate_boot(policy, log, quoted, ALL_PCRS - {0})
    assert [(f.code, f.pcr, f.rule) for f in findings] == [(Reason.POLICY_PCR_MISMATCH, 0, "boot/pcrs")]
    assert (
        "PCR 0 sha256 value 0101010101010101.. not in policy 'good' rule 'boot/pcrs'" in findings[0].message
    )


@pytest.mark.parametrize(
    "name",
    [
        "keylime/binary_bios_measurements-secureboot",
        "go-attestation/sb_cert_eventlog",
        "tpm2-tools/event-sd-boot-fedora37.bin",
    ],
)
def test_policy_from_real_logs_accepts_them(name: str) -> None:
    log = eventlog.parse((DATA / "eventlogs" / name).read_bytes())
    replay = eventlog.replay(log)
    policy = create_policy("real", log, replay.pcrs)
    assert load_policy(dump_policy(policy)) == policy
    assert evaluate_boot(policy, log, replay.pcrs[policy.bank], ALL_PCRS) == []


def test_secure_boot_db_change_is_reported() -> None:
    log = eventlog.parse((DATA / "eventlogs/keylime/binary_bios_measurements-secureboot").read_bytes())
    replay = eventlog.replay(log)
    policy = create_policy("real", log, replay.pcrs)
    assert policy.boot is not None
    assert policy.boot.db
    narrowed = dataclasses.replace(
        policy, boot=dataclasses.replace(policy.boot, db=frozenset(sorted(policy.boot.db)[1:]))
    )
    findings = evaluate_boot(narrowed, log, replay.pcrs["sha256"], ALL_PCRS)
    assert [(f.code, f.rule) for f in findings] == [(Reason.POLICY_SECURE_BOOT_KEYS, "boot/db")]
    assert "1 unexpected" in findings[0].message


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("version: 2\nname: x\n", "policy.version"),
        ("version: 1\n", "policy.name"),
        ("version: 1\nname: x\nbooot: {}\n", "unknown key(s) booot"),
        ("version: 1\nname: x\nboot: {efi_applications: [zz]}\n", "boot.efi_applications"),
        ("version: 1\nname: x\nboot: {pcrs: {24: []}}\n", "out of range"),
        ("version: 1\nname: x\nbank: sha1\n", "allow_sha1"),
        ("version: 1\nname: x\nima: {allow: {/bin/sh: ['md5:00']}}\n", "unknown digest algorithm"),
        ("version: 1\nname: x\nima: {unlisted: maybe}\n", "ima.unlisted"),
        ("[1, 2", "not YAML"),
        ("- 1\n", "must be a mapping"),
    ],
)
def test_bad_policies_are_refused_with_where(text: str, where: str) -> None:
    with pytest.raises(ParseError) as e:
        load_policy(text)
    assert e.value.code is Reason.POLICY_INVALID
    assert where in e.value.message


def _ima_entries(lines: list[tuple[str, bytes]]) -> tuple[ima.ImaEntry, ...]:
    text = b""
    for path, content in lines:
        data = ima.encode_template_data("ima-ng", "sha256", hashlib.sha256(content).digest(), path)
        text += (
            b"10 "
            + ima.template_hash("sha1", data).hex().encode()
            + b" ima-ng sha256:"
            + hashlib.sha256(content).hexdigest().encode()
            + b" "
            + path.encode()
            + b"\n"
        )
    return ima.parse(text).entries


def test_ima_allowlist_excludes_and_unlisted() -> None:
    known = _ima_entries([("boot_aggregate", b"agg"), ("/usr/bin/bash", b"bash"), ("/tmp/x", b"tmp")])
    policy = create_policy(
        "n", eventlog.parse(simulate_boot(BootProfile()).log), {"sha256": {}}, known, with_ima=True
    )
    assert policy.ima is not None
    policy = dataclasses.replace(policy, ima=dataclasses.replace(policy.ima, exclude=("/tmp/*",)))
    assert evaluate_ima(policy, known) == []
    changed = _ima_entries(
        [("boot_aggregate", b"agg"), ("/usr/bin/bash", b"trojan"), ("/tmp/y", b"t"), ("/usr/bin/nc", b"nc")]
    )
    findings = evaluate_ima(policy, changed)
    assert [(f.code, f.event) for f in findings] == [
        (Reason.POLICY_IMA_NOT_ALLOWED, 1),
        (Reason.POLICY_IMA_NOT_ALLOWED, 3),
    ]
    assert "'/usr/bin/nc'" in findings[1].message


def test_image_allowlist_forms() -> None:
    digest = "sha256:" + "ab" * 32
    policy = load_policy(
        "version: 1\nname: c\ncontainers:\n  images:\n"
        f"  - registry.k8s.io/pause@{digest}\n  - sha256:{'cd' * 32}\n  - ghcr.io/acme/*\n"
    )
    assert image_allowed(policy, f"registry.k8s.io/pause:3.9@{digest}", digest)
    assert not image_allowed(policy, f"docker.io/evil/pause@{digest}", digest)
    assert image_allowed(policy, "anything/at-all", "sha256:" + "cd" * 32)
    assert image_allowed(policy, "ghcr.io/acme/app:1.0", None)
    assert not image_allowed(policy, "ghcr.io/other/app:1.0", None)


def test_struct_sanity() -> None:
    # The SecureBoot variable in the simulated log is the UEFI boolean 1.
    log = eventlog.parse(simulate_boot(BootProfile()).log)
    sb = [e for e in log.events if e.pcr == 7 and e.type == EventType.EV_EFI_VARIABLE_DRIVER_CONFIG]
    assert sb
    assert sb[0].data.endswith(struct.pack("B", 1))
