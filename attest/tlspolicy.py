"""The TLS every party of the system speaks: the verifier, its agents and attestctl.

TLS 1.2 or later; in TLS 1.2 only suites with an ephemeral ECDH key exchange (forward
secrecy) and an AEAD cipher. CBC suites (padding oracles, Lucky13), static RSA key exchange
(no forward secrecy, Bleichenbacher oracles) and finite-field DHE (weak or unvalidated groups)
are refused. TLS 1.3's suites are all AEAD with ephemeral keys and are left at OpenSSL's set.
"""

from __future__ import annotations

import ssl
from typing import Final

MINIMUM_VERSION: Final = ssl.TLSVersion.TLSv1_2
TLS12_CIPHERS: Final = (
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-RSA-CHACHA20-POLY1305",
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256",
)


def harden(ctx: ssl.SSLContext) -> ssl.SSLContext:
    """`ctx` restricted to the versions and TLS 1.2 suites above; returned for chaining."""
    ctx.minimum_version = MINIMUM_VERSION
    ctx.set_ciphers(":".join(TLS12_CIPHERS))
    return ctx
