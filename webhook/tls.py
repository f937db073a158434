"""The verifier's server TLS, and picking up a renewed certificate without a restart.

cert-manager renews the certificate by rewriting its Secret, and the kubelet then swaps the
mounted files (a symlink swap: new inode) or a plain deployment rewrites them in place (new
mtime). Every TLS handshake looks at both files (two stat calls, microseconds next to the
handshake's signature); when they changed, a new context is built from them, and the
connection and every later one are handed it (sni_callback, called for every ClientHello, with
or without a server name). A pair that does not load (the key does not match the certificate,
a half-written file) is logged once per state of the files and the previous pair stays in
service: a bad renewal never takes the verifier off the air.
"""

from __future__ import annotations

import logging
import os
import ssl
from pathlib import Path

from cryptography import x509

from attest.errors import UsageError
from attest.tlspolicy import harden

log = logging.getLogger("attest-verifier.tls")

_FileState = tuple[int, int, int, int] | None


def _file_state(path: Path) -> _FileState:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)


def _describe(cert: Path) -> str:
    try:
        c = x509.load_pem_x509_certificate(cert.read_bytes())
    except (OSError, ValueError):
        return "unreadable"
    return f"serial {c.serial_number:x}, valid until {c.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}"


class ServerTls:
    """The listening context (`context`) and the pair currently in service."""

    def __init__(self, cert: Path, key: Path) -> None:
        self._cert = cert
        self._key = key
        self._seen = self._state()
        try:
            self._current = self._load()
        except (ssl.SSLError, OSError) as e:
            raise UsageError(f"--tls-cert/--tls-key: not a usable certificate and key ({e})") from None
        self.context = self._current
        self.context.sni_callback = self._on_client_hello

    def describe(self) -> str:
        """The certificate's serial and expiry, for the log."""
        return _describe(self._cert)

    def _state(self) -> tuple[_FileState, _FileState]:
        return _file_state(self._cert), _file_state(self._key)

    def _load(self) -> ssl.SSLContext:
        ctx = harden(ssl.create_default_context(ssl.Purpose.CLIENT_AUTH))
        ctx.load_cert_chain(self._cert, self._key)
        return ctx

    def reload_if_changed(self) -> None:
        state = self._state()
        if state == self._seen:
            return
        self._seen = state
        try:
            fresh = self._load()
        except (ssl.SSLError, OSError) as e:
            log.error(
                "TLS certificate %s and key %s changed but do not load (%s); still serving the previous pair",
                self._cert,
                self._key,
                e,
            )
            return
        self._current = fresh
        log.info("TLS certificate %s renewed: %s", self._cert, self.describe())

    def _on_client_hello(self, conn: ssl.SSLObject, _server_name: str | None, _ctx: ssl.SSLContext) -> None:
        self.reload_if_changed()
        if self._current is not self.context:
            conn.context = self._current
