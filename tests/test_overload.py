"""The agent API's overload protection without a server: token buckets and the concurrency gate
(webhook.ratelimit) with an injected clock, the options that configure them, and the ASGI
middleware (webhook.middleware.AgentLimits) driven directly, so what it answers before reading
a body, and what it lets through, is checked request by request."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import pytest
from starlette.types import Message, Receive, Scope, Send

from attest.errors import UsageError
from tests.webhook_api import Api
from tests.webhook_support import SoftNode, TestCa, policy_text
from webhook.config import load_settings
from webhook.middleware import AgentLimits
from webhook.ratelimit import ConcurrencyGate, RateLimiter, retry_after


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_bucket_allows_its_burst_then_refills_at_its_rate() -> None:
    clock = Clock()
    buckets = RateLimiter(0.5, 3, clock=clock)
    assert [buckets.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("a") == pytest.approx(2.0)  # one token takes 1 / 0.5 s
    clock.now += 1.5
    assert buckets.take("a") == pytest.approx(0.5)
    clock.now += 0.5
    assert buckets.take("a") == 0.0
    # A refused request takes nothing: the wait it is told is the whole truth.
    assert buckets.take("a") == pytest.approx(2.0)
    assert buckets.take("a") == pytest.approx(2.0)


def test_a_bucket_never_banks_more_than_its_burst_and_survives_a_clock_step_back() -> None:
    clock = Clock()
    buckets = RateLimiter(1.0, 2, clock=clock)
    buckets.take("a")
    clock.now += 3600
    assert [buckets.take("a") for _ in range(3)] == [0.0, 0.0, pytest.approx(1.0)]
    clock.now -= 100
    assert buckets.take("a") == pytest.approx(1.0)


def test_one_noisy_key_does_not_touch_anothers_bucket() -> None:
    buckets = RateLimiter(0.1, 2, clock=Clock())
    for _ in range(50):
        buckets.take(("noisy", "10.0.0.1"))
    assert buckets.take(("noisy", "10.0.0.1")) > 0
    assert buckets.take(("quiet", "10.0.0.2")) == 0.0
    # The same node name from another address has a bucket of its own.
    assert buckets.take(("noisy", "10.0.0.3")) == 0.0


def test_invented_keys_evict_the_least_recently_used_buckets_and_memory_stays_bounded() -> None:
    clock = Clock()
    buckets = RateLimiter(0.01, 1, max_buckets=100, clock=clock)
    assert buckets.take("node") == 0.0
    assert buckets.take("node") > 0
    for i in range(10_000):
        buckets.take(f"invented-{i}")
        assert len(buckets) <= 100
    # The evicted bucket comes back full: eviction lets a request through, never refuses one.
    assert buckets.take("node") == 0.0


def test_a_recently_used_bucket_outlives_older_ones() -> None:
    buckets = RateLimiter(0.01, 1, max_buckets=2, clock=Clock())
    buckets.take("a")
    buckets.take("b")
    buckets.take("a")  # refused, but used: "b" is now the oldest
    buckets.take("c")
    assert buckets.take("a") > 0
    assert buckets.take("b") == 0.0


@pytest.mark.parametrize(("rate", "burst"), [(0, 1), (-1, 1), (1, 0)])
def test_a_bucket_needs_a_positive_rate_and_burst(rate: float, burst: int) -> None:
    with pytest.raises(ValueError, match="positive"):
        RateLimiter(rate, burst)


@pytest.mark.parametrize(("seconds", "header"), [(0.01, "1"), (1.0, "1"), (1.2, "2"), (99.5, "100")])
def test_retry_after_is_whole_seconds_never_early(seconds: float, header: str) -> None:
    assert retry_after(seconds) == header


def test_the_gate_admits_its_limit_queues_in_order_and_is_full_past_the_queue() -> None:
    async def scenario() -> list[str]:
        gate = ConcurrencyGate(limit=2, queue=2)
        release = asyncio.Event()
        order: list[str] = []

        async def request(name: str) -> None:
            async with gate:
                order.append(name)
                await release.wait()

        tasks = [asyncio.create_task(request(f"r{i}")) for i in range(4)]
        await asyncio.sleep(0)
        assert (gate.active, gate.waiting, gate.full()) == (2, 2, True)
        assert order == ["r0", "r1"]
        release.set()
        await asyncio.gather(*tasks)
        assert (gate.active, gate.waiting, gate.full()) == (0, 0, False)
        return order

    assert asyncio.run(scenario()) == ["r0", "r1", "r2", "r3"]


def test_a_cancelled_waiter_leaves_the_gate_consistent() -> None:
    async def scenario() -> None:
        gate = ConcurrencyGate(limit=1, queue=1)
        release = asyncio.Event()

        async def request() -> None:
            async with gate:
                await release.wait()

        holder = asyncio.create_task(request())
        waiter = asyncio.create_task(request())
        await asyncio.sleep(0)
        assert gate.full()
        waiter.cancel()  # the client went away while queued
        await asyncio.gather(waiter, return_exceptions=True)
        assert (gate.active, gate.waiting, gate.full()) == (1, 0, False)
        release.set()
        await holder
        assert (gate.active, gate.waiting) == (0, 0)

    asyncio.run(scenario())


def test_requests_that_start_a_round_get_half_the_queue_and_those_that_finish_one_all_of_it() -> None:
    async def scenario() -> None:
        gate = ConcurrencyGate(limit=1, queue=4)
        release = asyncio.Event()

        async def request() -> None:
            async with gate:
                await release.wait()

        tasks = [asyncio.create_task(request()) for _ in range(3)]
        await asyncio.sleep(0)
        assert (gate.active, gate.waiting) == (1, 2)
        assert gate.full(finishes=False)
        assert not gate.full(finishes=True)
        tasks += [asyncio.create_task(request()) for _ in range(2)]
        await asyncio.sleep(0)
        assert gate.full(finishes=True)
        release.set()
        await asyncio.gather(*tasks)

    asyncio.run(scenario())


@pytest.mark.parametrize(("limit", "queue"), [(0, 1), (1, -1)])
def test_the_gate_needs_a_limit_and_a_queue(limit: int, queue: int) -> None:
    with pytest.raises(ValueError, match="at least"):
        ConcurrencyGate(limit, queue)


def test_the_options_have_sane_defaults_and_zero_turns_them_off() -> None:
    defaults = load_settings({}, {})
    assert (defaults.max_agent_concurrency, defaults.agent_queue) == (4, 32)
    # A node attests every ~60 s with two requests: the default leaves room for retries.
    assert defaults.node_rate * 60 >= 6
    assert defaults.node_burst >= 4
    flags = {"max_agent_concurrency": "0", "agent_queue": "0", "node_rate": "0", "node_burst": "1"}
    off = load_settings(flags, {})
    assert (off.max_agent_concurrency, off.agent_queue, off.node_rate, off.node_burst) == (0, 0, 0.0, 1)
    env = load_settings({}, {"ATTEST_VERIFIER_NODE_RATE": "0.5", "ATTEST_VERIFIER_NODE_BURST": "4"})
    assert (env.node_rate, env.node_burst) == (0.5, 4)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("max_agent_concurrency", "-1", "whole number"),
        ("max_agent_concurrency", "many", "whole number"),
        ("agent_queue", "1.5", "whole number"),
        ("node_rate", "-0.1", "requests a second"),
        ("node_rate", "nan", "requests a second"),
        ("node_burst", "0", "at least 1"),
    ],
)
def test_bad_overload_options_are_one_line_usage_errors(key: str, value: str, message: str) -> None:
    with pytest.raises(UsageError, match=f"--{key.replace('_', '-')}: .*{message}"):
        load_settings({key: value}, {})


# --- the middleware, as ASGI --------------------------------------------------------------------

AGENT_PATHS = [
    (re.compile(r"^/v1/enroll$"), False),
    (re.compile(r"^/v1/nodes/(?P<node>[^/]+)/challenge$"), False),
    (re.compile(r"^/v1/nodes/(?P<node>[^/]+)/evidence$"), True),
]


class Downstream:
    """The application behind the middleware: answers 200, or waits for `release` first."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.release.set()
        self.served: list[str] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.release.wait()
        self.served.append(scope["path"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})


def scope_for(path: str, client: str = "10.0.0.1") -> Scope:
    return {"type": "http", "method": "POST", "path": path, "headers": [], "client": (client, 4711)}


async def call(app: AgentLimits, path: str, client: str = "10.0.0.1") -> tuple[int, dict[str, str], Any]:
    sent: list[Message] = []

    async def receive() -> Message:
        raise AssertionError("the body was read")  # refusals must not read it; Downstream does not

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope_for(path, client), receive, send)
    start = sent[0]
    headers = {k.decode(): v.decode() for k, v in start["headers"]}
    return start["status"], headers, json.loads(sent[1]["body"])


def limits(
    downstream: Downstream, gate: ConcurrencyGate | None, buckets: RateLimiter | None
) -> tuple[AgentLimits, list[str]]:
    shed: list[str] = []
    app = AgentLimits(downstream, paths=AGENT_PATHS, gate=gate, buckets=buckets, on_shed=shed.append)
    return app, shed


def test_past_the_gate_and_its_queue_agent_requests_get_503_at_once_and_others_pass() -> None:
    async def scenario() -> None:
        downstream = Downstream()
        downstream.release.clear()
        app, shed = limits(downstream, ConcurrencyGate(1, 2), None)
        held = [asyncio.create_task(call(app, f"/v1/nodes/n{i}/challenge")) for i in range(2)]
        await asyncio.sleep(0)
        status, headers, body = await call(app, "/v1/nodes/n9/challenge")
        assert (status, body["code"]) == (503, "overloaded")
        assert int(headers["retry-after"]) >= 1
        assert shed == ["overloaded"]
        # Evidence finishes a round: it may use the queue's second half, challenges may not.
        status, _, body = await call(app, "/v1/nodes/n9/challenge")
        assert (status, body["code"]) == (503, "overloaded")
        held.append(asyncio.create_task(call(app, "/v1/nodes/n0/evidence")))
        await asyncio.sleep(0)
        assert (await call(app, "/v1/nodes/n8/evidence"))[0] == 503
        # Admission, admin, probes: never shed, never queued behind agent work.
        downstream.release.set()
        for path in ("/v1/admission/pods", "/healthz", "/metrics", "/v1/admin/nodes"):
            assert (await call(app, path))[0] == 200
        assert [r[0] for r in await asyncio.gather(*held)] == [200, 200, 200]
        assert shed == ["overloaded"] * 3
        assert (await call(app, "/v1/nodes/n9/challenge"))[0] == 200

    asyncio.run(scenario())


def test_a_noisy_node_gets_429_with_the_wait_while_another_node_and_address_are_served() -> None:
    async def scenario() -> None:
        clock = Clock()
        app, shed = limits(Downstream(), None, RateLimiter(0.1, 2, clock=clock))
        noisy = [await call(app, "/v1/nodes/noisy/challenge") for _ in range(3)]
        assert [r[0] for r in noisy] == [200, 200, 429]
        _, headers, body = noisy[2]
        assert body["code"] == "rate_limited"
        assert "noisy" in body["message"]
        assert headers["retry-after"] == "10"
        assert shed == ["rate_limited"]
        assert (await call(app, "/v1/nodes/quiet/challenge"))[0] == 200
        # Someone else asking in the noisy node's name does not spend the node's own tokens.
        assert (await call(app, "/v1/nodes/noisy/challenge", client="10.9.9.9"))[0] == 200
        # Enrollment has no node yet: one bucket per address.
        assert [(await call(app, "/v1/enroll"))[0] for _ in range(3)] == [200, 200, 429]
        assert (await call(app, "/v1/enroll", client="10.0.0.2"))[0] == 200
        clock.now += 10
        assert (await call(app, "/v1/nodes/noisy/challenge"))[0] == 200

    asyncio.run(scenario())


def test_with_both_limits_off_agent_requests_are_served_on_the_shared_threads(ca: TestCa) -> None:
    api = Api(ca, max_agent_concurrency=0, node_rate=0)
    with api.client:
        node = SoftNode("worker-1", ca)
        api.store.put_policy("default", policy_text(node.boot))
        api.enroll(node)
        for _ in range(30):
            assert api.client.post(f"/v1/nodes/{node.name}/challenge").status_code == 200
        r = api.client.post(f"/v1/nodes/{node.name}/evidence", content=api.evidence_body(node))
        assert r.status_code == 200, r.text
        assert r.json()["trusted"] is True
        assert "attest_agent_requests{" not in api.client.get("/metrics").text  # no gate to show
