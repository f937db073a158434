"""The benchmarks run (on a tiny size): figures come from running them by hand, not from tests."""

from __future__ import annotations

import pytest

import bench.__main__ as bench_all
from bench.appraisal import main


def test_appraisal_benchmark_runs(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--rounds", "3", "--ima-entries", "50"]) == 0
    out = capsys.readouterr().out
    assert "quote + UEFI log (104 events)" in out
    assert "steady state: quote + same log + 10 new IMA" in out
    assert "entries/s" in out


def test_all_benchmarks_print_one_table(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--only", "appraisal,admission", "--rounds", "3", "--ima-entries", "50"]
    assert bench_all.main([*argv, "--admission-nodes", "3", "--admission-seconds", "0.5"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("machine: ")
    assert " cores, Python " in out[0]
    assert out[1].split() == ["measurement", "figure", "target"]
    assert any("appraisal: steady state" in line and ">= 5,000/s" in line for line in out)
    assert any(
        "admission (3 nodes, 0.5 s): maximum sustained rate" in line and "req/s" in line for line in out
    )


def test_a_failing_benchmark_is_a_row_and_a_non_zero_exit(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(_sizes: object) -> list[tuple[str, str, str]]:
        raise OSError("no such file: swtpm")

    monkeypatch.setitem(bench_all.SECTIONS, "e2e", broken)
    argv = ["--only", "appraisal,e2e", "--rounds", "3", "--ima-entries", "50"]
    assert bench_all.main(argv) == 1
    out = capsys.readouterr().out
    assert "FAILED" in out
    assert "OSError: no such file: swtpm" in out
    assert "appraisal: quote only" in out


def test_unknown_section_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        bench_all.main(["--only", "appraisal,wrk"])
    assert e.value.code == 2
    assert "choose from appraisal, admission" in capsys.readouterr().err


def test_overload_benchmark_runs() -> None:
    from bench import overload

    rows = {m: f for m, f, _ in overload.table_rows(seconds=1.0, admission_rate=50, nodes=8)}
    ok, shed, failed = next(f for m, f in rows.items() if "requests ok / shed / failed" in m).split(" / ")
    assert int(ok) > 0
    assert int(failed) == 0  # shed answers are 503s with Retry-After, never errors
    assert int(shed) >= 0
    assert "rounds/s" in rows["overload: sustainable agent rate (closed loop)"]
