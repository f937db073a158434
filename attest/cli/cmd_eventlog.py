"""attestctl eventlog: inspect and replay a TCG PC Client (UEFI measured boot) event log."""

from __future__ import annotations

import argparse
import sys
import warnings
from typing import Any

from attest.cli._common import EXIT_OK, SubParsers, print_json, read_file, show_help
from attest.verify import efi
from attest.verify.eventlog import (
    MAX_LOG_SIZE,
    Event,
    EventLog,
    Replay,
    SpecIdEvent,
    StartupLocality,
    parse,
    replay,
)
from attest.verify.workarounds import WORKAROUNDS, by_name

_LOG_HELP = "binary event log, e.g. /sys/kernel/security/tpm0/binary_bios_measurements"

DESCRIPTION = """\
Read the boot event log the firmware, shim and boot loader wrote while measuring the boot
into the TPM's PCRs. Both log formats are read: crypto-agile (a "Spec ID Event03" header,
then one digest per PCR bank) and the older SHA-1-only format.

A digest covers only what was measured; an event's type and data are not covered by it.
`show` therefore marks an event verified only when its data hashes to its digest in every
bank, and `replay` recomputes the PCRs a TPM quote can be compared with.
"""

SHOW_DESCRIPTION = """\
Print every event: index, PCR, type, digests, decoded data and whether the data is verified.

verified=yes: the data hashes to the digest in every bank, so what it says was measured.
  "(variable-data)": only the UEFI variable's value is bound, not its name (EDK2-style
  EV_EFI_VARIABLE_BOOT); "(grub-string)": GRUB's command text is bound, not its label.
verified=no: the data is a description only. For images and firmware blobs this is normal
  (the digest is the image's hash: compare the digest with reference values); for other
  types the data must not be trusted.
verified=-: EV_NO_ACTION, never extended into a PCR, so never evidence of anything.
"""

REPLAY_DESCRIPTION = """\
Recompute every PCR 0-23 of every bank the log carries by extending each event's digest,
and print the result. PCRs without events stay at their reset value (zeros; ones for
17-22); PCR 0 starts at the locality of a StartupLocality event (3, or 4 for an H-CRTM).

Compare the output with a quote (tpm2_pcrread, tpm2_quote): equal values prove the sequence
of digests in the log. --workaround replays as known-buggy firmware extended the PCRs; the
names of the workarounds actually applied are listed in the output.

JSON: {"pcrs": {"sha1": {"0": "hex", ...}, "sha256": {...}}, "workarounds": [...]}
"""


def register(sub: SubParsers) -> None:
    parser = sub.add_parser(
        "eventlog",
        help="inspect and replay a UEFI measured-boot event log",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(handler=lambda _args: show_help(parser))
    commands = parser.add_subparsers(title="subcommands", metavar="SUBCOMMAND")

    show = commands.add_parser(
        "show",
        help="print the parsed events",
        description=SHOW_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    show.add_argument("file", metavar="FILE", help=_LOG_HELP)
    show.add_argument("--json", action="store_true", help="print one JSON document (raw and decoded data)")
    show.set_defaults(handler=_show)

    rep = commands.add_parser(
        "replay",
        help="recompute the PCR values the log produces",
        description=REPLAY_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    rep.add_argument("file", metavar="FILE", help=_LOG_HELP)
    rep.add_argument("--json", action="store_true", help="print one JSON document")
    rep.add_argument(
        "--workaround",
        action="append",
        default=[],
        metavar="NAME",
        choices=[w.name for w in WORKAROUNDS],
        help="replay as firmware with this known bug did (repeatable): "
        + ", ".join(w.name for w in WORKAROUNDS),
    )
    rep.set_defaults(handler=_replay)


def _load(path: str) -> EventLog:
    return parse(read_file(path, limit=MAX_LOG_SIZE))


def _show(args: argparse.Namespace) -> int:
    log = _load(args.file)
    with warnings.catch_warnings():
        # Real firmware certificates often break RFC 5280 in ways cryptography warns about;
        # the output shows what was parsed, the warnings would only bury it.
        warnings.simplefilter("ignore")
        if args.json:
            print_json(_log_json(log))
        else:
            _print_table(log)
    return EXIT_OK


def _log_json(log: EventLog) -> dict[str, Any]:
    return {
        "format": log.format.value,
        "banks": [
            {"name": b.name, "alg_id": b.alg_id, "size": b.size, "replayable": b.replayable}
            for b in log.banks
        ],
        "startup_locality": log.startup_locality,
        "events": [e.to_json() for e in log.events],
    }


def _print_table(log: EventLog) -> None:
    banks = ", ".join(b.name if b.replayable else f"{b.name} (not replayable)" for b in log.banks)
    print(f"{log.format.value} log, banks {banks}, {len(log.events)} events")
    print(f"{'#':>5}  {'PCR':>3}  {'TYPE':<32}  {'VERIFIED':<19}  DATA")
    for e in log.events:
        pcr = "-" if e.pcr >= 0x100 else str(e.pcr)  # EV_NO_ACTION may name no PCR (0xFFFFFFFF)
        print(f"{e.index:>5}  {pcr:>3}  {e.type_name:<32}  {_verified(e):<19}  {_summary(e)}")
        for name, digest in e.digests.items():
            print(f"{'':>12}{name:<8} {digest.hex()}")


def _verified(e: Event) -> str:
    if e.binding.value == "none":
        return "-"
    if e.coverage is None:
        return "no"
    return "yes" if e.coverage.value == "event-data" else f"yes ({e.coverage.value})"


def _summary(e: Event) -> str:
    decoded = e.decoded
    if decoded is None:
        return _clip(e.data.hex())
    return _clip(_describe(decoded))


def _describe(d: efi.Decoded) -> str:
    if isinstance(d, efi.Text):
        return repr(d.text)
    if isinstance(d, efi.UefiVariable):
        value = "(empty)" if not d.data else _describe(d.value) if d.value is not None else d.data.hex()
        return f"{d.name} [{d.guid}] = {value}"
    if isinstance(d, efi.Boolean):
        return "absent" if d.value is None else str(d.value).lower()
    if isinstance(d, efi.SignatureDatabase):
        entries = [
            s.certificate.subject or s.certificate.sha256 if s.certificate else s.data.hex()
            for sl in d.lists
            for s in sl.signatures
        ]
        return f"{len(entries)} entries: " + "; ".join(entries)
    if isinstance(d, efi.SignatureData):
        return d.certificate.subject or d.certificate.sha256 if d.certificate else d.data.hex()
    if isinstance(d, efi.Certificate):
        return d.subject or d.sha256
    if isinstance(d, efi.BootOrder):
        return ",".join(d.entries)
    if isinstance(d, efi.LoadOption):
        return f"{d.description!r} {d.device_paths[0] if d.device_paths else ''}"
    if isinstance(d, efi.ImageLoad):
        return d.device_path if d.device_path is not None else f"(device path {d.device_path_raw.hex()})"
    if isinstance(d, efi.FirmwareBlob):
        return f"base 0x{d.base:x} length 0x{d.length:x}" + (f" {d.description!r}" if d.description else "")
    if isinstance(d, efi.Separator):
        return "error" if d.error else "ok"
    if isinstance(d, efi.GptData):
        return f"disk {d.disk_guid}, {len(d.partitions)} partitions"
    if isinstance(d, SpecIdEvent):
        algorithms = " ".join(f"{name}/{size}" for name, size in d.algorithms)
        return f"Spec ID Event03 {d.spec_version}: {algorithms}"
    if isinstance(d, StartupLocality):
        return f"StartupLocality {d.locality}"
    if isinstance(d, efi.Undecodable):
        return f"(undecodable: {d.error})"
    return _compact(d.to_json())


def _compact(doc: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in doc.items() if k != "kind")


def _clip(text: str, width: int = 100) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def _replay(args: argparse.Namespace) -> int:
    log = _load(args.file)
    result: Replay = replay(log, [by_name(n) for n in dict.fromkeys(args.workaround)])
    for bank in result.unreplayable:
        print(
            f"attestctl: warning: bank {bank} uses an algorithm this verifier cannot compute; not replayed",
            file=sys.stderr,
        )
    if args.json:
        print_json(result.to_json())
        return EXIT_OK
    print("workarounds applied: " + (", ".join(result.workarounds) or "none"))
    for bank, values in result.pcrs.items():
        print(f"{bank}:")
        for index, value in values.items():
            print(f"  {index:>2}  {value.hex()}")
    return EXIT_OK
