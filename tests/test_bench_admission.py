"""The admission latency benchmark runs (on a tiny size): its figures come from running it by
hand (python -m bench.admission), never from a test."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.admission import main, prepare, reviews, start_verifier, table_rows, wrk_max_rate


@pytest.mark.parametrize("generator", ["auto", "python"])
def test_admission_benchmark_runs(capsys: pytest.CaptureFixture[str], generator: str) -> None:
    argv = ["--nodes", "3", "--rate", "40", "--seconds", "0.5", "--connections", "2", "--warmup", "0"]
    assert main([*argv, "--generator", generator]) == 0  # 1 if any answer failed the API server's checks
    out = capsys.readouterr().out
    assert "3 attested nodes" in out
    assert "fixed 40/s" in out
    assert "max rate, 2 conns" in out
    assert "verifier CPU per request (utime + stime, /proc): fixed 40/s" in out
    assert "verifier-side decision time" in out


def test_admission_rows_for_the_benchmark_table() -> None:
    rows = table_rows(0.5, 3)
    assert [target for _, _, target in rows] == ["p99 <= 5 ms", ">= 3,000 req/s", ""]
    assert rows[0][0] == "admission (3 nodes, 0.5 s): fixed 1000/s p50 / p99 / p99.9"
    assert rows[0][1].endswith(" ms")
    assert rows[1][1].endswith(" req/s")


def test_wrk_counts_every_answer_that_is_not_an_admission(tmp_path: Path) -> None:
    database, _ = prepare(tmp_path, 1)
    verifier = start_verifier(tmp_path, database)
    try:
        refused = reviews(["not-enrolled"], verifier.port, 3)  # answered 200, allowed: false
        phase = wrk_max_rate(tmp_path, verifier.port, refused, 0.5, 1)
    finally:
        verifier.stop()
    assert phase.requests > 0
    assert phase.errors == [f"wrk: {phase.requests} answers were not a 200 allowing the pod"]


def test_the_application_alone_runs(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--nodes", "2", "--in-process", "20"]) == 0  # SystemExit if a review was not admitted
    out = capsys.readouterr().out.splitlines()
    assert [line.split(" us CPU per review ")[1] for line in out] == [
        "from the node view",
        "reading through (--admission-cache-seconds 0)",
    ]
