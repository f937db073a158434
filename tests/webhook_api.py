"""The verifier app in process (FastAPI's TestClient over a FakeStore) with a test CA, as pytest
fixtures: `ca` (module-scoped), `api` and `node` (an enrolled software node with a matching policy).
Registered as a plugin in tests/conftest.py so every HTTP-level test file shares one definition."""

from __future__ import annotations

import base64
import secrets
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from attest.wire import ErrorOut
from tests.webhook_support import NOW, FakeStore, SoftNode, TestCa, policy_text
from webhook.app import create_app
from webhook.config import Settings

TOKEN = "s3cret-admin-token-0123456789"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}


class Secrets:
    """secrets.token_bytes, remembering what it gave: the test plays the TPM that would decrypt."""

    def __init__(self) -> None:
        self.last = b""

    def __call__(self, n: int) -> bytes:
        self.last = secrets.token_bytes(n)
        return self.last


@pytest.fixture(scope="module")
def ca() -> TestCa:
    return TestCa.create()


class Api:
    def __init__(self, ca: TestCa, **overrides: Any) -> None:
        self.store = FakeStore()
        self.secrets = Secrets()
        options: dict[str, Any] = {"admin_token": TOKEN, **overrides}
        settings = Settings(ek_roots=(ca.root.cert,), ek_intermediates=(ca.intermediate.cert,), **options)
        self.app = create_app(settings, self.store, clock=lambda: NOW, random_bytes=self.secrets)
        self.client = TestClient(
            self.app, raise_server_exceptions=False, headers={"Content-Type": "application/json"}
        )
        self.ca = ca

    def enroll(self, node: SoftNode) -> None:
        r = self.client.post("/v1/enroll", content=node.enroll_request().model_dump_json())
        assert r.status_code == 200, r.text
        enrollment_id = r.json()["enrollment_id"]
        secret = base64.b64encode(self.secrets.last).decode()
        r = self.client.post(f"/v1/enroll/{enrollment_id}/activate", json={"secret": secret})
        assert r.status_code == 200, r.text

    def challenge(self, node: SoftNode) -> dict[str, Any]:
        r = self.client.post(f"/v1/nodes/{node.name}/challenge")
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body

    def evidence_body(self, node: SoftNode, **kwargs: Any) -> str:
        c = self.challenge(node)
        return node.evidence(base64.b64decode(c["nonce"]), c["selection"], **kwargs).model_dump_json()


@pytest.fixture
def api(ca: TestCa) -> Iterator[Api]:
    a = Api(ca)
    with a.client:
        yield a


@pytest.fixture
def node(api: Api) -> SoftNode:
    n = SoftNode("worker-1", api.ca)
    api.store.put_policy("default", policy_text(n.boot))
    api.enroll(n)
    return n


def error(r: Any, status: int) -> ErrorOut:
    assert r.status_code == status, r.text
    return ErrorOut.model_validate_json(r.content)
