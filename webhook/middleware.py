"""ASGI middleware: request ids and the last-resort 500, request size limits, and the agent
API's overload shedding and per-node rate limits.

All are plain ASGI so they see bytes as they arrive: the size limit stops reading a body the
moment it passes the limit instead of buffering it first, and a Content-Encoding other than
identity is refused outright (the service never decompresses, so no decompression bomb).
Shedding and rate limits answer before a body is read, so a refusal costs next to nothing.
"""

from __future__ import annotations

import contextvars
import logging
import re
import uuid
from collections.abc import Callable, Sequence

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from webhook.errors import (
    INTERNAL_ERROR,
    INVALID_REQUEST,
    OVERLOADED,
    RATE_LIMITED,
    REQUEST_TOO_LARGE,
    RETRY_AFTER_SECONDS,
    UNSUPPORTED_ENCODING,
    error_response,
)
from webhook.ratelimit import ConcurrencyGate, RateLimiter, retry_after

log = logging.getLogger(__name__)

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


class RequestIdFilter(logging.Filter):
    """Puts the current request id on every log record as `request_id`."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        return True


class RequestContext:
    """Gives each request an id (X-Request-ID on the response, `request_id` in the logs), and
    turns any exception no handler claimed into a 500 ErrorOut: never a traceback to a client."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = uuid.uuid4().hex
        token = request_id.set(rid)
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                MutableHeaders(scope=message)["X-Request-ID"] = rid
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            log.exception("unhandled error in %s %s", scope.get("method"), scope.get("path"))
            if not started:
                response = error_response(
                    500, INTERNAL_ERROR, f"internal error; the verifier's log has request {rid}"
                )
                await response(scope, receive, send_with_id)
        finally:
            request_id.reset(token)


class BodyLimit:
    """Refuses bodies over a per-route limit (413) and encoded bodies (415).

    A declared Content-Length over the limit is refused before the route runs. A body that
    arrives in chunks is counted as it is read; past the limit, the 413 goes out at once and the
    route sees the client as gone, so whatever it answers is dropped.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        default_limit: int,
        limits: Sequence[tuple[re.Pattern[str], int]],
        on_reject: Callable[[str], None],
    ) -> None:
        self.app = app
        self.default_limit = default_limit
        self.limits = tuple(limits)
        self.on_reject = on_reject

    def limit_for(self, path: str) -> int:
        for pattern, limit in self.limits:
            if pattern.fullmatch(path):
                return limit
        return self.default_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        limit = self.limit_for(scope["path"])
        encoding = headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            self.on_reject("content_encoding")
            response = error_response(
                415, UNSUPPORTED_ENCODING, f"Content-Encoding {encoding!r}: send the body unencoded"
            )
            await response(scope, receive, send)
            return
        declared = headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                response = error_response(400, INVALID_REQUEST, "Content-Length is not a number")
                await response(scope, receive, send)
                return
            if int(declared) > limit:
                await self._too_large(limit, scope, receive, send)
                return

        received = 0
        refused = answered = started = False

        async def counting_receive() -> Message:
            nonlocal received, refused, answered
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    refused = True
                    if not started:
                        answered = True
                        await self._too_large(limit, scope, receive, send)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if answered:
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        await self.app(scope, counting_receive, guarded_send)

    async def _too_large(self, limit: int, scope: Scope, receive: Receive, send: Send) -> None:
        self.on_reject("too_large")
        response = error_response(413, REQUEST_TOO_LARGE, f"request body larger than {limit} bytes")
        response.headers["Connection"] = "close"
        await response(scope, receive, send)


class AgentLimits:
    """Sheds agent API requests before their body is read; every other route passes untouched,
    so admission, probes and metrics are never shed and never wait behind agent work. `paths`:
    each agent route's pattern (its `node` group names the node) and whether the route finishes
    a round of requests (ConcurrencyGate.full).

    With the gate full (serving its limit, its queue too), 503 `overloaded`. Otherwise the
    request takes a token from its bucket, keyed by node name and client address (enrollment
    has no node yet: by address alone), or is answered 429 `rate_limited`; keying by address
    too means that someone else asking for challenges in a node's name does not spend the
    node's own tokens. Then it waits for the gate, in order, and is served.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        paths: Sequence[tuple[re.Pattern[str], bool]],
        gate: ConcurrencyGate | None,
        buckets: RateLimiter | None,
        on_shed: Callable[[str], None],
    ) -> None:
        self.app = app
        self.paths = tuple(paths)
        self.gate = gate
        self.buckets = buckets
        self.on_shed = on_shed

    def classify(self, scope: Scope) -> tuple[tuple[str | None, str | None], bool] | None:
        """An agent API request's rate-limit key, (node, client address), and whether it
        finishes a round; None for any other request."""
        for pattern, finishes in self.paths:
            match = pattern.fullmatch(scope["path"])
            if match:
                client = scope.get("client")
                return (match.groupdict().get("node"), client[0] if client else None), finishes
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        agent = self.classify(scope) if scope["type"] == "http" else None
        if agent is None:
            await self.app(scope, receive, send)
            return
        key, finishes = agent
        if self.gate is not None and self.gate.full(finishes=finishes):
            self.on_shed(OVERLOADED)
            response = error_response(
                503,
                OVERLOADED,
                "the verifier is serving as many agent requests as it can; retry later",
                headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
            )
            await response(scope, receive, send)
            return
        wait = self.buckets.take(key) if self.buckets is not None else 0.0
        if wait:
            self.on_shed(RATE_LIMITED)
            who = f"node {key[0]} from this address" if key[0] else "this address"
            response = error_response(
                429,
                RATE_LIMITED,
                f"too many agent requests for {who}; retry in {wait:.1f} s",
                headers={"Retry-After": retry_after(wait)},
            )
            await response(scope, receive, send)
            return
        if self.gate is None:
            await self.app(scope, receive, send)
            return
        async with self.gate:
            await self.app(scope, receive, send)
