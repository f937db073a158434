"""The agent's HTTP client for the verifier's agent API (attest.wire, prefix /v1).

TLS only, and the server certificate must chain to the CA the operator configured: the
verifier decides whether this node may run pods, so an agent talking to anyone else would
hand its evidence, and its enrollment, to an impostor. There is deliberately no way to turn
verification off.

Every failure becomes a `VerifierError` whose type says what the agent should do about it:
retry later (`transient`), enroll again (`NotEnrolled`), or give up this round and tell the
operator (the other 4xx answers).
"""

from __future__ import annotations

import datetime as dt
import email.message
import email.utils
import http.client
import select
import socket
import ssl
import urllib.parse
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from attest import __version__
from attest.errors import UsageError
from attest.reasons import Reason
from attest.tlspolicy import harden
from attest.wire import (
    API_PREFIX,
    ActivateRequest,
    Challenge,
    ChallengeRequest,
    EnrollChallenge,
    EnrollRequest,
    EnrollResult,
    ErrorOut,
    Evidence,
    ReasonOut,
    VerdictOut,
)

DEFAULT_TIMEOUT = 30.0
# Connecting should take milliseconds: a verifier that does not accept within a few seconds
# is down, and the agent is better off backing off than waiting out a long timeout.
CONNECT_TIMEOUT = 5.0
_ERROR_BODY_MAX = 200
_OK = 200

_M = TypeVar("_M", bound=BaseModel)


class VerifierError(Exception):
    """The verifier could not be asked, or refused. `transient`: the same request may succeed
    later; `retry_after`: the seconds the verifier asked us to wait, if it said."""

    transient = False

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


class VerifierUnreachable(VerifierError):
    """No HTTP answer: refused, reset, name not resolved, timed out."""

    transient = True


class VerifierTlsError(VerifierError):
    """The server's certificate does not chain to the configured CA or names another host.
    Retried, since certificates get rotated, but never accepted."""

    transient = True


class VerifierUnavailable(VerifierError):
    """5xx or 429: the verifier is there but cannot serve now (its database is down, say)."""

    transient = True


class ProtocolError(VerifierError):
    """An answer that is not what the API promises: a proxy in the way, or a version mismatch."""

    transient = True


class VerifierRejected(VerifierError):
    """A 4xx answer: the verifier understood and refused. `code` is its stable ErrorOut code;
    `reasons` are every check the evidence failed when it was refused before a verdict (422)."""

    def __init__(self, status: int, code: str, message: str, reasons: Sequence[ReasonOut] = ()) -> None:
        super().__init__(f"{message} [{code}, HTTP {status}]")
        self.status = status
        self.code = code
        self.reason = message
        self.reasons = tuple(reasons)


class NotEnrolled(VerifierRejected):
    """The verifier has no AK bound to this node (never enrolled, or its database was reset)."""


def tls_context(ca_cert: Path) -> ssl.SSLContext:
    """A client context trusting `ca_cert` alone (not the system store): the verifier's CA is
    the operator's, and a public CA vouching for some host of that name proves nothing."""
    try:
        ctx = ssl.create_default_context(cafile=str(ca_cert))
    except FileNotFoundError:
        raise UsageError(f"--ca-cert {ca_cert}: no such file") from None
    except (ssl.SSLError, OSError) as e:
        raise UsageError(f"--ca-cert {ca_cert}: not a readable PEM CA certificate ({e})") from None
    return harden(ctx)


def check_verifier_url(url: str) -> str:
    """The base URL without a trailing slash; https only, with a host and nothing after it."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "https":
        raise UsageError(f"verifier URL {url!r} must start with https:// (evidence never travels in clear)")
    if not parts.hostname or parts.query or parts.fragment or parts.username or parts.password:
        raise UsageError(f"verifier URL {url!r}: expected https://HOST[:PORT][/PATH]")
    try:
        parts.port  # noqa: B018 - validates the port
    except ValueError:
        raise UsageError(f"verifier URL {url!r}: bad port") from None
    return url.rstrip("/")


def _retry_after(value: str | None) -> float | None:
    """RFC 9110 Retry-After: delay-seconds or an HTTP-date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, (when - dt.datetime.now(dt.UTC)).total_seconds())


def _segment(value: str) -> str:
    return urllib.parse.quote(value, safe="")


def _tls_cause(e: BaseException) -> ssl.SSLError | None:
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, ssl.SSLError):
            return cur
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return None


def _error_from(status: int, reason: str, headers: email.message.Message, body: bytes) -> VerifierError:
    reasons: list[ReasonOut] = []
    try:
        err = ErrorOut.model_validate_json(body)
        code, message, reasons = err.code, err.message, err.reasons
    except ValidationError:
        text = body.decode("utf-8", "replace").strip().replace("\n", " ")[:_ERROR_BODY_MAX]
        code, message = f"http_{status}", text or reason
    if status == 429 or status >= 500:
        return VerifierUnavailable(
            f"verifier unavailable: {message} [{code}, HTTP {status}]",
            retry_after=_retry_after(headers.get("retry-after")),
        )
    if status == 404 and code == Reason.AK_NOT_BOUND.value:
        return NotEnrolled(status, code, message)
    if 400 <= status < 500:
        return VerifierRejected(status, code, message, reasons)
    return ProtocolError(f"unexpected HTTP {status} from the verifier: {message}")


def _closed_by_peer(sock: socket.socket) -> bool:
    """An idle kept-alive connection with something to read has been closed by the server (or
    carries junk): either way it must not carry the next request."""
    readable, _, _ = select.select([sock], [], [], 0)
    return bool(readable)


class VerifierClient:
    """One verifier, one connection pool. Use as a context manager, or close()."""

    def __init__(self, base_url: str, ca_cert: Path, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.base_url = check_verifier_url(base_url)
        parts = urllib.parse.urlsplit(self.base_url)
        self._host = parts.hostname or ""
        self._port = parts.port or 443
        self._prefix = parts.path + API_PREFIX
        self._context = tls_context(ca_cert)
        self._timeout = timeout
        self._headers = {"user-agent": f"attest-agent/{__version__}", "accept": "application/json"}
        # http.client reads no proxy settings from the environment, follows no redirects and
        # keeps the connection open between rounds unless the server closes it.
        self._conn: http.client.HTTPSConnection | None = None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> VerifierClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _connection(self) -> http.client.HTTPSConnection:
        conn = self._conn
        if conn is not None and (conn.sock is None or _closed_by_peer(conn.sock)):
            self.close()
            conn = None
        if conn is None:
            connect = min(self._timeout, CONNECT_TIMEOUT)
            conn = http.client.HTTPSConnection(self._host, self._port, timeout=connect, context=self._context)
            conn.connect()
            self._conn = conn
        conn.sock.settimeout(self._timeout)
        return conn

    def _exchange(self, path: str, content: bytes | None) -> tuple[http.client.HTTPResponse, bytes]:
        headers = dict(self._headers)
        if content is not None:
            headers["content-type"] = "application/json"
        try:
            conn = self._connection()
            conn.request("POST", self._prefix + path, body=content, headers=headers)
            resp = conn.getresponse()
            return resp, resp.read()
        except BaseException as e:
            self.close()  # a connection left mid-exchange cannot carry another request
            if isinstance(e, TimeoutError):
                raise VerifierUnreachable(f"{self.base_url}: timed out ({type(e).__name__})") from None
            tls = _tls_cause(e)
            if tls is not None:
                detail = getattr(tls, "verify_message", None) or tls.reason or str(tls)
                raise VerifierTlsError(f"{self.base_url}: TLS failed: {detail}") from None
            if isinstance(e, (OSError, http.client.HTTPException)):
                raise VerifierUnreachable(f"{self.base_url}: {e or type(e).__name__}") from None
            raise

    def _post(self, path: str, body: BaseModel | None, answer: type[_M]) -> _M:
        resp, content = self._exchange(path, None if body is None else body.model_dump_json().encode())
        if resp.status != _OK:
            raise _error_from(resp.status, resp.reason, resp.headers, content)
        try:
            return answer.model_validate_json(content)
        except ValidationError as e:
            first = e.errors()[0] if e.errors() else {"msg": str(e), "loc": ()}
            where = ".".join(str(p) for p in first["loc"]) or "body"
            raise ProtocolError(
                f"{self.base_url}{API_PREFIX}{path}: not a {answer.__name__}: {where}: {first['msg']}"
            ) from None

    def enroll(self, request: EnrollRequest) -> EnrollChallenge:
        return self._post("/enroll", request, EnrollChallenge)

    def activate(self, enrollment_id: str, request: ActivateRequest) -> EnrollResult:
        path = f"/enroll/{_segment(enrollment_id)}/activate"
        return self._post(path, request, EnrollResult)

    def challenge(self, node: str, bind: Sequence[str] = ()) -> Challenge:
        """A nonce; with `bind` (key fingerprints) one that commits to those keys."""
        body = ChallengeRequest(bind=list(bind)) if bind else None
        return self._post(f"/nodes/{_segment(node)}/challenge", body, Challenge)

    def evidence(self, node: str, evidence: Evidence) -> VerdictOut:
        return self._post(f"/nodes/{_segment(node)}/evidence", evidence, VerdictOut)
