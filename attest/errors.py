"""Typed errors. Every failure a caller can act on carries a Reason code."""

from __future__ import annotations

from typing import Final

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm

from attest.reasons import Reason

# What `cryptography` raises for bytes that are not the certificate, CSR or key they claim to
# be: ValueError mostly, but an unknown X.509 version or key algorithm is neither, and a name
# attribute of the wrong ASN.1 type is a TypeError when the name is read (fuzz findings). Catch
# it around those calls only: elsewhere a TypeError is a bug.
UNDECODABLE: Final = (ValueError, TypeError, x509.InvalidVersion, UnsupportedAlgorithm)


class AttestError(Exception):
    """Base of every error this package raises on purpose."""

    def __init__(self, code: Reason, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.code.value}: {self.message}"


class ParseError(AttestError):
    """Input bytes or text are not a well-formed structure of the expected kind."""


class VerificationError(AttestError):
    """Input is well formed but a check on it failed."""


class UsageError(Exception):
    """A command line or configuration the program cannot act on (exit code 2)."""


class TpmError(Exception):
    """The TPM refused or failed a command, or could not be reached."""
