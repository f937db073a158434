"""attestctl ima replay: output, options, and exit status 2 with one line for bad input."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from attest.cli.main import main
from attest.verify import ima

DATA = Path(__file__).parent / "data" / "ima"


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as e:  # argparse's --help and usage errors
        code = int(e.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def _list(tmp_path: Path, count: int = 6) -> Path:
    datas = [
        ima.encode_template_data("ima-ng", "sha256", hashlib.sha256(b"%d" % n).digest(), f"/bin/p{n}")
        for n in range(count)
    ]
    path = tmp_path / "binary_runtime_measurements"
    path.write_bytes(b"".join(ima.encode_binary_entry("ima-ng", d) for d in datas))
    return path


def test_replay_json_binary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _list(tmp_path)
    code, out, err = _run(capsys, "ima", "replay", str(path), "--json")
    assert (code, err) == (0, "")
    doc = json.loads(out)
    state = ima.replay(ima.parse(path.read_bytes()))
    assert doc["pcrs"] == {b: {"10": state.pcrs[b][10].hex()} for b in ima.DEFAULT_BANKS}
    assert (doc["entries"], doc["violations"], doc["format"]) == (6, 0, "binary")
    assert (doc["template_hash_alg"], doc["templates"], doc["variant"]) == (
        "sha1",
        {"ima-ng": 6},
        "bank-hash",
    )
    assert doc["boot_aggregate"] is None  # the first entry is /bin/p0


def test_replay_json_ascii_with_violations(capsys: pytest.CaptureFixture[str]) -> None:
    path = DATA / "keylime" / "ascii_runtime_measurements_ima"
    code, out, _ = _run(capsys, "ima", "replay", str(path), "--json", "--bank", "sha256", "--bank", "sha1")
    assert code == 0
    doc = json.loads(out)
    assert list(doc["pcrs"]) == ["sha256", "sha1"]
    assert (doc["entries"], doc["violations"], doc["format"]) == (867, 9, "ascii")
    assert doc["boot_aggregate"] == {"alg": "sha1", "digest": "00" * 20}


def test_replay_human_summary(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "ima", "replay", str(DATA / "keylime" / "ascii_runtime_measurements"))
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "826 entries (ascii, sha1 template hashes), 0 violations"
    assert lines[1] == "templates: ima-ng 826"
    assert [line.split()[2] for line in lines if line.startswith("PCR 10")] == list(ima.DEFAULT_BANKS)


def test_variant_changes_only_the_non_sha1_banks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _list(tmp_path)
    _, new, _ = _run(capsys, "ima", "replay", str(path), "--json")
    code, old, _ = _run(capsys, "ima", "replay", str(path), "--json", "--variant", "padded-sha1")
    assert code == 0
    new_pcrs, old_pcrs = json.loads(new)["pcrs"], json.loads(old)["pcrs"]
    assert new_pcrs["sha1"] == old_pcrs["sha1"]
    assert new_pcrs["sha256"] != old_pcrs["sha256"]


def test_truncated_capture_needs_allow_partial(capsys: pytest.CaptureFixture[str]) -> None:
    path = str(DATA / "tpm2-tss" / "sml-ima-sig-sha256.bin")
    code, out, err = _run(capsys, "ima", "replay", path)
    assert (code, out) == (2, "")
    assert err == "attestctl: error: offset 987: entry 9: truncated entry [ima_malformed]\n"
    code, out, _ = _run(capsys, "ima", "replay", path, "--allow-partial", "--json")
    assert code == 0
    assert (json.loads(out)["entries"], json.loads(out)["unparsed_tail"]) == (9, 6)


@pytest.mark.parametrize(
    ("name", "content", "what"),
    [
        ("missing", None, "no such file"),
        ("empty", b"", "no measurements"),
        ("garbage", b"\x7fELF\x02\x01\x01\x00" * 8, "not an IMA measurement list"),
        ("text", b"hello world\n", "not an IMA measurement list"),
        ("numbers", b"10 11 12\n", "line 1: expected a PCR"),
        ("unknown-alg", (DATA / "keylime" / "ima-log-unknown").read_bytes(), "[ima_unknown_algorithm]"),
        ("tampered", (DATA / "keylime" / "test_ima_verification.BAD_SIGNATURES.txt").read_bytes(), "entry 0"),
    ],
)
def test_unusable_input_exits_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, content: bytes | None, what: str
) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    code, out, err = _run(capsys, "ima", "replay", str(path))
    assert (code, out) == (2, "")
    assert err.count("\n") == 1
    assert err.startswith("attestctl: error: ")
    assert what in err
    assert "Traceback" not in err


def test_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(capsys, "ima")
    assert code == 2
    assert "replay" in err
    code, _, err = _run(capsys, "ima", "replay")
    assert code == 2
    assert err.count("\n") == 1
    code, _, err = _run(capsys, "ima", "replay", "x", "--bank", "md5")
    assert code == 2
    assert "invalid choice" in err


def test_help_teaches(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "ima", "replay", "--help")
    assert code == 0
    for phrase in ("tpm2_pcrread", "Violations", "Linux >= 5.8", "padded-sha1", "JSON:", "Exit status"):
        assert phrase in out
    code, out, _ = _run(capsys, "--help")
    assert code == 0
    assert "ima" in out
