"""The agent's memory: `attest-agent run` against a software TPM and a verifier, its VmRSS and
VmHWM after N rounds, and what its imports cost.

One swtpm (its EK certified by the harness's local CA, booted through the good simulated
measured boot, IMA started) and one `attest-verifier serve` on SQLite with a policy made from
that boot, both set up with bench.e2e's functions. The agent is the real program (the
`attest-agent` console script, its own process): it enrolls, then attests every --interval
seconds; after --rounds trusted verdicts its /proc/PID/status is read, then it gets SIGTERM.

The import breakdown runs in fresh interpreters: the RSS each of the agent's modules adds when
imported in the order the daemon imports them, and the third-party packages loaded in the end.
Memory figures do not depend on the machine's load, unlike rates.

    python -m bench.agent_memory [--rounds 20] [--interval 0.2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Final

from attest import pki
from bench.__main__ import Row, cpu_model
from bench.e2e import BENCH_OPTIONS, _client, good_policy, make_nodes, rss_kb, start_verifier

AGENT: Final = Path(sys.executable).with_name("attest-agent")
TARGET_RSS_MB: Final = 50.0
ROUND_TIMEOUT: Final = 60.0  # per trusted verdict, enrollment included in the first
# The agent's modules in the order `attest-agent run` imports them (cli first, the daemon's
# own imports in its import order, the daemon last): each step's RSS is charged to it.
AGENT_MODULES: Final = (
    "attest.agent.cli",
    "attest.agent.bindkeys",
    "attest.agent.client",
    "attest.agent.logs",
    "attest.agent.measure",
    "attest.agent.state",
    "attest.agent.daemon",
)
_PROBE: Final = """
import importlib, json, sys
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0
steps = [("python", rss())]
for name in sys.argv[1:]:
    importlib.import_module(name)
    steps.append((name, rss()))
tops = {m.partition(".")[0] for m in sys.modules}
third = sorted(t for t in tops if "site-packages" in (getattr(sys.modules.get(t), "__file__", None) or ""))
print(json.dumps({"steps": steps, "third_party": third}))
"""


def bytecode_env(cache: Path) -> dict[str, str]:
    """This environment for an agent process, with the project's bytecode cached under `cache`
    and the cache filled: an installed agent runs from .pyc files, while compiling a module
    from source costs memory the agent would not spend (PYTHONDONTWRITEBYTECODE, set in some
    development shells, forces that)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATTEST_AGENT_")}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(cache)
    warm = f"import {', '.join(AGENT_MODULES)}"
    subprocess.run([sys.executable, "-c", warm], env=env, check=True, timeout=120)
    return env


def import_breakdown(modules: tuple[str, ...] = AGENT_MODULES) -> tuple[list[tuple[str, int]], list[str]]:
    """(module, kB of RSS its import added) in import order, the first row being the bare
    interpreter's RSS; and the third-party packages loaded once all are imported."""
    with tempfile.TemporaryDirectory(prefix="attest-agent-pycache-") as cache:
        out = subprocess.run(
            [sys.executable, "-c", _PROBE, *modules],
            env=bytecode_env(Path(cache)),
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        ).stdout
    data = json.loads(out)
    steps: list[tuple[str, int]] = [(str(n), int(kb)) for n, kb in data["steps"]]
    deltas = [steps[0]] + [(n, kb - steps[i][1]) for i, (n, kb) in enumerate(steps[1:])]
    return deltas, list(data["third_party"])


def run_agent(rounds: int, interval: float) -> tuple[int, int, int]:
    """(VmRSS kB, VmHWM kB, trusted verdicts) of `attest-agent run` after `rounds` trusted verdicts."""
    os.environ.setdefault("TSS2_LOG", "all+NONE")
    directory = Path(tempfile.mkdtemp(prefix="attest-agent-memory-"))
    try:
        with ExitStack() as stack:
            tls = directory / "pki"
            pki.init_verifier_pki(tls, ["localhost"], ["127.0.0.1"])
            nodes, ek_ca = make_nodes(directory, 1, stack)
            node = nodes[0]
            database = f"sqlite:///{directory / 'verifier.db'}"
            verifier = start_verifier(directory, "verifier", database, ek_ca, tls, options=BENCH_OPTIONS)
            stack.callback(verifier.stop)
            with _client(tls, token=True) as c:
                resp = c.post(f"{verifier.url}/v1/admin/policies", json={"text": good_policy(node)})
                if resp.status_code != 200:
                    raise RuntimeError(f"applying the policy failed: {resp.status_code} {resp.text}")
            spec = node.spec(verifier.url, tls / pki.CA_CERT, "memory")
            argv = [str(AGENT), "run", "--interval", str(interval), "--log-format", "json"]
            for option, key in [
                ("--verifier", "verifier"),
                ("--ca-cert", "ca_cert"),
                ("--node", "node"),
                ("--tcti", "tcti"),
                ("--state-dir", "state_dir"),
                ("--eventlog", "eventlog"),
                ("--ima", "ima"),
                ("--boot-id-file", "boot_id"),
                ("--container-log", "container_log"),
            ]:
                argv += [option, str(spec[key])]
            env = bytecode_env(directory / "pycache")
            agent = subprocess.Popen(
                argv, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env
            )
            stack.callback(_stop, agent)
            return (*_watch(agent, rounds), rounds)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _watch(agent: subprocess.Popen[str], rounds: int) -> tuple[int, int]:
    """Read the agent's log until `rounds` trusted verdicts, then its VmRSS and VmHWM (kB).
    A reader thread keeps the deadline even if the agent falls silent."""
    assert agent.stderr is not None
    stream = agent.stderr
    seen: list[str] = []
    done = threading.Event()
    trusted = 0

    def read() -> None:
        nonlocal trusted
        for line in stream:
            seen.append(line)
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("event") == "verdict" and event.get("trusted") is True:
                trusted += 1
                if trusted >= rounds:
                    done.set()
                    return
            elif event.get("event") == "verdict":
                done.set()  # untrusted: the benchmark's setup is wrong
                return
        done.set()

    threading.Thread(target=read, daemon=True).start()
    if not done.wait(ROUND_TIMEOUT * rounds) or trusted < rounds:
        raise RuntimeError(f"the agent made {trusted} of {rounds} trusted rounds:\n{''.join(seen[-20:])}")
    return rss_kb(agent.pid), rss_kb(agent.pid, "VmHWM")


def _stop(agent: subprocess.Popen[str]) -> None:
    if agent.poll() is None:
        agent.send_signal(signal.SIGTERM)
        try:
            agent.wait(timeout=15)
        except subprocess.TimeoutExpired:
            agent.kill()
            agent.wait()


def table_rows(rounds: int = 10, interval: float = 0.2) -> list[Row]:
    rss, hwm, done = run_agent(rounds, interval)
    target = f"<= {TARGET_RSS_MB:.0f} MB"
    rows: list[Row] = [
        (f"agent (attest-agent run, {done} rounds): VmRSS", f"{rss / 1024:.1f} MB", target),
        (f"agent (attest-agent run, {done} rounds): VmHWM", f"{hwm / 1024:.1f} MB", target),
    ]
    steps, _ = import_breakdown()
    rows.append(("agent imports: interpreter", f"{steps[0][1] / 1024:.1f} MB", ""))
    rows += [(f"agent imports: + {name}", f"{kb / 1024:.1f} MB", "") for name, kb in steps[1:]]
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.agent_memory", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--rounds", type=int, default=20, help="trusted rounds before reading (default %(default)s)"
    )
    p.add_argument(
        "--interval", type=float, default=0.2, help="the agent's --interval, seconds (default %(default)s)"
    )
    args = p.parse_args(argv)
    if args.rounds < 1 or not 0 < args.interval < 3600:
        p.error("--rounds must be >= 1 and --interval in (0, 3600)")
    t0 = time.monotonic()
    rows = table_rows(args.rounds, args.interval)
    _, third = import_breakdown()
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores ({time.monotonic() - t0:.0f} s)")
    width = max(len(r[0]) for r in rows)
    fig = max(len(r[1]) for r in rows)
    for m, f, target in rows:
        print(f"{m:<{width}}  {f:>{fig}}  {target}".rstrip())
    print(f"third-party packages the agent imports: {', '.join(third)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
