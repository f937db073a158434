"""Coverage-guided fuzz harnesses (atheris/libFuzzer) for every parser of untrusted input.

Each harness module has `one_input(data: bytes) -> None`: the contract of its target, as an
assertion. The target either returns a value that survives its own round trip and every use
the verifier makes of it, or raises the project's typed error for bad input (ParseError and
its subclasses); any other exception, a hang or unbounded memory is a finding. `python -m fuzz`
runs them under libFuzzer; tests/test_fuzz_corpus.py replays every corpus file through the
same functions without instrumentation, which keeps found crashes fixed. Nothing here imports
the code under test at package import, so atheris can instrument it when a harness starts.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from attest.errors import AttestError
    from attest.reasons import Reason

HARNESSES: Final = ("eventlog", "ima", "tpmstructs", "policy", "admission", "containerlog")
ROOT: Final = Path(__file__).resolve().parent
CORPUS: Final = ROOT / "corpus"
CRASHES: Final = ROOT / "crashes"


def entry(name: str) -> Callable[[bytes], None]:
    """The harness's entry function, importing the harness (and with it its target)."""
    if name not in HARNESSES:
        raise ValueError(f"no harness {name!r} (there are: {', '.join(HARNESSES)})")
    fn: Callable[[bytes], None] = importlib.import_module(f"fuzz.{name}").one_input
    return fn


def expect_code(error: AttestError, *codes: Reason) -> None:
    """A typed refusal is within the contract only with the target's own reason codes."""
    if error.code not in codes:
        raise AssertionError(f"refused with {error.code}, expected one of {codes}: {error}") from error
