"""The keys the agent vouches for (`--bind-key`): their fingerprints go into each challenge
request, so the verifier's nonce, and the quote over it, commit to them (docs/kubernetes.md).

A file may hold PEM private keys, public keys, certificates or certificate requests, in any mix
(the kubelet's `kubelet-client-current.pem` holds its certificate and key: one fingerprint).
Files are read every round, because the kubelet replaces them: a missing file is skipped
quietly (which one exists depends on how far the kubelet's TLS bootstrap got), an unreadable or
unparsable one is skipped and reported. Never fatal: a round without a binding still attests.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

MAX_KEY_FILE: Final = 1024 * 1024
_PEM: Final = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n.*?-----END \1-----", re.S)


def _public_key(label: bytes, block: bytes) -> PublicKeyTypes | None:
    if label.endswith(b"PRIVATE KEY"):
        return serialization.load_pem_private_key(block, password=None).public_key()
    if label == b"PUBLIC KEY":
        return serialization.load_pem_public_key(block)
    if label == b"CERTIFICATE":
        return x509.load_pem_x509_certificate(block).public_key()
    if label in (b"CERTIFICATE REQUEST", b"NEW CERTIFICATE REQUEST"):
        return x509.load_pem_x509_csr(block).public_key()
    return None  # parameters and the like: not a key


def fingerprints_of(data: bytes) -> list[str]:
    """Hex SHA-256 of the SubjectPublicKeyInfo of every key in a PEM file, deduplicated, in order.
    ValueError when the file holds no key or a block does not parse."""
    found: list[str] = []
    for match in _PEM.finditer(data):
        try:
            key = _public_key(match.group(1), match.group(0))
        except (ValueError, TypeError, UnsupportedAlgorithm) as e:
            raise ValueError(f"{match.group(1).decode()} block: {e}") from None
        if key is None:
            continue
        der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        fingerprint = hashlib.sha256(der).hexdigest()
        if fingerprint not in found:
            found.append(fingerprint)
    if not found:
        raise ValueError("no PEM key, certificate or certificate request in it")
    return found


def read_fingerprints(paths: Iterable[Path]) -> tuple[list[str], dict[str, str]]:
    """(fingerprints of every key found, {path: why it was skipped} for files that exist but
    could not be used). Missing files are neither."""
    found: list[str] = []
    problems: dict[str, str] = {}
    for path in paths:
        try:
            with path.open("rb") as f:
                data = f.read(MAX_KEY_FILE + 1)
        except FileNotFoundError:
            continue
        except OSError as e:
            problems[str(path)] = e.strerror or str(e)
            continue
        if len(data) > MAX_KEY_FILE:
            problems[str(path)] = f"larger than {MAX_KEY_FILE} bytes"
            continue
        try:
            found += [f for f in fingerprints_of(data) if f not in found]
        except ValueError as e:
            problems[str(path)] = str(e)
    return found, problems
