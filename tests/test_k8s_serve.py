"""The controllers' options, and `attest-verifier serve` running them as a real process against
the test API server: a Node gets its state, SIGTERM stops everything cleanly and releases the
Lease."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from attest.errors import UsageError
from tests.kube_apiserver import KubeApi, free_port, running
from tests.tlsfixtures import write_tls
from webhook.config import load_settings
from webhook.k8s.client import controllers_enabled, load_config

VERIFIER = Path(sys.executable).with_name("attest-verifier")
LEASE = "/apis/coordination.k8s.io/v1/namespaces/attest-system/leases/attest-verifier"


@pytest.fixture
def kube(tmp_path: Path) -> Iterator[KubeApi]:
    yield from running(tmp_path / "kube")


def test_options(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("{}")
    flags = {
        "kubeconfig": str(kubeconfig),
        "controllers": False,
        "csr_grace": "90",
        "node_taint_noexecute": True,
        "lease_name": "attest-verifier.controllers",
    }
    s = load_settings(flags, {})
    assert s.kubeconfig == kubeconfig
    assert s.controllers is False
    assert s.csr_grace == dt.timedelta(seconds=90)
    assert s.node_taint_noexecute is True
    assert s.lease_name == "attest-verifier.controllers"
    env = load_settings({}, {"ATTEST_VERIFIER_CONTROLLERS": "yes", "ATTEST_VERIFIER_CSR_GRACE": "5"})
    assert (env.controllers, env.csr_grace) == (True, dt.timedelta(seconds=5))
    defaults = load_settings({}, {})
    assert (defaults.controllers, defaults.csr_grace, defaults.lease_name) == (
        None,
        dt.timedelta(minutes=10),
        "attest-verifier",
    )
    for bad in ({"lease_name": "Not_A_Name"}, {"csr_grace": "0"}, {"kubeconfig": str(tmp_path / "none")}):
        with pytest.raises(UsageError):
            load_settings(bad, {})


def test_controllers_default_on_in_a_cluster_or_with_a_kubeconfig(tmp_path: Path) -> None:
    account = tmp_path / "serviceaccount"
    account.mkdir()
    assert controllers_enabled(None, None, {}, account) is False
    assert controllers_enabled(None, tmp_path / "kubeconfig", {}, account) is True
    cluster = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    assert controllers_enabled(None, None, cluster, account) is False  # no token mounted
    (account / "token").write_text("token")
    assert controllers_enabled(None, None, cluster, account) is True
    assert controllers_enabled(False, None, cluster, account) is False
    assert controllers_enabled(True, None, {}, account) is True


def test_unusable_kube_configuration_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="in-cluster"):
        load_config(None, tmp_path / "no-serviceaccount")
    broken = tmp_path / "kubeconfig"
    broken.write_text("clusters: [")
    with pytest.raises(UsageError, match="kubeconfig"):
        load_config(broken)
    broken.write_text("apiVersion: v1\nkind: Config\nclusters: []\ncontexts: []\nusers: []\n")
    with pytest.raises(UsageError, match="kubeconfig"):
        load_config(broken)


def _serve(tmp_path: Path, *extra: str) -> tuple[subprocess.Popen[bytes], Path]:
    tls = write_tls(tmp_path / "verifier-tls")
    log = tmp_path / "verifier.log"
    argv = [
        str(VERIFIER),
        "serve",
        "--listen",
        f"127.0.0.1:{free_port()}",
        "--tls-cert",
        str(tls.cert),
        "--tls-key",
        str(tls.key),
        "--database",
        f"sqlite:///{tmp_path / 'verifier.db'}",
        *extra,
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ATTEST_VERIFIER_", "KUBERNETES_"))}
    with log.open("wb") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env), log


def test_serve_runs_the_controllers_and_stops_them_cleanly(kube: KubeApi, tmp_path: Path) -> None:
    kube.create_node("node-a", taints=[])  # never attested: must end up tainted and labelled false
    process, log = _serve(tmp_path, "--kubeconfig", str(kube.kubeconfig))
    try:
        deadline = time.monotonic() + 30
        while True:
            node = kube.node("node-a")
            if (node["metadata"].get("labels") or {}).get(
                "node-restriction.kubernetes.io/attested"
            ) == "false":
                break
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        assert [t["key"] for t in node["spec"]["taints"]] == ["unverified"]
        assert kube.call("GET", LEASE)["spec"]["holderIdentity"]
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            raise AssertionError(f"verifier ignored SIGTERM:\n{log.read_text()}") from None
    assert code == 0, log.read_text()
    assert kube.call("GET", LEASE)["spec"]["holderIdentity"] == ""  # released for the next replica
    assert "Kubernetes controllers on" in log.read_text()


def test_serve_refuses_an_unusable_kubeconfig(tmp_path: Path) -> None:
    bad = tmp_path / "kubeconfig"
    bad.write_text("current-context: nowhere\n")
    process, log = _serve(tmp_path, "--kubeconfig", str(bad))
    assert process.wait(timeout=20) == 2, log.read_text()
    assert log.read_text().startswith("attest-verifier: --kubeconfig")


def test_serve_without_a_cluster_runs_no_controllers(tmp_path: Path) -> None:
    process, log = _serve(tmp_path)
    try:
        deadline = time.monotonic() + 30
        while "serving https://" not in log.read_text():
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        assert "Kubernetes controllers off" in log.read_text()
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0, log.read_text()
