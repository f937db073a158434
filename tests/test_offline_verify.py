"""The offline appraisal end to end: a simulated measured boot on swtpm, this agent's quote,
`attestctl policy create` on the good node, `attestctl verify` on good and altered nodes."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from attest.agent.cli import main as agent
from attest.cli.main import main as attestctl
from swtpm.imalog import measure_files, simulate_ima
from swtpm.measuredboot import BootProfile, boot, named_profile

NONCE = "5eed" * 16
SELECTION = "sha1:0-10+sha256:0-10"


def _node(swtpm: Any, tmp: Path, profile: BootProfile) -> dict[str, str]:
    simulated = boot(swtpm, profile)
    ima = simulate_ima(swtpm.tcti)
    (tmp / "eventlog.bin").write_bytes(simulated.log)
    (tmp / "ima.log").write_text(ima.text())
    out = tmp / "q"
    assert (
        agent(
            [
                "quote",
                "--tcti",
                swtpm.tcti,
                "--state-dir",
                str(tmp / "state"),
                "--nonce",
                NONCE,
                "--pcrs",
                SELECTION,
                "--out",
                str(out),
            ]
        )
        == 0
    )
    return {
        "--ak": str(out / "ak.pub"),
        "--quote": str(out / "quote.msg"),
        "--sig": str(out / "quote.sig"),
        "--pcrs": str(out / "pcrs.bin"),
        "--eventlog": str(tmp / "eventlog.bin"),
        "--ima": str(tmp / "ima.log"),
    }


def _verify(
    files: dict[str, str], capsys: pytest.CaptureFixture[str], *extra: str
) -> tuple[int, dict[str, Any]]:
    capsys.readouterr()
    argv = ["verify", "--nonce", NONCE, "--json", "--allow-sha1", *extra]
    for k, v in files.items():
        argv += [k, v]
    rc = attestctl(argv)
    return rc, json.loads(capsys.readouterr().out)


@pytest.fixture
def good_policy(swtpm_factory: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    (tpm,) = swtpm_factory(1)
    node = tmp_path / "reference"
    node.mkdir()
    files = _node(tpm, node, BootProfile())
    policy = tmp_path / "policy.yaml"
    assert (
        attestctl(
            [
                "policy",
                "create",
                "--eventlog",
                files["--eventlog"],
                "--ima",
                files["--ima"],
                "--name",
                "good-node",
                "-o",
                str(policy),
            ]
        )
        == 0
    )
    return policy


def test_good_node_is_trusted_integrity_only_and_under_policy(
    swtpm: Any, tmp_path: Path, good_policy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = _node(swtpm, tmp_path, BootProfile())
    rc, verdict = _verify(files, capsys)
    assert (rc, verdict["trusted"], verdict["reasons"]) == (0, True, [])
    rc, verdict = _verify(files, capsys, "--policy", str(good_policy))
    assert (rc, verdict["trusted"], verdict["reasons"]) == (0, True, [])
    assert verdict["ima"]["entries"] == len(Path(files["--ima"]).read_text().splitlines())


@pytest.mark.parametrize(
    ("profile", "code", "rule"),
    [
        ("altered-kernel", "policy_event_not_allowed", "boot/efi_applications"),
        ("secureboot-off", "policy_secure_boot_disabled", "boot/secure_boot"),
        ("extra-driver", "policy_event_not_allowed", "boot/efi_drivers"),
    ],
)
def test_altered_boot_is_untrusted_with_the_failed_rule(
    swtpm: Any,
    tmp_path: Path,
    good_policy: Path,
    capsys: pytest.CaptureFixture[str],
    profile: str,
    code: str,
    rule: str,
) -> None:
    files = _node(swtpm, tmp_path, named_profile(profile))
    rc, verdict = _verify(files, capsys)
    assert (rc, verdict["trusted"]) == (0, True), "an altered boot still has intact evidence"
    rc, verdict = _verify(files, capsys, "--policy", str(good_policy))
    assert rc == 1
    assert not verdict["trusted"]
    assert {"code": code, "rule": rule} in [
        {"code": r["code"], "rule": r.get("rule")} for r in verdict["reasons"]
    ]


def test_unknown_executable_in_ima_is_named(
    swtpm: Any, tmp_path: Path, good_policy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "eventlog.bin").write_bytes(boot(swtpm, BootProfile()).log)
    log = measure_files(swtpm.tcti, simulate_ima(swtpm.tcti), [("/usr/bin/nc", b"netcat, not in the policy")])
    (tmp_path / "ima.log").write_text(log.text())
    out = tmp_path / "q"
    assert (
        agent(
            [
                "quote",
                "--tcti",
                swtpm.tcti,
                "--state-dir",
                str(tmp_path / "state"),
                "--nonce",
                NONCE,
                "--pcrs",
                SELECTION,
                "--out",
                str(out),
            ]
        )
        == 0
    )
    files = {
        "--ak": str(out / "ak.pub"),
        "--quote": str(out / "quote.msg"),
        "--sig": str(out / "quote.sig"),
        "--pcrs": str(out / "pcrs.bin"),
        "--eventlog": str(tmp_path / "eventlog.bin"),
        "--ima": str(tmp_path / "ima.log"),
    }
    rc, verdict = _verify(files, capsys, "--policy", str(good_policy))
    assert rc == 1
    (reason,) = verdict["reasons"]
    assert reason["code"] == "policy_ima_not_allowed"
    assert "'/usr/bin/nc'" in reason["message"]
    assert reason["event"] == len(log.entries) - 1


def test_evidence_tampering_is_refused(
    swtpm: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = _node(swtpm, tmp_path, BootProfile())
    # A log from another boot profile does not replay to the quoted PCRs.
    other = tmp_path / "other.bin"
    from swtpm.measuredboot import simulate_boot

    other.write_bytes(simulate_boot(named_profile("altered-kernel")).log)
    rc, verdict = _verify({**files, "--eventlog": str(other)}, capsys)
    assert rc == 1
    assert [r["code"] for r in verdict["reasons"]] == ["eventlog_replay_mismatch"]
    # An IMA list with one entry dropped does not fold to the quoted PCR 10.
    lines = Path(files["--ima"]).read_text().splitlines(keepends=True)
    short = tmp_path / "short.log"
    short.write_text("".join(lines[:1] + lines[2:]))
    rc, verdict = _verify({**files, "--ima": str(short)}, capsys)
    assert rc == 1
    assert [r["code"] for r in verdict["reasons"]] == ["ima_replay_mismatch"]
    # Wrong nonce.
    capsys.readouterr()
    argv = ["verify", "--nonce", "00" * 32, "--json", "--allow-sha1"]
    for k, v in files.items():
        argv += [k, v]
    assert attestctl(argv) == 1
    assert [r["code"] for r in json.loads(capsys.readouterr().out)["reasons"]] == ["quote_nonce_mismatch"]
    # SHA-1 banks without --allow-sha1.
    capsys.readouterr()
    argv = ["verify", "--nonce", NONCE, "--json"]
    for k, v in files.items():
        argv += [k, v]
    assert attestctl(argv) == 1
    assert "quote_sha1_not_allowed" in [r["code"] for r in json.loads(capsys.readouterr().out)["reasons"]]


def test_unusable_input_exits_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    junk = tmp_path / "junk"
    junk.write_bytes(os.urandom(64))
    rc = attestctl(
        [
            "verify",
            "--ak",
            str(junk),
            "--quote",
            str(junk),
            "--sig",
            str(junk),
            "--pcrs",
            str(junk),
            "--nonce",
            "00",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1
    assert "Traceback" not in err
    rc = attestctl(["policy", "create", "--eventlog", str(tmp_path / "absent")])
    assert rc == 2
