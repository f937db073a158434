"""An open connection to a TPM, and the discipline for transient handles.

swtpm and /dev/tpm0 have no resource manager: a handle left loaded stays loaded until the
TPM restarts, and three of them exhaust a typical TPM's object slots. Every transient object
or session goes through `Tpm.transient`, which flushes it when the block ends, error or not.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from types import TracebackType
from typing import Any

from attest.errors import TpmError

DEFAULT_TCTI = "device:/dev/tpmrm0"


def _quiet_tss_logging() -> None:
    # tpm2-tss prints its own errors to stderr for conditions we handle (a missing NV index,
    # say). Respect an operator's explicit TSS2_LOG, otherwise keep stderr for our messages.
    os.environ.setdefault("TSS2_LOG", "all+NONE")


def _split_tcti(spec: str) -> tuple[str, str]:
    """ "device:/dev/tpmrm0" -> ("device", "/dev/tpmrm0"); "swtpm:path=/run/s" -> ("swtpm", "path=/run/s")."""
    name, _, conf = spec.partition(":")
    if not name or not name.replace("-", "").isalnum():
        raise TpmError(
            f"TCTI {spec!r}: expected NAME[:CONFIG], e.g. device:/dev/tpmrm0 or swtpm:path=/run/tpm.sock"
        )
    return name, conf


class Tpm:
    """A TPM reached through a TCTI string as tpm2-tools spells it."""

    def __init__(self, tcti: str = DEFAULT_TCTI) -> None:
        _quiet_tss_logging()
        # Imported here so that importing attest.tpm costs nothing until a TPM is used.
        from tpm2_pytss import ESAPI, TSS2_Exception
        from tpm2_pytss.TCTILdr import TCTILdr

        name, conf = _split_tcti(tcti)
        self.tcti = tcti
        try:
            self._tcti = TCTILdr(name, conf)
        except TSS2_Exception as e:
            raise TpmError(f"cannot open TPM through TCTI {tcti!r}: {e}") from None
        try:
            self.esapi: Any = ESAPI(self._tcti)
        except TSS2_Exception as e:
            self._tcti.finalize()
            raise TpmError(f"TPM at {tcti!r} does not answer: {e}") from None

    def close(self) -> None:
        self.esapi.close()
        self._tcti.finalize()

    def __enter__(self) -> Tpm:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @contextlib.contextmanager
    def transient(self, handle: Any) -> Iterator[Any]:
        """Yield a loaded object or session handle and flush it afterwards, whatever happens."""
        try:
            yield handle
        finally:
            with contextlib.suppress(Exception):
                self.esapi.flush_context(handle)


@contextlib.contextmanager
def tpm_errors(action: str) -> Iterator[None]:
    """Turn tpm2-pytss exceptions into TpmError with what we were doing."""
    from tpm2_pytss import TSS2_Exception

    try:
        yield
    except TSS2_Exception as e:
        raise TpmError(f"{action}: {e}") from None
