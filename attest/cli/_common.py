"""What every command-line program here shares: exit codes, one-line errors, JSON output."""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import sys
import textwrap
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, NoReturn, TextIO, TypeAlias

from attest.errors import AttestError, TpmError, UsageError
from attest.pcrselect import PcrSelection

# DESIGN 8: 0 success or trusted, 1 appraised and untrusted, 2 unusable input or usage.
EXIT_OK = 0
EXIT_UNTRUSTED = 1
EXIT_USAGE = 2

Handler = Callable[[argparse.Namespace], int]
SubParsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


class CommandError(Exception):
    """A failure that is fully explained by its message (the verifier refused, was unreachable):
    printed as one line, exit code 2."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse that reports usage errors as one line and exit code 2, like every other error."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


CONNECTION_HELP = """\
These options may come before the command or after it; each falls back to its environment
variable. Every request is HTTPS, verified against --ca-cert alone (never the system roots,
never disabled), and carries the admin token as a bearer token."""


def add_connection_options(parser: argparse.ArgumentParser, *, top_level: bool = False) -> None:
    """--verifier/--ca-cert/--token-file/--timeout, for the commands that talk to the verifier.

    On subcommands they default to SUPPRESS so that a value given before the command (on the
    top-level parser) is not overwritten by the subcommand's own default."""
    default: Any = None if top_level else argparse.SUPPRESS
    group = parser.add_argument_group("verifier connection", CONNECTION_HELP)
    group.add_argument(
        "--verifier", metavar="URL", default=default, help="https://HOST[:PORT] (env ATTEST_VERIFIER)"
    )
    group.add_argument(
        "--ca-cert",
        metavar="FILE",
        default=default,
        help="PEM CA that issued the verifier's certificate, e.g. DIR/ca.crt of `certs init` "
        "(env ATTEST_CA_CERT)",
    )
    group.add_argument(
        "--token-file",
        metavar="FILE",
        default=default,
        help="file holding the admin bearer token, e.g. DIR/admin.token (env ATTEST_TOKEN_FILE)",
    )
    group.add_argument(
        "--timeout",
        metavar="SECONDS",
        type=float,
        default=default,
        help="per-request timeout (default 30)",
    )


def pcr_selection(text: str) -> PcrSelection:
    """argparse type for a PCR selection such as sha256:0-9 (PcrSelection.parse's syntax)."""
    try:
        return PcrSelection.parse(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def hex_nonce(text: str) -> bytes:
    """argparse type for a nonce given in hex: non-empty bytes."""
    try:
        value = bytes.fromhex(text)
    except ValueError:
        raise argparse.ArgumentTypeError("not hexadecimal") from None
    if not value:
        raise argparse.ArgumentTypeError("empty nonce")
    return value


def positive_int(what: str) -> Callable[[str], int]:
    """argparse type for a whole number from 1 up, such as an ID or a version; anything else is
    refused as "'TEXT' is not `what`"."""

    def check(text: str) -> int:
        if not text.isdigit() or int(text) < 1:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
        return int(text)

    return check


def show_help(parser: argparse.ArgumentParser) -> int:
    """The answer to a command given without its subcommand: the help, on stderr, and exit 2."""
    parser.print_help(sys.stderr)
    return EXIT_USAGE


def print_json(doc: Any) -> None:
    json.dump(doc, sys.stdout, indent=2, sort_keys=False)
    sys.stdout.write("\n")


def write_json_array(out: TextIO, items: Iterable[Any]) -> None:
    """The bytes print_json writes for the list of `items`, written an item at a time so a long
    listing is never held whole."""
    empty = True
    for item in items:
        out.write("[\n" if empty else ",\n")
        out.write(textwrap.indent(json.dumps(item, indent=2), "  "))
        empty = False
    out.write("[]\n" if empty else "\n]\n")


def table_widths(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[int]:
    return [max(len(r[i]) for r in (headers, *rows)) for i in range(len(headers))]


def print_rows(widths: Sequence[int], rows: Iterable[Sequence[str]]) -> None:
    """Left-aligned columns two spaces apart; the last column is not padded, so long reasons
    do not leave trailing blanks. A cell wider than its column pushes the rest of its row."""
    for row in rows:
        cells = [f"{cell:<{w}}" for cell, w in zip(row[:-1], widths, strict=False)]
        print("  ".join([*cells, row[-1]]).rstrip())


def print_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    print_rows(table_widths(headers, rows), (headers, *rows))


def _span(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def describe_time(at: dt.datetime | None, now: dt.datetime | None = None) -> str:
    """'3m ago (2024-05-01 12:00:00Z)' or 'in 57s (...)': relative for a quick read, absolute UTC
    so that it can be matched against logs without knowing the reader's time zone."""
    if at is None:
        return "-"
    seconds = int((at - (now or dt.datetime.now(dt.UTC))).total_seconds())
    relative = "now" if not seconds else f"in {_span(seconds)}" if seconds > 0 else f"{_span(-seconds)} ago"
    return f"{relative} ({at.astimezone(dt.UTC):%Y-%m-%d %H:%M:%S}Z)"


@contextlib.contextmanager
def input_file_errors(name: str) -> Iterator[None]:
    """Turn the usual reasons a named input file cannot be read into a one-line UsageError:
    "NAME: no such file" (is a directory, permission denied)."""
    try:
        yield
    except IsADirectoryError:
        raise UsageError(f"{name}: is a directory") from None
    except FileNotFoundError:
        raise UsageError(f"{name}: no such file") from None
    except PermissionError:
        raise UsageError(f"{name}: permission denied") from None


def read_file(path: str, limit: int = 256 * 1024 * 1024) -> bytes:
    """Read an input file, refusing what is not a regular readable file or is absurdly large."""
    with input_file_errors(path), open(path, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise UsageError(f"{path}: larger than {limit} bytes")
    return data


def run(prog: str, parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> int:
    """Parse, dispatch, and turn every error into a one-line message and an exit code."""
    args = parser.parse_args(argv)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        return show_help(parser)
    try:
        return handler(args)
    except (UsageError, TpmError, CommandError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
    except AttestError as e:
        print(f"{prog}: error: {e.message} [{e.code.value}]", file=sys.stderr)
    except OSError as e:
        print(f"{prog}: error: {e.strerror or e}: {e.filename or ''}".rstrip(": "), file=sys.stderr)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
    except Exception as e:  # fail closed: a one-line message, never a traceback
        print(f"{prog}: internal error: {type(e).__name__}: {e}", file=sys.stderr)
    return EXIT_USAGE
