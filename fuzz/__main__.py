"""python -m fuzz run [--seconds N] [--harness NAME ...] [--jobs N] [--scratch]
python -m fuzz merge [--harness NAME ...]
python -m fuzz seed
python -m fuzz one NAME [libFuzzer arguments and inputs]

`run` starts each harness under libFuzzer for N seconds, `--jobs` at a time, and prints the
executions each made. New inputs grow fuzz/corpus/<harness>/ unless `--scratch` (CI) sends
them to a temporary directory. A crash, timeout or out-of-memory input is left under
fuzz/crashes/<harness>/ and makes the exit status 1. `merge` minimises each corpus in place
(libFuzzer -merge=1): run it before committing a grown corpus. `seed` adds the seeds from
tests/data (fuzz.seed). `one` is one harness under libFuzzer, as `run` starts it; given a file
instead of a directory, it runs that input once (a crash's traceback).
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from fuzz import CORPUS, CRASHES, HARNESSES, ROOT

# A parse of a hostile input gets this long and this much memory before it is a finding.
TIMEOUT_S = 10
RSS_LIMIT_MB = 2048
# The largest input libFuzzer makes. Real event logs run to 80 KiB, but every code path is
# reached by the smaller seeds (<= 32 KiB, fuzz/corpus/), and a bigger input only slows each run.
MAX_LEN = 32 * 1024

_EXECUTED = re.compile(rb"stat::number_of_executed_units:\s*(\d+)")
_DONE = re.compile(rb"^#(\d+)\s+DONE", re.MULTILINE)


@dataclass(frozen=True)
class Outcome:
    harness: str
    executions: int | None
    seconds: float
    found: tuple[Path, ...]  # inputs libFuzzer saved as crash-, timeout-, oom- or leak-
    returncode: int
    log: Path

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.found


def executions(output: bytes) -> int | None:
    """libFuzzer's count of executed inputs: its final stats line, else its DONE line."""
    found = _EXECUTED.findall(output) or _DONE.findall(output)
    return int(found[-1]) if found else None


def _fuzz_one(name: str, libfuzzer_args: Sequence[str]) -> None:
    """Instrument the code under test, then hand the process to libFuzzer (never returns)."""
    import atheris

    with atheris.instrument_imports(include=["attest", "webhook", "fuzz"]):
        from fuzz import entry

        target = entry(name)
    # libFuzzer re-runs argv[0] for -merge and -fork: the wrapper _libfuzzer wrote.
    atheris.Setup([os.environ.get("FUZZ_ARGV0", sys.argv[0]), *libfuzzer_args], target)
    atheris.Fuzz()


def _libfuzzer(name: str, args: Sequence[str], log: Path) -> subprocess.CompletedProcess[bytes]:
    wrapper = log.with_suffix(".sh")
    wrapper.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m fuzz one {name} "$@"\n')
    wrapper.chmod(0o755)
    env = {**os.environ, "FUZZ_ARGV0": str(wrapper)}
    with log.open("wb") as out:
        return subprocess.run(
            [str(wrapper), *args], stdout=out, stderr=subprocess.STDOUT, cwd=ROOT.parent, env=env, check=False
        )


def run_harness(name: str, seconds: int, scratch: Path | None, logs: Path) -> Outcome:
    corpus = CORPUS / name
    corpus.mkdir(parents=True, exist_ok=True)
    crashes = CRASHES / name
    crashes.mkdir(parents=True, exist_ok=True)
    before = set(crashes.iterdir())
    # libFuzzer writes new inputs to the first directory and only reads the others.
    dirs = [str(corpus)] if scratch is None else [str(scratch / name), str(corpus)]
    if scratch is not None:
        (scratch / name).mkdir(parents=True, exist_ok=True)
    args = [
        f"-max_total_time={seconds}",
        f"-timeout={TIMEOUT_S}",
        f"-rss_limit_mb={RSS_LIMIT_MB}",
        f"-max_len={MAX_LEN}",
        f"-artifact_prefix={crashes}/",
        "-print_final_stats=1",
        *dirs,
    ]
    log = logs / f"{name}.log"
    started = time.monotonic()
    proc = _libfuzzer(name, args, log)
    found = tuple(sorted(set(crashes.iterdir()) - before))
    return Outcome(
        name, executions(log.read_bytes()), time.monotonic() - started, found, proc.returncode, log
    )


def merge(name: str, logs: Path) -> tuple[int, int]:
    """Minimise one corpus in place; (files before, files after)."""
    corpus = CORPUS / name
    before = len(list(corpus.iterdir()))
    with tempfile.TemporaryDirectory(prefix=f"fuzz-merge-{name}-") as tmp:
        proc = _libfuzzer(
            name,
            [f"-timeout={TIMEOUT_S}", f"-rss_limit_mb={RSS_LIMIT_MB}", "-merge=1", tmp, str(corpus)],
            logs / f"{name}.merge.log",
        )
        kept = list(Path(tmp).iterdir())
        if proc.returncode != 0 or (before and not kept):
            raise SystemExit(
                f"fuzz: merging {name} failed, corpus left as it was; see {logs / f'{name}.merge.log'}"
            )
        shutil.rmtree(corpus)
        shutil.copytree(tmp, corpus)
    return before, len(kept)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["one"]:
        if len(argv) < 2 or argv[1] not in HARNESSES:
            print(
                f"usage: python -m fuzz one {{{','.join(HARNESSES)}}} [libFuzzer arguments]", file=sys.stderr
            )
            return 2
        _fuzz_one(argv[1], argv[2:])
        return 0
    parser = argparse.ArgumentParser(prog="python -m fuzz", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run harnesses under libFuzzer")
    run.add_argument("--seconds", type=int, default=60, help="per harness (default 60)")
    run.add_argument("--jobs", type=int, default=2, help="harnesses at a time (default 2)")
    run.add_argument("--scratch", action="store_true", help="leave fuzz/corpus/ as it is")
    mrg = sub.add_parser("merge", help="minimise the corpora in place")
    sub.add_parser("seed", help="add the seeds from tests/data to the corpora")
    for p in (run, mrg):
        p.add_argument("--harness", action="append", choices=HARNESSES, help="repeatable (default: all)")
    args = parser.parse_args(argv)
    if getattr(args, "seconds", 1) < 1 or getattr(args, "jobs", 1) < 1:
        parser.error("--seconds and --jobs must be at least 1")
    if args.command == "seed":
        from fuzz.seed import seed

        for name, added in sorted(seed(MAX_LEN).items()):
            print(f"{name:<13} {added} new seeds")
        return 0
    names: list[str] = args.harness or list(HARNESSES)
    logs = Path(os.environ.get("FUZZ_LOGS") or tempfile.mkdtemp(prefix="fuzz-logs-"))
    logs.mkdir(parents=True, exist_ok=True)
    if args.command == "merge":
        for name in names:
            before, after = merge(name, logs)
            print(f"{name:<13} {before} -> {after} inputs")
        return 0
    with tempfile.TemporaryDirectory(prefix="fuzz-scratch-") as tmp, ThreadPoolExecutor(args.jobs) as pool:
        scratch = Path(tmp) if args.scratch else None
        outcomes = list(pool.map(lambda n: run_harness(n, args.seconds, scratch, logs), names))
    print(f"{'harness':<13} {'executions':>11} {'seconds':>8}  result")
    for o in outcomes:
        result = "ok" if o.ok else f"FAILED (exit {o.returncode}), log {o.log}"
        count = "?" if o.executions is None else str(o.executions)
        print(f"{o.harness:<13} {count:>11} {o.seconds:>8.0f}  {result}")
        for path in o.found:
            print(f"  input: {path.relative_to(ROOT.parent)}")
    return 0 if all(o.ok for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
