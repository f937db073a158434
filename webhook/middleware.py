"""ASGI middleware: request ids and the last-resort 500, and request size limits.

Both are plain ASGI so they see bytes as they arrive: the size limit stops reading a body the
moment it passes the limit instead of buffering it first, and a Content-Encoding other than
identity is refused outright (the service never decompresses, so no decompression bomb).
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
    REQUEST_TOO_LARGE,
    UNSUPPORTED_ENCODING,
    error_response,
)

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
