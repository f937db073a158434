"""attestctl eventlog show / replay: output contract (DESIGN 8), exit codes and help texts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from attest.cli.main import main

DATA = Path(__file__).parent / "data" / "eventlogs"
GCE = DATA / "tpm2-tools/event-gce-ubuntu-2104-log.bin"
EBS = DATA / "go-attestation/ebs_event_missing_eventlog"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as e:  # argparse exits for --help and usage errors
        code = int(e.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_replay_json_is_exactly_the_documented_shape(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "eventlog", "replay", str(GCE), "--json")
    assert code == 0
    assert err == ""
    doc = json.loads(out)
    assert set(doc) == {"pcrs", "workarounds"}
    assert doc["workarounds"] == []
    assert list(doc["pcrs"]) == ["sha1", "sha256", "sha384"]
    for bank, size in (("sha1", 20), ("sha256", 32), ("sha384", 48)):
        assert list(doc["pcrs"][bank]) == [str(i) for i in range(24)]
        assert all(len(bytes.fromhex(v)) == size for v in doc["pcrs"][bank].values())
        assert doc["pcrs"][bank]["17"] == "ff" * size
        assert doc["pcrs"][bank]["10"] == "00" * size
    expected = json.loads((DATA / "tpm2-tools/event-gce-ubuntu-2104-log.expected.json").read_text())
    for bank, values in expected.items():
        for index, value in values.items():
            assert doc["pcrs"][bank][index] == value


def test_replay_with_a_workaround_reports_it(capsys: pytest.CaptureFixture[str]) -> None:
    expected = json.loads((DATA / "go-attestation/ebs_event_missing_eventlog.expected.json").read_text())
    code, out, _ = run(capsys, "eventlog", "replay", str(EBS), "--json")
    assert code == 0
    assert json.loads(out)["pcrs"]["sha1"]["5"] != expected["sha1"]["5"]
    code, out, _ = run(
        capsys, "eventlog", "replay", str(EBS), "--json", "--workaround", "exit-boot-services-unlogged"
    )
    doc = json.loads(out)
    assert code == 0
    assert doc["workarounds"] == ["exit-boot-services-unlogged"]
    assert doc["pcrs"]["sha1"]["5"] == expected["sha1"]["5"]


def test_unknown_workaround_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "eventlog", "replay", str(EBS), "--workaround", "trust-me")
    assert code == 2
    assert out == ""
    assert "invalid choice" in err
    assert len(err.strip().splitlines()) == 1


def test_replay_human_output(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "eventlog", "replay", str(EBS))
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "workarounds applied: none"
    assert lines[1] == "sha1:"
    index, value = lines[2].split()
    assert index == "0"
    assert len(bytes.fromhex(value)) == 20
    assert len(lines) == 2 + 24


def test_show_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "eventlog", "show", str(GCE), "--json")
    assert code == 0
    assert err == ""
    doc = json.loads(out)
    assert doc["format"] == "crypto-agile"
    assert [b["name"] for b in doc["banks"]] == ["sha1", "sha256", "sha384"]
    assert len(doc["events"]) == 112
    first, secure_boot = doc["events"][0], doc["events"][3]
    assert first["type"] == "EV_NO_ACTION"
    assert first["verified"] is False
    assert first["binding"] == "none"
    assert first["decoded"]["kind"] == "spec_id_event"
    assert secure_boot == {
        "index": 3,
        "pcr": 7,
        "type": "EV_EFI_VARIABLE_DRIVER_CONFIG",
        "digests": secure_boot["digests"],
        "data": secure_boot["data"],
        "decoded": {
            "kind": "uefi_variable",
            "guid": "8be4df61-93ca-11d2-aa0d-00e098032b8c",
            "name": "SecureBoot",
            "data": "00",
            "value": {"kind": "boolean", "value": False},
            "trailing": "",
        },
        "binding": "data",
        "verified": True,
        "coverage": "event-data",
    }
    assert set(secure_boot["digests"]) == {"sha1", "sha256", "sha384"}


def test_show_table(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "eventlog", "show", str(GCE))
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "crypto-agile log, banks sha1, sha256, sha384, 112 events"
    assert lines[1].split() == ["#", "PCR", "TYPE", "VERIFIED", "DATA"]
    secure_boot = next(line for line in lines if "SecureBoot" in line)
    assert secure_boot.split()[:4] == ["3", "7", "EV_EFI_VARIABLE_DRIVER_CONFIG", "yes"]
    assert secure_boot.endswith("= false")
    assert any("yes (variable-data)" in line and "BootOrder" in line for line in lines)
    assert any(
        "EV_EFI_BOOT_SERVICES_APPLICATION" in line and " no " in line and "/SCSI(1,0)/HD(15,GPT," in line
        for line in lines
    )


@pytest.mark.parametrize("command", ["show", "replay"])
@pytest.mark.parametrize(
    ("path", "message"),
    [
        (DATA / "keylime/binary_bios_measurements-bogus", "PCR index"),
        (DATA / "keylime/binary_bios_measurements-empty", "empty log"),
        (DATA / "tpm2-tools/specid-vendordata.bin", "vendorInfoSize"),
        (DATA / "no-such-log", "no such file"),
        (DATA, "is a directory"),
    ],
)
def test_unusable_input_exits_2_with_one_line(
    capsys: pytest.CaptureFixture[str], command: str, path: Path, message: str
) -> None:
    code, out, err = run(capsys, "eventlog", command, str(path), "--json")
    assert code == 2
    assert out == ""
    assert len(err.strip().splitlines()) == 1
    assert err.startswith("attestctl: error: ")
    assert message in err


def test_help_texts_teach(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "eventlog", "--help")
    assert code == 0
    assert "crypto-agile" in out
    assert "show" in out
    assert "replay" in out
    code, out, _ = run(capsys, "eventlog", "show", "--help")
    assert code == 0
    assert "verified=yes" in out
    assert "EV_NO_ACTION" in out
    code, out, _ = run(capsys, "eventlog", "replay", "--help")
    assert code == 0
    assert "StartupLocality" in out
    assert "exit-boot-services-unlogged" in out
    assert '{"pcrs": {"sha1": {"0": "hex", ...}' in out


def test_eventlog_without_subcommand_prints_help_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "eventlog")
    assert code == 2
    assert out == ""
    assert "show" in err
