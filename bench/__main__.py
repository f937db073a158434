"""Run every benchmark present and print one table: measurement, figure, target, and the machine.

The appraisal figures are taken pinned to one core, as their targets are stated; the admission
benchmark (when bench/admission.py is present) runs for a short time with few nodes, on every
core, its verifier as its own process. For full-length figures run each module by hand.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import os
import platform
from pathlib import Path

Row = tuple[str, str, str]  # measurement, figure, target


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    try:
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in {"model name", "Processor", "cpu model"} and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def appraisal_rows(rounds: int, ima_entries: int) -> list[Row]:
    from bench import appraisal

    previous = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(previous)})  # one core, as the targets are stated
    try:
        results = appraisal.run(rounds, ima_entries)
    finally:
        os.sched_setaffinity(0, previous)
    return [(f"appraisal: {label}", f"{rate:,.0f}/s", target) for label, rate, target in results]


def admission_rows(nodes: int, seconds: float, rate: float) -> list[Row]:
    from bench import admission  # optional: only when the module is present

    argv = ["--nodes", str(nodes), "--rate", str(rate), "--seconds", str(seconds)]
    argv += ["--connections", "4", "--warmup", "0"]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = admission.main(argv)
    rows: list[Row] = []
    lines = out.getvalue().splitlines()
    header = next((n for n, line in enumerate(lines) if line.startswith("phase")), None)
    for line in lines[header + 1 :] if header is not None else []:
        cells = line[24:].split()
        if len(cells) != 8:
            break
        name = line[:24].strip()
        _done, req_s, _p50, p99, *_rest, errors = cells
        rows.append((f"admission ({nodes} nodes, {seconds:g} s): {name}", f"{float(req_s):,.1f} req/s", ""))
        rows.append((f"admission ({nodes} nodes, {seconds:g} s): {name} p99", f"{float(p99):.2f} ms", ""))
        if errors != "0":
            rows.append((f"admission: {name} errors", errors, "0"))
    if status or not rows:
        rows.append(("admission", "FAILED", "runs clean"))
    return rows


def table(rows: list[Row]) -> str:
    width = max([len("measurement"), *(len(r[0]) for r in rows)])
    fig = max([len("figure"), *(len(r[1]) for r in rows)])
    lines = [
        f"machine: {cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        f"{'measurement':<{width}}  {'figure':>{fig}}  target",
    ]
    lines += [f"{m:<{width}}  {f:>{fig}}  {t}".rstrip() for m, f, t in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=2000, help="appraisals per case (default %(default)s)")
    p.add_argument("--ima-entries", type=int, default=10_000, help="IMA list length (default %(default)s)")
    p.add_argument("--admission-nodes", type=int, default=100, help="attested nodes (default %(default)s)")
    p.add_argument("--admission-seconds", type=float, default=3, help="per phase (default %(default)s)")
    p.add_argument("--admission-rate", type=float, default=100, help="fixed-rate req/s (default %(default)s)")
    args = p.parse_args(argv)
    rows = appraisal_rows(args.rounds, args.ima_entries)
    if importlib.util.find_spec("bench.admission") is not None:
        rows += admission_rows(args.admission_nodes, args.admission_seconds, args.admission_rate)
    print(table(rows))
    return 1 if any(figure == "FAILED" for _, figure, _ in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
