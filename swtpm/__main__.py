"""`python -m swtpm`: provision, start, stop and boot software TPMs from a shell (the demo, end-to-end tests).

A node directory DIR holds `ca/` (unless --ca names a shared one), `state/` (the TPM) and
`swtpm.json` (where the running TPM's sockets are, so `stop` and `boot` find it again).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from attest.cli._common import EXIT_OK, ArgumentParser, run
from attest.errors import UsageError
from swtpm.imalog import DEFAULT_FILES, simulate_ima
from swtpm.instance import SwtpmInstance
from swtpm.measuredboot import PROFILES, boot, named_profile
from swtpm.provision import provision_ca, provision_tpm

PROG = "python -m swtpm"
_RUN_FILE = "swtpm.json"
_SOCKET_PATH_BUDGET = 100


def _state_dir(node: Path) -> Path:
    state = node / "state"
    if not (state / "tpm2-00.permall").is_file():
        raise UsageError(f"{node}: not provisioned (run: {PROG} provision {node})")
    return state


def _instance(node: Path) -> SwtpmInstance:
    """The node's TPM, adopting a running swtpm that an earlier command started."""
    state = _state_dir(node)
    record = node / _RUN_FILE
    if record.is_file():
        run_dir = Path(json.loads(record.read_text())["run_dir"])
    elif len(str(node.resolve() / "run" / "swtpm.sock.ctrl").encode()) <= _SOCKET_PATH_BUDGET:
        run_dir = node.resolve() / "run"
    else:
        # Deep directories cannot hold Unix sockets; swtpm.json remembers where they went instead.
        run_dir = Path(tempfile.mkdtemp(prefix="swtpm-"))
    return SwtpmInstance.attach(state, run_dir)


def _remember(node: Path, inst: SwtpmInstance) -> None:
    doc = {"run_dir": str(inst.run_dir), "tcti": inst.tcti, "pid": inst.pid}
    (node / _RUN_FILE).write_text(json.dumps(doc, indent=2) + "\n")
    inst.detach()


def cmd_provision(args: argparse.Namespace) -> int:
    node = Path(args.dir)
    state = node / "state"
    if state.is_dir() and any(state.iterdir()):
        raise UsageError(f"{node}: already provisioned ({state} is not empty)")
    ca = provision_ca(Path(args.ca) if args.ca else node / "ca")
    tpm = provision_tpm(state, ca)
    print(f"state: {tpm.state_dir}")
    print(f"root CA: {ca.root_cert}")
    print(f"intermediate CA: {ca.intermediate_cert}")
    return EXIT_OK


def cmd_start(args: argparse.Namespace) -> int:
    node = Path(args.dir)
    inst = _instance(node)
    if not inst.running:
        inst.start(startup=not args.no_startup)
    _remember(node, inst)
    print(inst.tcti)
    return EXIT_OK


def cmd_stop(args: argparse.Namespace) -> int:
    node = Path(args.dir)
    record = node / _RUN_FILE
    if not record.is_file():
        return EXIT_OK
    inst = _instance(node)
    inst.stop()
    run_dir = inst.run_dir
    record.unlink()
    if run_dir != node.resolve() / "run":
        shutil.rmtree(run_dir, ignore_errors=True)
    return EXIT_OK


def cmd_boot(args: argparse.Namespace) -> int:
    node = Path(args.dir)
    try:
        profile = named_profile(args.profile)
        if args.startup_locality:
            profile = profile.with_startup_locality(args.startup_locality)
    except ValueError as e:
        raise UsageError(str(e)) from None
    inst = _instance(node)
    simulated = boot(inst, profile)
    Path(args.eventlog).write_bytes(simulated.log)
    if args.ima:
        Path(args.ima).write_text(simulate_ima(inst.tcti, DEFAULT_FILES).text())
    _remember(node, inst)
    print(inst.tcti)
    return EXIT_OK


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog=PROG, description="Software TPMs for development and tests.")
    sub = parser.add_subparsers(metavar="COMMAND")

    p = sub.add_parser("provision", help="manufacture a TPM with EK certificates from a local CA")
    p.add_argument("dir", metavar="DIR", help="the node directory (created)")
    p.add_argument("--ca", metavar="CADIR", help="a CA directory to share between nodes (default DIR/ca)")
    p.set_defaults(handler=cmd_provision)

    p = sub.add_parser("start", help="start the TPM and print its TCTI")
    p.add_argument("dir", metavar="DIR")
    p.add_argument("--no-startup", action="store_true", help="leave the TPM waiting for TPM2_Startup")
    p.set_defaults(handler=cmd_start)

    p = sub.add_parser("stop", help="stop the TPM (orderly shutdown)")
    p.add_argument("dir", metavar="DIR")
    p.set_defaults(handler=cmd_stop)

    p = sub.add_parser("boot", help="power-cycle the TPM and simulate a measured boot; print the TCTI")
    p.add_argument("dir", metavar="DIR")
    p.add_argument("--profile", choices=PROFILES, default="good")
    p.add_argument("--startup-locality", type=int, choices=(0, 3), default=0)
    p.add_argument("--eventlog", metavar="OUT", required=True, help="write the binary TCG event log here")
    p.add_argument("--ima", metavar="OUT", help="also start IMA and write its ASCII measurement list here")
    p.set_defaults(handler=cmd_boot)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run(PROG, build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
