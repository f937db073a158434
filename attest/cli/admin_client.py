"""attestctl's client for the verifier's admin API (/v1/admin/...).

The connection is HTTPS only, verified against the operator's CA file and nothing else: the
admin token is a bearer credential, so it must never reach a server that merely has some
publicly trusted certificate, nor travel in clear. Redirects are not followed for the same
reason. Every failure becomes a CommandError whose message is one line: the server's own
ErrorOut code and message when it sent one, otherwise what went wrong on the way.
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import ssl
import stat
import sys
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TypeVar

import httpx
from pydantic import BaseModel, TypeAdapter, ValidationError

from attest import __version__
from attest.cli._common import CommandError, input_file_errors
from attest.errors import UsageError
from attest.tlspolicy import harden
from attest.wire import (
    API_PREFIX,
    AuditRecordOut,
    EkEnrollRequest,
    EkOut,
    ErrorOut,
    NodeOut,
    PolicyIn,
    PolicyOut,
    valid_node_name,
)

ENV_VERIFIER = "ATTEST_VERIFIER"
ENV_CA_CERT = "ATTEST_CA_CERT"
ENV_TOKEN_FILE = "ATTEST_TOKEN_FILE"  # noqa: S105 (the variable's name, not a secret)
DEFAULT_TIMEOUT = 30.0
AUDIT_PAGE = 1000
# One word of printable ASCII, as the verifier reads its copy: anything else is a wrong file.
_TOKEN = re.compile(r"^[\x21-\x7e]+$")
_MAX_TOKEN_FILE = 4096

T = TypeVar("T")


@dataclass(frozen=True)
class Connection:
    url: str
    ca_cert: str
    token_file: str
    timeout: float = DEFAULT_TIMEOUT


class AdminApiError(CommandError):
    """The verifier answered with an error: its HTTP status and ErrorOut code and message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        self.status = status
        self.code = code
        self.message = message
        hint = " (check --token-file / ATTEST_TOKEN_FILE)" if status == 401 else ""
        super().__init__(f"verifier: {message}{hint} [{code}, HTTP {status}]")


def connection_from_args(args: argparse.Namespace) -> Connection:
    """The connection settings from the command line, falling back to the environment."""

    def setting(attr: str, env: str, option: str) -> str:
        value = getattr(args, attr, None) or os.environ.get(env)
        if not value:
            raise UsageError(f"no {option} given (or set {env}); see `attestctl --help`")
        return value

    url = setting("verifier", ENV_VERIFIER, "--verifier URL").rstrip("/")
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme != "https" or not parsed.hostname:
        raise UsageError(
            f"--verifier {url!r}: must be an https:// URL (the admin token never travels in clear)"
        )
    if parsed.query or parsed.fragment:
        raise UsageError(f"--verifier {url!r}: give the base URL only, without ?query or #fragment")
    timeout = getattr(args, "timeout", None) or DEFAULT_TIMEOUT
    if timeout <= 0:
        raise UsageError("--timeout must be positive")
    return Connection(
        url=url,
        ca_cert=setting("ca_cert", ENV_CA_CERT, "--ca-cert FILE"),
        token_file=setting("token_file", ENV_TOKEN_FILE, "--token-file FILE"),
        timeout=timeout,
    )


def load_token(path: str) -> str:
    """The bearer token in `path`, surrounding whitespace ignored. The token itself never
    appears in a message: error output ends up in CI logs."""
    with input_file_errors(f"token file {path}"), open(path, "rb") as f:
        mode = os.fstat(f.fileno()).st_mode
        raw = f.read(_MAX_TOKEN_FILE + 1)
    try:
        token = raw.decode("ascii").strip()
    except UnicodeDecodeError:
        token = ""
    if len(raw) > _MAX_TOKEN_FILE or not _TOKEN.match(token):
        raise UsageError(f"token file {path}: does not hold one bearer token (one word of printable ASCII)")
    if stat.S_IMODE(mode) & 0o077:
        # Like ssh with a private key, but a warning: Kubernetes secret volumes are 0644 by default.
        print(f"attestctl: warning: token file {path} is readable by others; chmod 600 it", file=sys.stderr)
    return token


def tls_context(ca_cert: str) -> ssl.SSLContext:
    """Trust exactly the given CA (with a cafile, create_default_context loads no system roots),
    over the TLS every party speaks (attest.tlspolicy)."""
    if not os.path.isfile(ca_cert):
        raise UsageError(f"CA file {ca_cert}: no such file")
    try:
        return harden(ssl.create_default_context(cafile=ca_cert))
    except ssl.SSLError as e:
        raise UsageError(f"CA file {ca_cert}: no PEM certificate in it ({e.reason or e})") from None
    except PermissionError:
        raise UsageError(f"CA file {ca_cert}: permission denied") from None


def _transport_failure(url: str, e: httpx.TransportError, timeout: float) -> CommandError:
    """One line for a request that got no HTTP answer, naming the TLS cause when there is one."""
    if isinstance(e, httpx.TimeoutException):
        return CommandError(f"the verifier at {url} did not answer within {timeout:g}s")
    cause: BaseException | None = e
    while cause is not None:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return CommandError(
                f"TLS: the verifier at {url} presented a certificate that does not verify: "
                f"{cause.verify_message} (is --ca-cert the CA that issued it, and the URL's host in it?)"
            )
        if isinstance(cause, ssl.SSLError):
            return CommandError(f"TLS handshake with the verifier at {url} failed: {cause.reason or cause}")
        cause = cause.__cause__ or cause.__context__
    return CommandError(f"cannot reach the verifier at {url}: {e or type(e).__name__}")


def _segment(value: str) -> str:
    """A path segment that cannot climb out of its route: nothing is left unquoted."""
    return urllib.parse.quote(value, safe="")


def _node_path(name: str) -> str:
    if not valid_node_name(name):
        raise UsageError(f"{name!r} is not a Kubernetes node name (lowercase DNS-1123 subdomain)")
    return f"{API_PREFIX}/admin/nodes/{_segment(name)}"


class AdminClient:
    """Typed calls of the admin API. Use as a context manager: it holds a connection pool."""

    def __init__(
        self,
        base_url: str,
        token: str,
        verify: ssl.SSLContext,
        timeout: float = DEFAULT_TIMEOUT,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = base_url
        self.timeout = timeout
        self._http = httpx.Client(
            base_url=base_url,
            verify=verify,
            timeout=timeout,
            transport=transport,
            follow_redirects=False,
            headers={"Authorization": f"Bearer {token}", "User-Agent": f"attestctl/{__version__}"},
        )

    @classmethod
    def connect(cls, conn: Connection) -> AdminClient:
        return cls(conn.url, load_token(conn.token_file), tls_context(conn.ca_cert), conn.timeout)

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _send(
        self,
        method: str,
        path: str,
        *,
        body: BaseModel | None = None,
        params: Mapping[str, int | str] | None = None,
    ) -> httpx.Response:
        """The verifier's successful answer; anything else raises its one-line CommandError."""
        content = None if body is None else body.model_dump_json().encode()
        headers = {"Content-Type": "application/json"} if content is not None else None
        try:
            response = self._http.request(method, path, content=content, headers=headers, params=params)
        except httpx.TransportError as e:
            raise _transport_failure(self.base_url, e, self.timeout) from None
        if not response.is_success:
            raise _http_failure(response)
        return response

    def _call(
        self,
        method: str,
        path: str,
        answer: type[T],
        *,
        body: BaseModel | None = None,
        params: Mapping[str, int | str] | None = None,
    ) -> T:
        return _parse(self._send(method, path, body=body, params=params), answer, f"{method} {path}")

    def _pages(self, path: str, answer: type[list[T]], limit: int | None) -> Iterator[list[T]]:
        """A listing page by page, following the Link rel="next" header's cursor until a page has
        none. A verifier that predates paging sends everything at once with no Link: that ends
        the walk just as well."""
        params: dict[str, int | str] = {} if limit is None else {"limit": limit}
        while True:
            response = self._send("GET", path, params=params)
            page = _parse(response, answer, f"GET {path}")
            yield page
            link = response.links.get("next")
            if link is None:
                return
            query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(link.get("url", "")).query))
            after = query.get("after")
            if not page or not after or after == params.get("after"):
                # A cursor that does not move would page forever.
                raise CommandError(f"the verifier's next page of GET {path} does not advance: {link}")
            params = {"after": after} if limit is None else {"after": after, "limit": limit}

    # --- nodes ---------------------------------------------------------------------------

    def node_pages(self, limit: int | None = None) -> Iterator[list[NodeOut]]:
        """Every node by name, a page at a time: a listing never holds more than a page."""
        return self._pages(f"{API_PREFIX}/admin/nodes", list[NodeOut], limit)

    def get_node(self, name: str) -> NodeOut:
        return self._call("GET", _node_path(name), NodeOut)

    def revoke_node(self, name: str) -> NodeOut:
        return self._call("POST", f"{_node_path(name)}/revoke", NodeOut)

    # --- endorsement keys ----------------------------------------------------------------

    def enroll_ek(self, request: EkEnrollRequest) -> EkOut:
        return self._call("POST", f"{API_PREFIX}/admin/eks", EkOut, body=request)

    def list_eks(self) -> list[EkOut]:
        return list(itertools.chain.from_iterable(self._pages(f"{API_PREFIX}/admin/eks", list[EkOut], None)))

    def revoke_ek(self, ek_id: int) -> EkOut:
        return self._call("POST", f"{API_PREFIX}/admin/eks/{ek_id}/revoke", EkOut)

    # --- policies ------------------------------------------------------------------------

    def apply_policy(self, text: str) -> PolicyOut:
        return self._call("POST", f"{API_PREFIX}/admin/policies", PolicyOut, body=PolicyIn(text=text))

    def list_policies(self) -> list[PolicyOut]:
        return self._call("GET", f"{API_PREFIX}/admin/policies", list[PolicyOut])

    def get_policy(self, name: str, version: int | None = None) -> PolicyOut:
        params = None if version is None else {"version": version}
        return self._call("GET", f"{API_PREFIX}/admin/policies/{_segment(name)}", PolicyOut, params=params)

    # --- audit ---------------------------------------------------------------------------

    def audit_page(self, after: int, limit: int = AUDIT_PAGE) -> list[AuditRecordOut]:
        return self._call(
            "GET", f"{API_PREFIX}/admin/audit", list[AuditRecordOut], params={"after": after, "limit": limit}
        )

    def audit_pages(self, progress: Callable[[int], None] | None = None) -> Iterator[list[AuditRecordOut]]:
        """The whole audit trail, a page at a time. Only an empty page ends it: a server may cap
        `limit` below what was asked, so a short page proves nothing."""
        after = count = 0
        while page := self.audit_page(after):
            if any(b <= a for a, b in itertools.pairwise([after, *(r.seq for r in page)])):
                # Paging by seq needs seq to increase; a server that repeats itself would loop forever.
                raise CommandError(f"the verifier's audit page after seq {after} does not advance by seq")
            after = page[-1].seq
            count += len(page)
            if progress is not None:
                progress(count)
            yield page

    def audit_records(self, progress: Callable[[int], None] | None = None) -> list[AuditRecordOut]:
        """The whole audit trail in memory (audit_pages streams it)."""
        return list(itertools.chain.from_iterable(self.audit_pages(progress)))


def _parse(response: httpx.Response, answer: type[T], request: str) -> T:
    try:
        return TypeAdapter(answer).validate_json(response.content)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise CommandError(
            f"the verifier's answer to {request} is not what this attestctl expects: {where}: {first['msg']}"
        ) from None


def _http_failure(response: httpx.Response) -> AdminApiError:
    try:
        error = ErrorOut.model_validate_json(response.content)
    except ValidationError:
        # Not the verifier speaking (a proxy, a load balancer): keep its words, on one line.
        text = " ".join(response.text.split())[:200] or response.reason_phrase
        return AdminApiError(response.status_code, f"http_{response.status_code}", text)
    return AdminApiError(response.status_code, error.code, " ".join(error.message.split()))


def open_client(args: argparse.Namespace) -> AdminClient:
    """The one place commands get a client from (tests substitute a mock transport here)."""
    return AdminClient.connect(connection_from_args(args))
