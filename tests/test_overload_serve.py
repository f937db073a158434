"""Overload protection in a real `attest-verifier serve` process over TLS (tests/verifier_process.py):
agent requests past the concurrency gate and its queue are shed with 503 before their body is
read while admission reviews, probes and metrics are all answered; a flood of concurrent agent
clients gets answers or 503s, never a 500; a node that hammers the verifier gets 429 while
another node is served. The store is SQLite, prepared through the Store API with enrolled
nodes (challenges need one) and an attested node for the admission reviews."""

from __future__ import annotations

import copy
import datetime as dt
import json
import re
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from attest.store.sql import SqlStore
from attest.wire import ADMISSION_PODS, Challenge, ErrorOut
from bench.admission import seed_node
from tests.verifier_process import Server, StartVerifier

PINNED_POD = json.loads(
    (Path(__file__).parent / "data/k8s/admission/08-validate-pods-CREATE-pinned.json").read_text()
)
ADMITTED_NODE = str(PINNED_POD["request"]["object"]["spec"]["nodeName"])
POLICY = """\
version: 1
name: default
containers:
  images: ["registry.example.com/*"]
"""
AGENT_NODES = [f"agent-{i:02d}" for i in range(16)]
WAIT = 30.0  # a guard against hanging, never a figure under test


@pytest.fixture
def database(tmp_path: Path) -> Path:
    path = tmp_path / "overload.db"
    store = SqlStore.open(f"sqlite:///{path}")
    try:
        store.put_policy("default", POLICY)
        now = dt.datetime.now(dt.UTC)
        seed_node(store, ADMITTED_NODE, "trusted", now)
        for name in AGENT_NODES:
            seed_node(store, name, "enrolled", now)
    finally:
        store.close()
    return path


def admit(client: httpx.Client) -> None:
    """One pinned-Pod review for the attested node, checked as the API server would."""
    review = copy.deepcopy(PINNED_POD)
    review["request"]["uid"] = str(uuid.uuid4())
    r = client.post(f"{ADMISSION_PODS}?timeout=5s", json=review)
    assert r.status_code == 200, r.text
    response = r.json()["response"]
    assert (response["uid"], response["allowed"]) == (review["request"]["uid"], True)


def check_challenge(r: httpx.Response) -> None:
    assert r.status_code == 200, r.text
    challenge = Challenge.model_validate_json(r.content)
    assert len(challenge.nonce) == 32
    assert challenge.selection.startswith("sha256:")


def check_refusal(r: httpx.Response, status: int, code: str) -> int:
    """The refusal's status, ErrorOut code and Retry-After (returned, in seconds)."""
    assert r.status_code == status, r.text
    assert ErrorOut.model_validate_json(r.content).code == code
    return int(r.headers["retry-after"])


def metric(client: httpx.Client, name: str, labels: str) -> float:
    match = re.search(
        rf"^{re.escape(name)}\{{{re.escape(labels)}\}} (\S+)$", client.get("/metrics").text, re.M
    )
    return float(match.group(1)) if match else 0.0


def wait_for(what: str, predicate: Callable[[], bool], server: Server) -> None:
    deadline = time.monotonic() + WAIT
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out waiting for {what}; verifier log:\n{server.log.read_text()[-3000:]}"
            )
        time.sleep(0.05)


class Raw:
    """One HTTP/1.1 request over its own TLS connection, written in parts, to hold a request
    (and the gate's slot it was given) open for as long as a test needs."""

    def __init__(self, server: Server) -> None:
        host, port = server.url.removeprefix("https://").rsplit(":", 1)
        plain = socket.create_connection((host, int(port)), timeout=WAIT)
        self.sock: ssl.SSLSocket = server.tls.client_context().wrap_socket(plain, server_hostname=host)

    def send(self, data: bytes) -> Raw:
        self.sock.sendall(data)
        return self

    def answer(self) -> tuple[int, dict[str, str], bytes]:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise AssertionError(f"connection closed before an answer: {data!r}")
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.lower(): v for k, _, v in (line.partition(": ") for line in lines[1:])}
        while len(body) < int(headers["content-length"]):
            body += self.sock.recv(65536)
        return int(lines[0].split()[1]), headers, body

    def close(self) -> None:
        self.sock.close()


def post_head(path: str, length: int) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nhost: verifier\r\ncontent-type: application/json\r\n"
        f"content-length: {length}\r\n\r\n"
    ).encode()


def test_with_the_gate_and_its_queue_full_agent_requests_get_503_unread_and_admission_is_served(
    start_verifier: StartVerifier, database: Path
) -> None:
    server = start_verifier(
        "--max-agent-concurrency", "1", "--agent-queue", "2", "--node-rate", "0", database=database
    )
    with server.client() as client:
        # An evidence upload whose body is still arriving holds the one slot; a challenge and
        # another evidence wait: challenges may only take the first half of the queue.
        slow = Raw(server).send(post_head("/v1/nodes/agent-00/evidence", 2) + b"{")
        wait_for(
            "the upload to hold the slot",
            lambda: metric(client, "attest_agent_requests", 'state="active"') == 1,
            server,
        )
        queued = Raw(server).send(post_head("/v1/nodes/agent-01/challenge", 0))
        wait_for(
            "the challenge to queue",
            lambda: metric(client, "attest_agent_requests", 'state="queued"') == 1,
            server,
        )
        assert check_refusal(client.post("/v1/nodes/agent-02/challenge"), 503, "overloaded") >= 1
        finishing = Raw(server).send(post_head("/v1/nodes/agent-04/evidence", 2) + b"{}")
        wait_for(
            "the evidence to queue",
            lambda: metric(client, "attest_agent_requests", 'state="queued"') == 2,
            server,
        )

        assert check_refusal(client.post("/v1/nodes/agent-02/challenge"), 503, "overloaded") >= 1
        assert check_refusal(client.post("/v1/enroll", json={}), 503, "overloaded") >= 1
        # Refused on its headers: the 64 MiB it announces are never sent, let alone read.
        status, headers, body = Raw(server).send(post_head("/v1/nodes/agent-03/evidence", 64 << 20)).answer()
        assert (status, ErrorOut.model_validate_json(body).code) == (503, "overloaded")
        assert int(headers["retry-after"]) >= 1

        for _ in range(20):
            admit(client)
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").status_code == 200
        assert metric(client, "attest_requests_rejected_total", 'reason="overloaded"') == 4

        # The rest of the upload arrives: it is answered, then the queued challenge is served.
        status, _, body = slow.send(b"}").answer()
        assert (status, ErrorOut.model_validate_json(body).code) == (400, "invalid_request")
        status, _, body = queued.answer()
        assert status == 200, body
        status, _, body = finishing.answer()
        assert (status, ErrorOut.model_validate_json(body).code) == (400, "invalid_request")
        for raw in (slow, queued, finishing):
            raw.close()
        check_challenge(client.post("/v1/nodes/agent-02/challenge"))
        assert metric(client, "attest_agent_requests", 'state="active"') == 0


def test_a_flood_of_agent_clients_gets_answers_or_503s_never_500_while_admission_is_all_served(
    start_verifier: StartVerifier, database: Path
) -> None:
    server = start_verifier(
        "--max-agent-concurrency", "2", "--agent-queue", "2", "--node-rate", "0", database=database
    )
    statuses: list[int] = []
    lock = threading.Lock()
    flooding = threading.Event()
    flooding.set()

    def agent(n: int) -> None:
        with server.client() as client:
            for i in range(12):
                r = client.post(f"/v1/nodes/{AGENT_NODES[(n + i) % len(AGENT_NODES)]}/challenge")
                if r.status_code == 503:
                    check_refusal(r, 503, "overloaded")
                else:
                    check_challenge(r)
                with lock:
                    statuses.append(r.status_code)

    def admission() -> int:
        done = 0
        with server.client() as client:
            while flooding.is_set() or done < 20:
                admit(client)
                done += 1
        return done

    with ThreadPoolExecutor(max_workers=17) as pool:
        reviews = pool.submit(admission)
        for f in [pool.submit(agent, n) for n in range(16)]:
            f.result()
        flooding.clear()
        assert reviews.result() >= 20

    assert len(statuses) == 16 * 12
    assert set(statuses) <= {200, 503}
    # 16 clients against 2 slots and a queue that takes one challenge: most are shed.
    assert statuses.count(200) >= 1
    assert statuses.count(503) >= 1
    with server.client() as client:
        assert client.get("/healthz").status_code == 200
        assert metric(client, "attest_requests_rejected_total", 'reason="overloaded"') == statuses.count(503)
        check_challenge(client.post("/v1/nodes/agent-00/challenge"))
    assert "Traceback" not in server.log.read_text()


def test_a_node_hammering_gets_429_while_another_node_and_admission_are_served(
    start_verifier: StartVerifier, database: Path
) -> None:
    # One token every 100 s: nothing refills during the test, whatever the machine's speed.
    server = start_verifier("--node-rate", "0.01", "--node-burst", "3", database=database)
    with server.client() as client:
        for _ in range(3):
            check_challenge(client.post("/v1/nodes/agent-00/challenge"))
        for _ in range(5):
            r = client.post("/v1/nodes/agent-00/challenge")
            assert 1 <= check_refusal(r, 429, "rate_limited") <= 100
            assert "agent-00" in r.json()["message"]
        # Evidence counts against the same node's bucket, and is refused before it is read.
        r = client.post(
            "/v1/nodes/agent-00/evidence", content=b"x" * 4096, headers={"content-type": "application/json"}
        )
        check_refusal(r, 429, "rate_limited")

        check_challenge(client.post("/v1/nodes/agent-01/challenge"))
        for _ in range(10):
            admit(client)
        # Enrollment has no node identity yet: its bucket is the client address's.
        for _ in range(3):
            assert client.post("/v1/enroll", json={}).status_code == 400
        check_refusal(client.post("/v1/enroll", json={}), 429, "rate_limited")
        assert metric(client, "attest_requests_rejected_total", 'reason="rate_limited"') == 7
