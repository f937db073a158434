"""Every fuzz corpus input through its harness's entry function, without atheris: the inputs
the fuzzers found interesting (crashes among them, once fixed) keep meeting the contract."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fuzz import CORPUS, HARNESSES, entry
from fuzz.__main__ import executions, main


@pytest.mark.parametrize("name", HARNESSES)
def test_every_corpus_input_meets_the_contract(name: str) -> None:
    inputs = sorted((CORPUS / name).iterdir())
    assert inputs, f"fuzz/corpus/{name}/ is empty: the harness has no seeds"
    one_input = entry(name)
    for path in inputs:
        try:
            one_input(path.read_bytes())
        except Exception as e:
            raise AssertionError(f"fuzz/corpus/{name}/{path.name}: {type(e).__name__}: {e}") from e


def test_an_unknown_harness_is_refused() -> None:
    with pytest.raises(ValueError, match="no harness 'nope'"):
        entry("nope")
    with pytest.raises(SystemExit) as exit_:
        main(["run", "--harness", "nope"])
    assert exit_.value.code == 2
    assert main(["one", "nope"]) == 2


def test_executions_are_read_from_libfuzzers_final_lines() -> None:
    assert executions(b"#4096\tpulse  cov: 1\n#123456\tDONE   cov: 9\n") == 123456
    assert executions(b"#5 DONE\nstat::number_of_executed_units: 777\n") == 777
    assert executions(b"no stats at all") is None


def test_a_short_run_reports_executions_and_leaves_the_corpus_alone(tmp_path: Path) -> None:
    """The CI step's command, for one harness and one second, through real libFuzzer."""
    before = sorted(p.name for p in (CORPUS / "containerlog").iterdir())
    proc = subprocess.run(
        [sys.executable, "-m", "fuzz", "run", "--seconds", "1", "--harness", "containerlog", "--scratch"],
        capture_output=True,
        env={"FUZZ_LOGS": str(tmp_path), "PATH": "/usr/bin:/bin"},
        cwd=Path(__file__).parent.parent,
        check=False,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout.decode() + proc.stderr.decode()
    row = next(line for line in proc.stdout.decode().splitlines() if line.startswith("containerlog"))
    assert int(row.split()[1]) > 0
    assert row.endswith("ok")
    assert sorted(p.name for p in (CORPUS / "containerlog").iterdir()) == before
