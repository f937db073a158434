"""Run every benchmark and print one table: measurement, figure, target, and the machine.

By default each benchmark runs at the size its target is stated for (admission phases of 60 s,
100,000 nodes in the store): about ten minutes. --quick runs every one smaller, in about three;
--only picks sections. Each module also runs alone with more options (python -m bench.<name>
--help); docs/performance.md explains the figures.
"""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
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


@dataclass(frozen=True)
class Sizes:
    rounds: int = 2000
    ima_entries: int = 10_000
    admission_seconds: float = 60.0
    admission_nodes: int = 1000
    e2e_agents: int = 16
    e2e_seconds: float = 20.0
    store_sizes: tuple[int, ...] = (1000, 100_000)
    size_seconds: float = 10.0
    overload_seconds: float = 20.0


QUICK = Sizes(
    admission_seconds=5.0,
    admission_nodes=100,
    e2e_agents=4,
    e2e_seconds=8.0,
    store_sizes=(1000, 25_000),
    size_seconds=4.0,
    overload_seconds=5.0,
)


def _call(module: str, function: str, *args: object, **kwargs: object) -> list[Row]:
    rows: list[Row] = getattr(importlib.import_module(module), function)(*args, **kwargs)
    return rows


SECTIONS: dict[str, Callable[[Sizes], list[Row]]] = {
    "appraisal": lambda s: appraisal_rows(s.rounds, s.ima_entries),
    "admission": lambda s: _call("bench.admission", "table_rows", s.admission_seconds, s.admission_nodes),
    "e2e": lambda s: _call("bench.e2e", "table_rows", agents=s.e2e_agents, seconds=s.e2e_seconds),
    "size": lambda s: _call(
        "bench.size",
        "table_rows",
        sizes=s.store_sizes,
        seconds=s.size_seconds,
        listing=s.store_sizes[-1] >= 100_000,
    ),
    "overload": lambda s: _call("bench.overload", "table_rows", seconds=s.overload_seconds),
    "agent-memory": lambda s: _call("bench.agent_memory", "table_rows"),
}


def run_section(name: str, sizes: Sizes) -> list[Row]:
    print(f"running {name} ...", file=sys.stderr, flush=True)
    try:
        return SECTIONS[name](sizes)
    except Exception as e:  # one failing benchmark must not hide the others' figures
        return [(name, "FAILED", f"{type(e).__name__}: {e}")]


def table(rows: list[Row]) -> str:
    width = max([len("measurement"), *(len(r[0]) for r in rows)])
    fig = max([len("figure"), *(len(r[1]) for r in rows)])
    lines = [
        f"machine: {cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        f"{'measurement':<{width}}  {'figure':>{fig}}  target",
    ]
    lines += [f"{m:<{width}}  {f:>{fig}}  {t}".rstrip() for m, f, t in rows]
    return "\n".join(lines)


def _sections(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in SECTIONS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"choose from {', '.join(SECTIONS)} (got {text!r})")
    return names


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="every benchmark smaller (about three minutes)")
    p.add_argument(
        "--only",
        type=_sections,
        default=list(SECTIONS),
        help=f"comma-separated sections: {', '.join(SECTIONS)}",
    )
    p.add_argument("--rounds", type=int, help="appraisals per case (default 2000)")
    p.add_argument("--ima-entries", type=int, help="IMA list length (default 10000)")
    p.add_argument("--admission-nodes", type=int, help="attested nodes for admission (1000; quick 100)")
    p.add_argument("--admission-seconds", type=float, help="per admission phase (60; quick 5)")
    args = p.parse_args(argv)
    sizes = QUICK if args.quick else Sizes()
    overrides = {
        "rounds": args.rounds,
        "ima_entries": args.ima_entries,
        "admission_nodes": args.admission_nodes,
        "admission_seconds": args.admission_seconds,
    }
    sizes = replace(sizes, **{k: v for k, v in overrides.items() if v is not None})
    rows = [row for name in args.only for row in run_section(name, sizes)]
    print(table(rows))
    return 1 if any(figure == "FAILED" for _, figure, _ in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
