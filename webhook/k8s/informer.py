"""List, then watch: a local copy of every object of one cluster-scoped kind, kept current.

The Kubernetes way to follow a collection (client-go's reflector, reduced to what the
controllers need): list to get every object and the collection's resourceVersion, then watch
from that version. A watch the server ends (its timeout) is resumed from the last version seen;
one that breaks (connection dropped) is resumed too after a backoff; a version the server no
longer has (410 Gone, as an HTTP status or as an ERROR event in the stream) forces a new list,
as does any other API error. A list replaces the whole copy, so objects deleted while nothing
was watching disappear too.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Final, Generic, TypeVar, cast

import httpx2
import msgspec
from lightkube import ApiError, AsyncClient
from lightkube.core.resource import GlobalResource
from lightkube.models.meta_v1 import ObjectMeta

log = logging.getLogger(__name__)

R = TypeVar("R", bound=GlobalResource)

GONE: Final = 410
# The server ends a watch after this long (client-go picks 5-10 min); a watch that stays silent
# for longer than that plus the slack is presumed dead (a half-open connection never errors).
WATCH_TIMEOUT: Final = 300
WATCH_SLACK: Final = 30.0


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with full jitter: the n-th consecutive failure waits up to
    min(cap, base * 2**n) seconds, so replicas that failed together do not retry together."""

    base: float = 0.5
    cap: float = 30.0

    def delay(self, failures: int) -> float:
        return random.uniform(0, min(self.cap, self.base * 2 ** min(failures, 16)))  # noqa: S311 - jitter


DEFAULT_BACKOFF: Final = Backoff()


def metadata(obj: GlobalResource) -> ObjectMeta | None:
    """Every resource has metadata; lightkube's base class does not say so."""
    return cast(ObjectMeta | None, getattr(obj, "metadata", None))


def status_code(e: httpx2.HTTPStatusError) -> int:
    """The HTTP status of an API error, also for an ERROR event inside a watch stream."""
    if isinstance(e, ApiError) and e.status is not None and e.status.code is not None:
        return int(e.status.code)
    return int(e.response.status_code) if e.response is not None else 0


class Informer(Generic[R]):
    """`objects` (name -> object) mirrors the cluster once `synced` is set; `changed` is set on
    every event, for the controller to wake up. Run `run()` as a task; cancel it to stop."""

    def __init__(
        self,
        client: AsyncClient,
        resource: type[R],
        *,
        watch_timeout: int = WATCH_TIMEOUT,
        backoff: Backoff = DEFAULT_BACKOFF,
    ) -> None:
        self._client = client
        self._resource = resource
        self._kind = resource.__name__
        self._watch_timeout = watch_timeout
        self._backoff = backoff
        self.objects: dict[str, R] = {}
        self.synced = asyncio.Event()
        self.changed = asyncio.Event()
        self.resource_version: str | None = None
        self.lists = 0  # full lists so far: the first one, then one per 410 or API error

    async def run(self) -> None:
        failures = 0
        while True:
            try:
                if self.resource_version is None:
                    await self._list()
                await self._watch()
                failures = 0
            except httpx2.HTTPStatusError as e:
                code = status_code(e)
                self.resource_version = None  # 410 and every other API error: list again
                if code == GONE:
                    log.info("%s watch: resourceVersion too old (410 Gone): listing again", self._kind)
                    continue
                failures += 1
                log.warning("%s list/watch failed: HTTP %d %s", self._kind, code, e)
            except (httpx2.TransportError, msgspec.DecodeError, msgspec.ValidationError) as e:
                # The connection broke (or the stream was cut mid-object): resume from the last
                # version seen; the server answers 410 if it no longer has it.
                failures += 1
                log.warning("%s watch interrupted: %s: %s", self._kind, type(e).__name__, e)
            await asyncio.sleep(self._backoff.delay(failures) if failures else 0)

    async def _list(self) -> None:
        listing = self._client.list(self._resource)
        fresh: dict[str, R] = {}
        async for obj in listing:
            meta = metadata(obj)
            if meta is not None and meta.name:
                fresh[meta.name] = obj
        self.objects = fresh
        self.resource_version = listing.resourceVersion
        self.lists += 1
        self.synced.set()
        self.changed.set()
        log.debug("%s listed: %d at resourceVersion %s", self._kind, len(fresh), self.resource_version)

    async def _watch(self) -> None:
        """Watch from resource_version until the watch has run its course (then return) or fails."""
        try:
            async with asyncio.timeout(self._watch_timeout + WATCH_SLACK):
                async for kind, obj in self._events():
                    self._apply(kind, obj)
        except TimeoutError:
            log.debug("%s watch: renewing after %d s", self._kind, self._watch_timeout)

    def _events(self) -> AsyncIterator[tuple[str, R]]:
        return aiter(
            self._client.watch(
                self._resource, resource_version=self.resource_version, server_timeout=self._watch_timeout
            )
        )

    def _apply(self, kind: str, obj: R) -> None:
        meta = metadata(obj)
        if meta is None or not meta.name:
            return
        if kind == "DELETED":
            self.objects.pop(meta.name, None)
        elif kind in ("ADDED", "MODIFIED"):
            self.objects[meta.name] = obj
        if meta.resourceVersion:
            self.resource_version = meta.resourceVersion
        self.changed.set()
