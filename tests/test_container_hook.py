"""The container launch hook: OCI state as CRI-O and containerd write it, and the log and PCR 23
on a real software TPM, including concurrent hooks and the crash windows between append and
extend."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from attest.agent import cli
from attest.agent.measure import (
    OciStateError,
    Reconciliation,
    active_banks,
    measure_container,
    parse_oci_state,
    read_container_log,
    reconcile_container_log,
)
from attest.containerlog import ContainerRecord, fold, parse_log
from attest.pcrselect import PcrSelection
from attest.tcg import hash_alg
from attest.tpm import Tpm, pcr_extend, pcr_read
from swtpm.instance import SwtpmInstance

ROOT = Path(__file__).resolve().parent.parent
NOW = dt.datetime(2024, 5, 1, 12, 0, 0, tzinfo=dt.UTC)
SHOP = "sha256:" + "5b" * 32
SHOP_INDEX = "sha256:" + "1d" * 32
PAUSE = "sha256:" + "7c" * 32
NGINX = "sha256:" + "e4" * 32
IMAGE_ID = "9f" * 32  # CRI-O's ImageRef today: the image ID, a digest of the config


def crio_state(
    cid: str = "a1" * 32,
    *,
    pod: str = "shop-7d9c4b6f5-x2x9q",
    namespace: str = "prod",
    container: str = "web",
    image: str = "ghcr.io/acme/shop:1.4",
    sandbox: bool = False,
    **annotations: str,
) -> dict[str, Any]:
    """The state CRI-O's runtime hands a createRuntime hook: runtime-spec State with the OCI
    config's annotations, as CRI-O (server/container_create*.go) fills them."""
    uid = "0c1f7b9e-8f7e-4c55-9a65-6f7b3d1e2a10"
    labels = {
        "io.kubernetes.pod.name": pod,
        "io.kubernetes.pod.namespace": namespace,
        "io.kubernetes.pod.uid": uid,
    }
    if not sandbox:
        labels["io.kubernetes.container.name"] = container
    name = f"k8s_{'POD' if sandbox else container}_{pod}_{namespace}_{uid}_0"
    a = {
        "io.container.manager": "cri-o",
        "io.kubernetes.container.hash": "6f1b0a3c",
        "io.kubernetes.container.restartCount": "0",
        "io.kubernetes.cri-o.Annotations": json.dumps({"io.kubernetes.container.hash": "6f1b0a3c"}),
        "io.kubernetes.cri-o.ContainerID": cid,
        "io.kubernetes.cri-o.ContainerType": "sandbox" if sandbox else "container",
        "io.kubernetes.cri-o.Created": "2024-05-01T12:00:00.123456789Z",
        "io.kubernetes.cri-o.Image": image,
        "io.kubernetes.cri-o.ImageName": image,
        "io.kubernetes.cri-o.ImageRef": IMAGE_ID,
        "io.kubernetes.cri-o.Labels": json.dumps(labels),
        "io.kubernetes.cri-o.LogPath": f"/var/log/pods/{namespace}_{pod}_{uid}/{container}/0.log",
        "io.kubernetes.cri-o.Metadata": json.dumps({"name": container}),
        "io.kubernetes.cri-o.Name": name,
        "io.kubernetes.cri-o.SandboxID": "5d" * 32,
        "io.kubernetes.cri-o.SandboxName": f"k8s_POD_{pod}_{namespace}_{uid}_0",
        "io.kubernetes.cri-o.TTY": "false",
        **labels,
        **annotations,
    }
    return {
        "ociVersion": "1.0.2-dev",
        "id": cid,
        "status": "creating",
        "pid": 4242,
        "bundle": f"/run/containers/storage/overlay-containers/{cid}/userdata",
        "annotations": a,
    }


def containerd_annotations(
    *,
    pod: str = "web-5c8d7",
    namespace: str = "default",
    container: str = "nginx",
    image: str = f"docker.io/library/nginx@{NGINX}",
    sandbox: bool = False,
) -> dict[str, str]:
    """What containerd's CRI plugin puts in the OCI config (internal/cri/annotations)."""
    a = {
        "io.kubernetes.cri.container-type": "sandbox" if sandbox else "container",
        "io.kubernetes.cri.sandbox-id": "66" * 32,
        "io.kubernetes.cri.sandbox-name": pod,
        "io.kubernetes.cri.sandbox-namespace": namespace,
        "io.kubernetes.cri.sandbox-uid": "4cad64d0-7a36-452a-8a08-bd3a694cdad5",
    }
    if sandbox:
        a["io.kubernetes.cri.sandbox-log-directory"] = f"/var/log/pods/{namespace}_{pod}"
        a["io.kubernetes.cri.podsandbox.image-name"] = image
    else:
        a["io.kubernetes.cri.container-name"] = container
        a["io.kubernetes.cri.image-name"] = image
    return a


def containerd_state(cid: str = "b2" * 32, **kw: Any) -> dict[str, Any]:
    return {
        "ociVersion": "1.2.0",
        "id": cid,
        "status": "creating",
        "pid": 5151,
        "bundle": f"/run/containerd/io.containerd.runtime.v2.task/k8s.io/{cid}",
        "annotations": containerd_annotations(**kw),
    }


def parse(state: dict[str, Any]) -> ContainerRecord:
    return parse_oci_state(json.dumps(state).encode(), now=NOW)


# --- OCI state -----------------------------------------------------------------------------


def test_crio_container_with_repo_digests() -> None:
    r = parse(
        crio_state(
            **{
                "io.kubernetes.cri-o.ImageRepoDigests": (
                    f"mirror.example/acme/shop@{SHOP_INDEX}, ghcr.io/acme/shop@{SHOP}"
                )
            }
        )
    )
    assert r == ContainerRecord(
        time="2024-05-01T12:00:00Z",
        container_id="a1" * 32,
        pod="shop-7d9c4b6f5-x2x9q",
        namespace="prod",
        container="web",
        image="ghcr.io/acme/shop:1.4",
        image_digest=SHOP,  # the digest under the image's own repository, not the first one
        runtime="cri-o",
    )


def test_crio_before_repo_digests_puts_repo_at_digest_in_image_ref() -> None:
    r = parse(crio_state(**{"io.kubernetes.cri-o.ImageRef": f"ghcr.io/acme/shop@{SHOP}"}))
    assert r.image_digest == SHOP


def test_crio_image_id_alone_is_not_a_manifest_digest() -> None:
    assert parse(crio_state()).image_digest == ""


def test_crio_pod_that_asked_for_a_digest_gets_that_digest() -> None:
    state = crio_state(
        image=f"ghcr.io/acme/shop@{SHOP_INDEX}",
        **{
            "io.kubernetes.cri-o.ImageName": "ghcr.io/acme/shop:1.4",
            "io.kubernetes.cri-o.ImageRepoDigests": f"ghcr.io/acme/shop@{SHOP}",
        },
    )
    r = parse(state)
    assert (r.image, r.image_digest) == ("ghcr.io/acme/shop:1.4", SHOP_INDEX)


def test_crio_sandbox_is_the_pods_pause_container() -> None:
    state = crio_state(
        sandbox=True,
        image="registry.k8s.io/pause:3.9",
        **{"io.kubernetes.cri-o.ImageRepoDigests": f"registry.k8s.io/pause@{PAUSE}"},
    )
    r = parse(state)
    assert (r.pod, r.namespace, r.container, r.image_digest) == ("shop-7d9c4b6f5-x2x9q", "prod", "POD", PAUSE)


def test_crio_ignores_containerd_keys_a_pod_could_set() -> None:
    # CRI-O copies a pod's own annotations into its containers: containerd's keys are the pod's.
    state = crio_state(
        **{
            "io.kubernetes.cri-o.ImageRepoDigests": f"ghcr.io/acme/shop@{SHOP}",
            **containerd_annotations(image=f"allowed.example/app@{NGINX}", pod="innocent"),
        }
    )
    r = parse(state)
    assert (r.runtime, r.pod, r.image, r.image_digest) == ("cri-o", "shop-7d9c4b6f5-x2x9q", r.image, SHOP)
    assert r.image == "ghcr.io/acme/shop:1.4"


def test_crio_prefers_its_own_labels_annotation() -> None:
    state = crio_state(**{"io.kubernetes.pod.name": "spoofed"})
    assert parse(state).pod == "shop-7d9c4b6f5-x2x9q"


def test_containerd_container_pinned_by_digest() -> None:
    r = parse(containerd_state())
    assert (r.runtime, r.pod, r.namespace, r.container) == ("containerd", "web-5c8d7", "default", "nginx")
    assert (r.image, r.image_digest) == (f"docker.io/library/nginx@{NGINX}", NGINX)


def test_containerd_carries_no_digest_for_a_tag() -> None:
    r = parse(containerd_state(image="docker.io/library/nginx:1.25"))
    assert (r.image, r.image_digest) == ("docker.io/library/nginx:1.25", "")


def test_containerd_sandbox() -> None:
    r = parse(containerd_state(sandbox=True, image=f"registry.k8s.io/pause:3.10@{PAUSE}"))
    assert (r.container, r.image_digest) == ("POD", PAUSE)


def test_annotations_missing_from_the_state_come_from_the_bundle(tmp_path: Path) -> None:
    config = {
        "ociVersion": "1.2.0",
        "process": {"args": ["/docker-entrypoint.sh", "nginx"], "cwd": "/"},
        "root": {"path": "rootfs"},
        "annotations": containerd_annotations(),
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    state = {"ociVersion": "1.2.0", "id": "c3" * 32, "status": "creating", "pid": 1, "bundle": str(tmp_path)}
    r = parse(state)
    assert (r.runtime, r.pod, r.image_digest) == ("containerd", "web-5c8d7", NGINX)


def test_a_container_outside_kubernetes_is_still_recorded(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"ociVersion": "1.2.0", "annotations": {"x": "y"}}))
    r = parse({"ociVersion": "1.2.0", "id": "plain-1", "status": "creating", "bundle": str(tmp_path)})
    assert (r.runtime, r.container_id, r.pod, r.image, r.image_digest) == ("oci", "plain-1", "", "", "")


@pytest.mark.parametrize(
    ("state", "message"),
    [
        (b"not json", "not JSON"),
        (b"[]", "not a JSON object"),
        (json.dumps({"ociVersion": "1.0.2", "status": "creating"}).encode(), "no container id"),
        (json.dumps({"id": "x", "annotations": {"a": 1}}).encode(), "map of strings"),
        (json.dumps({"id": "x", "annotations": {}}).encode(), "no bundle"),
        (json.dumps({"id": "x", "bundle": "/nonexistent/bundle"}).encode(), "cannot read"),
        (json.dumps(crio_state(pod="p" * 300)).encode(), "pod is longer"),
        (json.dumps(crio_state(cid="../../etc")).encode(), "not a container id"),
        (
            json.dumps(crio_state(**{"io.kubernetes.cri-o.Labels": "{"})).encode(),
            "io.kubernetes.cri-o.Labels is not JSON",
        ),
    ],
)
def test_bad_state_is_refused(state: bytes, message: str) -> None:
    with pytest.raises(OciStateError, match=message):
        parse_oci_state(state)


def test_cli_bad_input_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "state.json"
    bad.write_text('{"id": ')
    code = cli.main(
        [
            "measure-container",
            "--tcti",
            "swtpm:path=/nonexistent",
            "--container-log",
            str(tmp_path / "l"),
            "--state-file",
            str(bad),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1
    assert err.startswith("attest-agent: error: the OCI state is not JSON")
    assert not (tmp_path / "l").exists()


def test_cli_unreachable_tpm_fails_the_hook(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = tmp_path / "state.json"
    state.write_text(json.dumps(containerd_state()))
    code = cli.main(
        [
            "measure-container",
            "--tcti",
            "swtpm:path=/nonexistent",
            "--container-log",
            str(tmp_path / "l"),
            "--state-file",
            str(state),
        ]
    )
    assert code == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert read_container_log(tmp_path / "l") == b""  # nothing appended without the TPM


# --- on a TPM ------------------------------------------------------------------------------


def tpm_pcr23(tcti: str) -> dict[str, bytes]:
    with Tpm(tcti) as tpm:
        banks = active_banks(tpm)
        values = pcr_read(tpm, PcrSelection.of({b: [23] for b in banks}))
    return {b: v[23] for b, v in values.items()}


def replayed(log: Path) -> dict[str, bytes]:
    data = read_container_log(log)
    assert data is not None
    lines = [e.line for e in parse_log(data)]
    return {b: fold(lines, b)[-1] for b in ("sha1", "sha256")}


def test_three_containers_replay_to_the_tpms_pcr_23(swtpm: SwtpmInstance, tmp_path: Path) -> None:
    log = tmp_path / "run" / "attest-agent" / "containers.log"
    states = [crio_state(sandbox=True, cid="01" * 32), crio_state(cid="02" * 32), containerd_state()]
    for n, state in enumerate(states):
        done = measure_container(parse(state), log, swtpm.tcti)
        assert (done.index, done.banks, done.reconciliation) == (n, ("sha1", "sha256"), Reconciliation(n))
    assert tpm_pcr23(swtpm.tcti) == replayed(log)
    assert [e.record.container for e in parse_log(log.read_bytes())] == ["POD", "web", "nginx"]
    assert oct(log.stat().st_mode & 0o777) == "0o600"
    assert oct(log.parent.stat().st_mode & 0o777) == "0o700"


def test_concurrent_hooks_all_land_in_log_order(swtpm: SwtpmInstance, tmp_path: Path) -> None:
    log = tmp_path / "containers.log"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TSS2_LOG": "all+NONE"}
    argv = [sys.executable, "-m", "attest.agent.cli", "measure-container", "--tcti", swtpm.tcti]
    procs = [
        subprocess.Popen(
            [*argv, "--container-log", str(log)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        for _ in range(8)
    ]
    for i, p in enumerate(procs):
        assert p.stdin is not None
        p.stdin.write(json.dumps(containerd_state(cid=f"{i:02x}" * 32, pod=f"pod-{i}")).encode())
        p.stdin.close()
    for p in procs:
        assert p.wait(timeout=120) == 0
        assert p.stdout is not None
        assert p.stderr is not None
        assert (p.stdout.read(), p.stderr.read()) == (b"", b"")
        p.stdout.close()
        p.stderr.close()
    entries = parse_log(log.read_bytes())
    assert sorted(e.record.pod for e in entries) == [f"pod-{i}" for i in range(8)]
    assert tpm_pcr23(swtpm.tcti) == replayed(log)


def test_crash_between_append_and_extend_is_repaired(swtpm: SwtpmInstance, tmp_path: Path) -> None:
    log = tmp_path / "containers.log"
    measure_container(parse(crio_state(cid="01" * 32)), log, swtpm.tcti)
    # The hook died after its fsync: the record is logged, PCR 23 never saw it.
    with log.open("ab") as f:
        f.write(parse(crio_state(cid="02" * 32)).encode() + b"\n")
    assert tpm_pcr23(swtpm.tcti) != replayed(log)
    assert reconcile_container_log(log, swtpm.tcti) == Reconciliation(2, extended=1)
    assert tpm_pcr23(swtpm.tcti) == replayed(log)
    assert reconcile_container_log(log, swtpm.tcti) == Reconciliation(2)


def test_the_next_hook_repairs_a_crash_and_an_unfinished_line(
    swtpm: SwtpmInstance, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "containers.log"
    measure_container(parse(crio_state(cid="01" * 32)), log, swtpm.tcti)
    with log.open("ab") as f:
        f.write(parse(crio_state(cid="02" * 32)).encode() + b"\n")  # crash after append
    assert read_container_log(log) == log.read_bytes()
    with log.open("ab") as f:
        f.write(parse(crio_state(cid="03" * 32)).encode()[:57])  # crash inside the next append
    assert read_container_log(log) == log.read_bytes()[:-57]  # evidence never has half a record
    state = tmp_path / "state.json"
    state.write_text(json.dumps(crio_state(cid="04" * 32)))
    argv = [
        "measure-container",
        "--tcti",
        swtpm.tcti,
        "--container-log",
        str(log),
        "--state-file",
        str(state),
    ]
    assert cli.main(argv) == 0
    notes = capsys.readouterr().err.splitlines()
    assert notes == [
        "attest-agent: removed an unfinished last line (57 bytes) from the container log",
        "attest-agent: extended PCR 23 with the last container log record, which a crash had left out",
    ]
    assert [e.record.container_id for e in parse_log(log.read_bytes())] == ["01" * 32, "02" * 32, "04" * 32]
    assert tpm_pcr23(swtpm.tcti) == replayed(log)


def test_a_log_from_before_a_tpm_reset_is_set_aside(swtpm: SwtpmInstance, tmp_path: Path) -> None:
    log = tmp_path / "containers.log"
    for cid in ("01", "02"):
        measure_container(parse(crio_state(cid=cid * 32)), log, swtpm.tcti)
    old = log.read_bytes()
    swtpm.restart()  # a reboot, as far as PCR 23 is concerned
    done = measure_container(parse(crio_state(cid="03" * 32)), log, swtpm.tcti)
    assert done.reconciliation == Reconciliation(0, restarted=True)
    assert (tmp_path / "containers.log.previous").read_bytes() == old
    assert [e.record.container_id for e in parse_log(log.read_bytes())] == ["03" * 32]
    assert tpm_pcr23(swtpm.tcti) == replayed(log)


def test_pcr_23_extended_behind_the_logs_back_is_reported_not_hidden(
    swtpm: SwtpmInstance, tmp_path: Path
) -> None:
    log = tmp_path / "containers.log"
    measure_container(parse(crio_state(cid="01" * 32)), log, swtpm.tcti)
    with Tpm(swtpm.tcti) as tpm:
        pcr_extend(tpm, 23, {b: hash_alg(b).digest(b"not in the log") for b in ("sha1", "sha256")})
    done = measure_container(parse(crio_state(cid="02" * 32)), log, swtpm.tcti)
    assert done.reconciliation == Reconciliation(1, diverged=True)
    assert "warning" in done.reconciliation.notes()[0]
    assert len(parse_log(log.read_bytes())) == 2  # the container is still recorded
    assert tpm_pcr23(swtpm.tcti) != replayed(log)


def test_reading_a_log_that_does_not_exist_yet(tmp_path: Path) -> None:
    assert read_container_log(tmp_path / "none.log") is None
