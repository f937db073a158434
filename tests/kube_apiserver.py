"""A test Kubernetes API server: a real HTTPS server process that the verifier's controllers talk
to with the real lightkube client, because no kube-apiserver can run on the test machines.

It is test infrastructure, not a conformance-tested API server. It implements exactly the
subset the controllers use, with the Kubernetes semantics that decide whether they are right:

- resources: Nodes (list, watch, get, create, JSON merge patch), CertificateSigningRequests
  (list, watch, get, create, the `approval` subresource by PUT), Events (create, list), Leases
  (get, create, update); everything else is 404;
- resourceVersion: one counter for all objects, like etcd's revision. Lists carry the
  collection's version; updates and patches that carry a resourceVersion other than the stored
  one fail 409 Conflict; creating an existing name fails 409 AlreadyExists;
- watch (`?watch=true`): newline-delimited JSON events ADDED/MODIFIED/DELETED from the
  version asked for (or every current object as ADDED when none is given), ended after
  `timeoutSeconds`; a version older than the last compaction (POST /_test/compact forgets all
  history, so any version handed out before it) is answered
  the way kube-apiserver does: HTTP 200 and one ERROR event carrying a 410 Status;
  POST /_test/drop-watches cuts every open watch mid-stream (the client sees a broken chunked
  body, as when a load balancer drops the connection);
- authentication: bearer tokens (401 otherwise) and the Impersonate-User/-Group headers (for
  the admin only, which tests use to file CSRs as a bootstrap token or as a node);
- authorization: the admin may do anything; the verifier's service account has exactly the
  rules of deploy/base/verifier-rbac.yaml (its ClusterRole, and its Role in attest-system), and
  an approval additionally needs `approve` on `signers` for the CSR's signerName, as the
  CertificateApproval admission plugin checks (403 otherwise). So the tests also prove that the
  controllers need no right the deployment does not grant;
- validation that catches client bugs: CSR spec.request must be a PEM certificate request, and
  spec.username/groups are set from the requesting user, never taken from the body; approval
  conditions may not be both Approved and Denied, repeated, or removed (422); Time fields must
  be RFC 3339 and MicroTime fields (Lease renewTime, acquireTime) have exactly six fractional
  digits, as the Go decoder insists; Node taints need a valid effect and no duplicate key and
  effect; Events about a cluster-scoped object must be in `default`;
- GET /_test/requests: every API request (method, path, query, user), for tests that count
  writes, and DELETE /_test/requests to start counting afresh.

Not implemented: strategic merge, JSON and apply patches (415), list paging, label and field
selectors, bookmarks, deletions (no test needs them), admission webhooks, the CSR signer (no
certificate is ever issued), defaulting and most field validation, protobuf, HTTP/2, and any
persistence: state lives in the process.

Run: python -m tests.kube_apiserver CONFIG.json (the fixtures in tests/test_k8s*.py do).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import copy
import dataclasses
import datetime as dt
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from tests.tlsfixtures import TlsFiles, write_tls

REPO = Path(__file__).resolve().parent.parent
RBAC_FILE = REPO / "deploy" / "base" / "verifier-rbac.yaml"
VERIFIER_USER = "system:serviceaccount:attest-system:attest-verifier"
ADMIN_USER = "test-admin"
DEFAULT_WATCH_SECONDS = 1800
START_TIMEOUT = 20.0

# (group, plural) -> (kind, apiVersion, namespaced)
KINDS: dict[tuple[str, str], tuple[str, str, bool]] = {
    ("", "nodes"): ("Node", "v1", False),
    ("", "events"): ("Event", "v1", True),
    ("certificates.k8s.io", "certificatesigningrequests"): (
        "CertificateSigningRequest",
        "certificates.k8s.io/v1",
        False,
    ),
    ("coordination.k8s.io", "leases"): ("Lease", "coordination.k8s.io/v1", True),
}
_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?(Z|[+-]\d\d:\d\d)$")
_MICRO_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}(Z|[+-]\d\d:\d\d)$")
_TAINT_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")


class ApiFailure(Exception):
    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message


def status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


def now_time() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


@dataclasses.dataclass(frozen=True)
class User:
    name: str
    groups: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Rule:
    groups: frozenset[str]
    resources: frozenset[str]
    verbs: frozenset[str]
    names: frozenset[str]
    namespace: str | None  # a Role's namespace; None for a ClusterRole

    def allows(self, verb: str, group: str, resource: str, namespace: str | None, name: str | None) -> bool:
        return (
            group in self.groups
            and resource in self.resources
            and verb in self.verbs
            and (not self.names or name in self.names)
            and (self.namespace is None or self.namespace == namespace)
        )


def load_rules(path: Path) -> list[Rule]:
    rules = []
    for doc in yaml.safe_load_all(path.read_text()):
        if not doc or doc.get("kind") not in ("ClusterRole", "Role"):
            continue
        namespace = doc["metadata"].get("namespace") if doc["kind"] == "Role" else None
        for r in doc.get("rules", []):
            rules.append(
                Rule(
                    frozenset(r.get("apiGroups", [])),
                    frozenset(r.get("resources", [])),
                    frozenset(r.get("verbs", [])),
                    frozenset(r.get("resourceNames", [])),
                    namespace,
                )
            )
    return rules


class Cluster:
    """Every object, the change history for watches, and the request log."""

    def __init__(self, tokens: dict[str, User], rules: list[Rule]) -> None:
        self.tokens = tokens
        self.rules = rules
        self.objects: dict[tuple[str, str], dict[tuple[str, str], dict[str, Any]]] = {k: {} for k in KINDS}
        self.revision = 1
        self.compacted = 0  # watches from a version below this get 410
        self.history: list[tuple[int, tuple[str, str], str, dict[str, Any]]] = []
        self.changed = asyncio.Condition()
        self.drops = 0
        self.requests: list[dict[str, Any]] = []

    # --- authentication and authorization --------------------------------------------------

    def authenticate(self, request: Request) -> User:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        user = self.tokens.get(token.strip()) if scheme.lower() == "bearer" else None
        if user is None:
            raise ApiFailure(401, "Unauthorized", "Unauthorized")
        impersonate = request.headers.get("impersonate-user")
        if impersonate:
            if user.name != ADMIN_USER:
                raise ApiFailure(403, "Forbidden", f'user "{user.name}" cannot impersonate users')
            groups = (*tuple(request.headers.getlist("impersonate-group")), "system:authenticated")
            return User(impersonate, groups)
        return user

    def authorize(
        self, user: User, verb: str, group: str, resource: str, namespace: str | None, name: str | None
    ) -> None:
        if user.name == ADMIN_USER:
            return
        # The cluster's default bindings let bootstrap tokens and nodes file and read CSRs.
        kubelet = "system:bootstrappers" in user.groups or "system:nodes" in user.groups
        if (
            kubelet
            and resource == "certificatesigningrequests"
            and verb in ("create", "get", "list", "watch")
        ):
            return
        if user.name == VERIFIER_USER and any(
            r.allows(verb, group, resource, namespace, name) for r in self.rules
        ):
            return
        where = f' in the namespace "{namespace}"' if namespace else " at the cluster scope"
        raise ApiFailure(
            403,
            "Forbidden",
            f'{resource} "{name or ""}" is forbidden: User "{user.name}" cannot {verb} resource '
            f'"{resource}" in API group "{group}"{where}',
        )

    # --- storage ---------------------------------------------------------------------------

    def _bump(self) -> str:
        self.revision += 1
        return str(self.revision)

    async def _record(self, key: tuple[str, str], kind: str, obj: dict[str, Any]) -> None:
        self.history.append((self.revision, key, kind, copy.deepcopy(obj)))
        async with self.changed:
            self.changed.notify_all()

    def get(self, key: tuple[str, str], namespace: str, name: str) -> dict[str, Any]:
        obj = self.objects[key].get((namespace, name))
        if obj is None:
            _, plural = key
            raise ApiFailure(404, "NotFound", f'{plural} "{name}" not found')
        return obj

    async def create(self, key: tuple[str, str], namespace: str, obj: dict[str, Any]) -> dict[str, Any]:
        kind, api_version, _ = KINDS[key]
        meta = obj.setdefault("metadata", {})
        name = meta.get("name")
        if not name:
            raise ApiFailure(422, "Invalid", "metadata.name: Required value")
        if (namespace, name) in self.objects[key]:
            raise ApiFailure(409, "AlreadyExists", f'{key[1]} "{name}" already exists')
        if namespace:
            meta["namespace"] = namespace
        meta.update(uid=str(uuid.uuid4()), resourceVersion=self._bump(), creationTimestamp=now_time())
        obj["kind"], obj["apiVersion"] = kind, api_version
        self.objects[key][(namespace, name)] = obj
        await self._record(key, "ADDED", obj)
        return obj

    async def replace(
        self, key: tuple[str, str], namespace: str, name: str, new: dict[str, Any], precondition: str | None
    ) -> dict[str, Any]:
        old = self.get(key, namespace, name)
        if precondition and precondition != old["metadata"]["resourceVersion"]:
            raise ApiFailure(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {key[1]} "{name}": the object has been modified; '
                "please apply your changes to the latest version and try again",
            )
        meta = new.setdefault("metadata", {})
        for field in ("name", "uid", "creationTimestamp", "namespace"):
            if field in old["metadata"]:
                meta[field] = old["metadata"][field]
        meta["resourceVersion"] = self._bump()
        new["kind"], new["apiVersion"] = old["kind"], old["apiVersion"]
        self.objects[key][(namespace, name)] = new
        await self._record(key, "MODIFIED", new)
        return new

    def listing(self, key: tuple[str, str], namespace: str | None) -> list[dict[str, Any]]:
        return [o for (ns, _), o in sorted(self.objects[key].items()) if namespace is None or ns == namespace]


# --- validation ------------------------------------------------------------------------------


def _check_time(value: Any, where: str, *, micro: bool = False) -> None:
    if value is None:
        return
    pattern = _MICRO_TIME if micro else _TIME
    if not isinstance(value, str) or not pattern.match(value):
        raise ApiFailure(400, "BadRequest", f"{where}: {value!r} is not a {'MicroTime' if micro else 'Time'}")


def validate(key: tuple[str, str], namespace: str, obj: dict[str, Any]) -> None:
    spec = obj.get("spec") or {}
    if key == ("coordination.k8s.io", "leases"):
        _check_time(spec.get("renewTime"), "spec.renewTime", micro=True)
        _check_time(spec.get("acquireTime"), "spec.acquireTime", micro=True)
        duration = spec.get("leaseDurationSeconds")
        if duration is not None and (not isinstance(duration, int) or duration <= 0):
            raise ApiFailure(422, "Invalid", "spec.leaseDurationSeconds: must be greater than 0")
    elif key == ("", "nodes"):
        seen = set()
        for i, taint in enumerate(spec.get("taints") or []):
            if not taint.get("key") or taint.get("effect") not in _TAINT_EFFECTS:
                raise ApiFailure(422, "Invalid", f"spec.taints[{i}]: key and a valid effect are required")
            if (taint["key"], taint["effect"]) in seen:
                raise ApiFailure(422, "Invalid", f"spec.taints[{i}]: Duplicate value: taints must be unique")
            seen.add((taint["key"], taint["effect"]))
            _check_time(taint.get("timeAdded"), f"spec.taints[{i}].timeAdded")
        for k, v in ((obj.get("metadata") or {}).get("labels") or {}).items():
            if not isinstance(v, str) or len(v) > 63:
                raise ApiFailure(422, "Invalid", f"metadata.labels: Invalid value for {k}")
    elif key == ("", "events"):
        involved = obj.get("involvedObject") or {}
        if not involved.get("kind") or not involved.get("name"):
            raise ApiFailure(422, "Invalid", "involvedObject: kind and name are required")
        if not involved.get("namespace") and namespace != "default":
            raise ApiFailure(422, "Invalid", "involvedObject.namespace: does not match event.namespace")
        if obj.get("type") not in (None, "Normal", "Warning"):
            raise ApiFailure(422, "Invalid", "type: Unsupported value")
        for field in ("firstTimestamp", "lastTimestamp"):
            _check_time(obj.get(field), field)


def validate_csr_create(obj: dict[str, Any], user: User) -> None:
    spec = obj.get("spec") or {}
    try:
        x509.load_pem_x509_csr(base64.b64decode(spec.get("request", ""), validate=True))
    except (ValueError, binascii.Error):
        raise ApiFailure(
            422,
            "Invalid",
            "spec.request: Invalid value: <omitted>: PEM block type must be CERTIFICATE REQUEST",
        ) from None
    if not spec.get("signerName"):
        raise ApiFailure(422, "Invalid", "spec.signerName: Required value")
    # The requestor comes from authentication, never from the body.
    spec["username"] = user.name
    spec["groups"] = list(user.groups)
    spec["uid"] = ""
    obj["status"] = {}


def approve_conditions(old: dict[str, Any], new: dict[str, Any]) -> list[dict[str, Any]]:
    conditions = list((new.get("status") or {}).get("conditions") or [])
    types = [c.get("type") for c in conditions]
    if len(types) != len(set(types)):
        raise ApiFailure(422, "Invalid", "status.conditions: Duplicate value: only one condition of a type")
    if "Approved" in types and "Denied" in types:
        raise ApiFailure(
            422, "Invalid", "status.conditions: Approved and Denied conditions are mutually exclusive"
        )
    for c in conditions:
        if c.get("type") in ("Approved", "Denied") and c.get("status") != "True":
            raise ApiFailure(422, "Invalid", "status.conditions: Approved and Denied must be True")
        _check_time(c.get("lastUpdateTime"), "status.conditions.lastUpdateTime")
        _check_time(c.get("lastTransitionTime"), "status.conditions.lastTransitionTime")
        c.setdefault("lastTransitionTime", now_time())
    for c in (old.get("status") or {}).get("conditions") or []:
        if c.get("type") in ("Approved", "Denied") and c.get("type") not in types:
            raise ApiFailure(
                422, "Invalid", f"status.conditions: updates may not remove a {c['type']} condition"
            )
    return conditions


# --- the application -------------------------------------------------------------------------


def _route(path: str) -> tuple[tuple[str, str], str, str | None, str | None]:
    """(group, plural), namespace, name, subresource from an /api or /apis path."""
    parts = [p for p in path.split("/") if p]
    if parts[:2] == ["api", "v1"]:
        group, rest = "", parts[2:]
    elif len(parts) >= 3 and parts[0] == "apis" and parts[2] == "v1":
        group, rest = parts[1], parts[3:]
    else:
        raise ApiFailure(404, "NotFound", "the server could not find the requested resource")
    namespace = ""
    if len(rest) >= 3 and rest[0] == "namespaces":
        namespace, rest = rest[1], rest[2:]
    if not rest or len(rest) > 3 or (group, rest[0]) not in KINDS:
        raise ApiFailure(404, "NotFound", "the server could not find the requested resource")
    key = (group, rest[0])
    if KINDS[key][2] != bool(namespace) and len(rest) > 1:
        raise ApiFailure(404, "NotFound", "the server could not find the requested resource")
    return key, namespace, rest[1] if len(rest) > 1 else None, rest[2] if len(rest) > 2 else None


def _verb(method: str, name: str | None, watch: bool) -> str:
    if method == "GET":
        return "watch" if watch else "get" if name else "list"
    return {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}[method]


def create_app(cluster: Cluster) -> FastAPI:
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)

    def failure(e: ApiFailure) -> JSONResponse:
        return JSONResponse(
            status(e.code, e.reason, e.message), status_code=e.code, media_type="application/json"
        )

    @app.api_route("/_test/{action}", methods=["GET", "POST", "DELETE"])
    async def control(action: str, request: Request) -> Response:
        try:
            if cluster.authenticate(request).name != ADMIN_USER:
                raise ApiFailure(403, "Forbidden", "test control is for the admin")
        except ApiFailure as e:
            return failure(e)
        if action == "requests" and request.method == "GET":
            return JSONResponse(cluster.requests)
        if action == "requests" and request.method == "DELETE":
            cluster.requests.clear()
        elif action == "compact":
            # Forget all history: a watch from any version handed out before now is too old.
            cluster.revision += 1
            cluster.compacted = cluster.revision
            cluster.history.clear()
        elif action == "drop-watches":
            cluster.drops += 1
            async with cluster.changed:
                cluster.changed.notify_all()
        else:
            return failure(ApiFailure(404, "NotFound", action))
        return JSONResponse({})

    @app.api_route("/{path:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
    async def api(path: str, request: Request) -> Response:
        try:
            return await handle(cluster, request, "/" + path)
        except ApiFailure as e:
            return failure(e)

    return app


async def handle(cluster: Cluster, request: Request, path: str) -> Response:
    user = cluster.authenticate(request)
    key, namespace, name, sub = _route(path)
    watch = request.query_params.get("watch") in ("true", "1")
    verb = _verb(request.method, name, watch)
    group, plural = key
    cluster.requests.append(
        {"method": request.method, "path": path, "query": dict(request.query_params), "user": user.name}
    )
    cluster.authorize(user, verb, group, f"{plural}/{sub}" if sub else plural, namespace or None, name)
    if verb in ("list", "watch"):
        if watch:
            return StreamingResponse(
                _watch(cluster, key, namespace or None, request), media_type="application/json"
            )
        kind, api_version, _ = KINDS[key]
        return JSONResponse(
            {
                "kind": kind + "List",
                "apiVersion": api_version,
                "metadata": {"resourceVersion": str(cluster.revision)},
                "items": cluster.listing(key, namespace or None),
            }
        )
    if verb == "get":
        assert name is not None
        return JSONResponse(cluster.get(key, namespace, name))
    if verb == "delete":
        raise ApiFailure(405, "MethodNotAllowed", "deletion is not implemented by the test API server")
    body = await request.json()
    if not isinstance(body, dict):
        raise ApiFailure(400, "BadRequest", "the body is not a JSON object")
    if verb == "create":
        if key == ("certificates.k8s.io", "certificatesigningrequests"):
            validate_csr_create(body, user)
        validate(key, namespace, body)
        return JSONResponse(await cluster.create(key, namespace, body), status_code=201)
    assert name is not None
    old = cluster.get(key, namespace, name)
    if verb == "update" and sub == "approval" and plural == "certificatesigningrequests":
        signer = old["spec"]["signerName"]
        cluster.authorize(user, "approve", "certificates.k8s.io", "signers", None, signer)
        new = copy.deepcopy(old)
        new["status"] = dict(new.get("status") or {}, conditions=approve_conditions(old, body))
        precondition = (body.get("metadata") or {}).get("resourceVersion")
        return JSONResponse(await cluster.replace(key, namespace, name, new, precondition))
    if sub is not None:
        raise ApiFailure(404, "NotFound", f"subresource {sub} is not implemented")
    if verb == "update":
        validate(key, namespace, body)
        precondition = (body.get("metadata") or {}).get("resourceVersion")
        return JSONResponse(await cluster.replace(key, namespace, name, body, precondition))
    content_type = request.headers.get("content-type", "").split(";")[0].strip()
    if content_type != "application/merge-patch+json":
        raise ApiFailure(
            415, "UnsupportedMediaType", f"the test API server only merges JSON ({content_type})"
        )
    precondition = (body.get("metadata") or {}).get("resourceVersion")
    new = merge_patch(old, body)
    validate(key, namespace, new)
    return JSONResponse(await cluster.replace(key, namespace, name, new, precondition))


async def _watch(
    cluster: Cluster, key: tuple[str, str], namespace: str | None, request: Request
) -> AsyncIterator[bytes]:
    def line(kind: str, obj: dict[str, Any]) -> bytes:
        return json.dumps({"type": kind, "object": obj}).encode() + b"\n"

    version = request.query_params.get("resourceVersion") or "0"
    timeout = int(request.query_params.get("timeoutSeconds") or DEFAULT_WATCH_SECONDS)
    deadline = time.monotonic() + timeout
    drops = cluster.drops
    if version == "0":
        since = cluster.revision
        for obj in cluster.listing(key, namespace):
            yield line("ADDED", obj)
    else:
        since = int(version)
        if since < cluster.compacted:
            gone = status(410, "Expired", f"too old resource version: {since} ({cluster.compacted})")
            yield line("ERROR", gone)
            return
    while True:
        for revision, event_key, kind, obj in list(cluster.history):
            ns = (obj.get("metadata") or {}).get("namespace")
            if revision > since and event_key == key and (namespace is None or ns == namespace):
                yield line(kind, obj)
                since = revision
        since = max(since, cluster.revision)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        async with cluster.changed:
            try:
                await asyncio.wait_for(cluster.changed.wait(), remaining)
            except TimeoutError:
                return
        if cluster.drops != drops:
            # Not a clean end: the connection is cut without the last chunk.
            raise ConnectionAbortedError("watch dropped by /_test/drop-watches")


def serve(config_path: Path) -> None:
    import uvicorn

    config = json.loads(config_path.read_text())
    tokens = {t: User(u["name"], tuple(u.get("groups", ()))) for t, u in config["tokens"].items()}
    cluster = Cluster(tokens, load_rules(Path(config.get("rbac", RBAC_FILE))))
    uvicorn.run(
        create_app(cluster),
        host="127.0.0.1",
        port=config["port"],
        ssl_certfile=config["cert"],
        ssl_keyfile=config["key"],
        log_level="warning",
        timeout_graceful_shutdown=1,
    )


# --- fixtures' side --------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def make_csr(
    key: ec.EllipticCurvePrivateKey,
    node: str,
    *,
    dns: tuple[str, ...] = (),
    ips: tuple[str, ...] = (),
    cn: str | None = None,
    org: str = "system:nodes",
) -> bytes:
    """A PEM CSR as a kubelet makes one: O=system:nodes, CN=system:node:<node>."""
    import ipaddress

    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, org),
                x509.NameAttribute(NameOID.COMMON_NAME, cn or f"system:node:{node}"),
            ]
        )
    )
    names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    names += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def fingerprint(key: ec.EllipticCurvePrivateKey) -> str:
    import hashlib

    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


@dataclasses.dataclass
class KubeApi:
    """A running test API server and what clients need to reach it."""

    process: subprocess.Popen[bytes]
    url: str
    tls: TlsFiles
    admin_token: str
    verifier_token: str
    kubeconfig: Path  # the verifier's: its service account token, the test CA
    log: Path

    def admin(self, **headers: str) -> httpx.Client:
        return httpx.Client(
            base_url=self.url,
            verify=self.tls.client_context(),
            headers={"Authorization": f"Bearer {self.admin_token}", **headers},
            timeout=10,
            trust_env=False,
        )

    def call(self, method: str, path: str, body: Any = None, **headers: str) -> Any:
        with self.admin(**headers) as client:
            r = client.request(method, path, json=body)
        assert r.status_code < 300, f"{method} {path}: {r.status_code} {r.text}"
        return r.json()

    def patch(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """A JSON merge patch, as the admin."""
        with self.admin() as client:
            r = client.patch(
                path, content=json.dumps(body), headers={"Content-Type": "application/merge-patch+json"}
            )
        assert r.status_code == 200, f"PATCH {path}: {r.status_code} {r.text}"
        result: dict[str, Any] = r.json()
        return result

    def create_node(
        self,
        name: str,
        *,
        addresses: list[dict[str, str]] | None = None,
        taints: list[dict[str, str]] | None = None,
        labels: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        body = {
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, **(labels or {})}},
            "spec": {
                "taints": taints if taints is not None else [{"key": "unverified", "effect": "NoSchedule"}]
            },
            "status": {"addresses": addresses or [{"type": "Hostname", "address": name}]},
        }
        result: dict[str, Any] = self.call("POST", "/api/v1/nodes", body)
        return result

    def create_csr(
        self,
        name: str,
        pem: bytes,
        *,
        signer: str = "kubernetes.io/kube-apiserver-client-kubelet",
        user: str = "system:bootstrap:abcdef",
        groups: tuple[str, ...] | None = None,
        usages: tuple[str, ...] | None = None,
    ) -> dict[str, Any]:
        if usages is None:
            usages = (
                ("digital signature", "client auth")
                if signer.endswith("client-kubelet")
                else ("digital signature", "server auth")
            )
        body = {
            "metadata": {"name": name},
            "spec": {"request": base64.b64encode(pem).decode(), "signerName": signer, "usages": list(usages)},
        }
        if groups is None:
            groups = ("system:nodes",) if user.startswith("system:node:") else ("system:bootstrappers",)
        headers = {"Impersonate-User": user}
        with self.admin(**headers) as client:
            r = client.post(
                "/apis/certificates.k8s.io/v1/certificatesigningrequests",
                json=body,
                headers=[("Impersonate-Group", g) for g in groups],
            )
        assert r.status_code == 201, r.text
        result: dict[str, Any] = r.json()
        return result

    def csr(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self.call(
            "GET", f"/apis/certificates.k8s.io/v1/certificatesigningrequests/{name}"
        )
        return result

    def node(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self.call("GET", f"/api/v1/nodes/{name}")
        return result

    def events(self) -> list[dict[str, Any]]:
        """In the order they were recorded."""
        items: list[dict[str, Any]] = self.call("GET", "/api/v1/namespaces/default/events")["items"]
        return sorted(items, key=lambda e: int(e["metadata"]["resourceVersion"]))

    def requests(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.call("GET", "/_test/requests")
        return result

    def clear_requests(self) -> None:
        self.call("DELETE", "/_test/requests")

    def compact(self) -> None:
        self.call("POST", "/_test/compact")

    def drop_watches(self) -> None:
        self.call("POST", "/_test/drop-watches")

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start(directory: Path) -> KubeApi:
    """Start a test API server on a free port, with a fresh CA, and wait until it answers."""
    import secrets

    directory.mkdir(parents=True, exist_ok=True)
    tls = write_tls(directory / "tls")
    admin_token, verifier_token = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    port = free_port()
    config = directory / "apiserver.json"
    config.write_text(
        json.dumps(
            {
                "port": port,
                "cert": str(tls.cert),
                "key": str(tls.key),
                "tokens": {
                    admin_token: {"name": ADMIN_USER, "groups": ["system:masters"]},
                    verifier_token: {
                        "name": VERIFIER_USER,
                        "groups": ["system:serviceaccounts", "system:serviceaccounts:attest-system"],
                    },
                },
            }
        )
    )
    url = f"https://127.0.0.1:{port}"
    kubeconfig = directory / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {"name": "test", "cluster": {"server": url, "certificate-authority": str(tls.ca_cert)}}
                ],
                "users": [{"name": "attest-verifier", "user": {"token": verifier_token}}],
                "contexts": [
                    {
                        "name": "test",
                        "context": {
                            "cluster": "test",
                            "user": "attest-verifier",
                            "namespace": "attest-system",
                        },
                    }
                ],
                "current-context": "test",
            }
        )
    )
    log = directory / "apiserver.log"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.kube_apiserver", str(config)],
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    api = KubeApi(process, url, tls, admin_token, verifier_token, kubeconfig, log)
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if process.poll() is not None:
            raise AssertionError(f"test API server exited {process.returncode}:\n{log.read_text()}")
        try:
            with api.admin() as client:
                if client.get("/api/v1/nodes").status_code == 200:
                    return api
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            api.stop()
            raise AssertionError(f"test API server did not start:\n{log.read_text()}")
        time.sleep(0.1)


def running(directory: Path) -> Iterator[KubeApi]:
    """For a fixture: a started server, stopped afterwards."""
    api = start(directory)
    try:
        yield api
    finally:
        api.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="the test Kubernetes API server (tests only)")
    parser.add_argument("config", type=Path)
    args = parser.parse_args(argv)
    serve(args.config)


if __name__ == "__main__":
    main()
