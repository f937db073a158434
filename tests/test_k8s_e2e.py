"""The bootstrap flow end to end, every part a real process: a kubelet's CSR on the test API
server, `attest-agent once --bind-key` on a software TPM (swtpm), `attest-verifier serve` with
its controllers pointed at the test API server. The CSR whose key the agent bound is approved
and the Node untainted; a CSR for a key nobody bound stays pending."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.kube_apiserver import KubeApi, fingerprint, make_csr, running
from tests.test_agent_client import make_pki
from tests.test_agent_e2e import AGENT, Verifier, _node
from tests.test_k8s_controllers import decision


@pytest.fixture
def kube(tmp_path: Path) -> Iterator[KubeApi]:
    yield from running(tmp_path / "kube")


def _until(what: str, check: Callable[[], Any], log: Path, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen; verifier log:\n{log.read_text()[-4000:]}")
        time.sleep(0.2)


def test_bound_kubelet_key_is_approved_and_the_node_untainted(
    kube: KubeApi, tmp_path: Path, swtpm_ca: Any, swtpm: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The verifier process takes --kubeconfig from its environment, as in a config map.
    monkeypatch.setenv("ATTEST_VERIFIER_KUBECONFIG", str(kube.kubeconfig))
    verifier = Verifier(tmp_path / "verifier", make_pki(tmp_path / "verifier" / "tls"), swtpm_ca)
    verifier.start()
    try:
        node = _node("node-a", swtpm, tmp_path)
        verifier.apply_policy(node.policy())

        # The kubelet's TLS bootstrap: its key in kubelet-client.key.tmp, its CSR filed with a
        # bootstrap token, its Node registered with the taint.
        key = ec.generate_private_key(ec.SECP256R1())
        key_file = node.dir / "kubelet-client.key.tmp"
        key_file.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            )
        )
        kube.create_csr("node-csr-a", make_csr(key, "node-a"))
        kube.create_csr("node-csr-unbound", make_csr(ec.generate_private_key(ec.SECP256R1()), "node-a"))
        kube.create_node("node-a")

        argv = [
            *AGENT,
            "once",
            *node.args(verifier, "--bind-key", str(key_file), "--bind-key", "/absent.pem"),
        ]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        assert result.returncode == 0, result.stderr

        approved = _until("approval", lambda: decision(kube.csr("node-csr-a")), verifier.log)
        assert (approved["type"], approved["reason"]) == ("Approved", "AttestedNode")
        assert fingerprint(key) in approved["message"]

        def untainted() -> bool:
            n = kube.node("node-a")
            labels = n["metadata"].get("labels") or {}
            return labels.get("node-restriction.kubernetes.io/attested") == "true" and not n["spec"].get(
                "taints"
            )

        _until("untainting", untainted, verifier.log)
        assert decision(kube.csr("node-csr-unbound")) is None  # waits for its grace, never approved
        # The node controller may see the Node before the agent's verdict arrives (NotAttested on
        # registration) or after; either way the story ends Attested, with nothing failed between.
        assert [e["reason"] for e in kube.events()] in (["Attested"], ["NotAttested", "Attested"])
    finally:
        verifier.stop()
