"""What every command-line program here shares: exit codes, one-line errors, JSON output."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn, TypeAlias

from attest.errors import AttestError, TpmError, UsageError

# DESIGN 8: 0 success or trusted, 1 appraised and untrusted, 2 unusable input or usage.
EXIT_OK = 0
EXIT_UNTRUSTED = 1
EXIT_USAGE = 2

Handler = Callable[[argparse.Namespace], int]
SubParsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


class ArgumentParser(argparse.ArgumentParser):
    """argparse that reports usage errors as one line and exit code 2, like every other error."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def print_json(doc: Any) -> None:
    json.dump(doc, sys.stdout, indent=2, sort_keys=False)
    sys.stdout.write("\n")


def read_file(path: str, limit: int = 256 * 1024 * 1024) -> bytes:
    """Read an input file, refusing what is not a regular readable file or is absurdly large."""
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except IsADirectoryError:
        raise UsageError(f"{path}: is a directory") from None
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file") from None
    except PermissionError:
        raise UsageError(f"{path}: permission denied") from None
    if len(data) > limit:
        raise UsageError(f"{path}: larger than {limit} bytes")
    return data


def run(prog: str, parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> int:
    """Parse, dispatch, and turn every error into a one-line message and an exit code."""
    args = parser.parse_args(argv)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return handler(args)
    except (UsageError, TpmError) as e:
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
