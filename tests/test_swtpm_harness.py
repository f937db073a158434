"""The swtpm harness itself: provisioning, EK certificates, instances, power cycles."""

from __future__ import annotations

import gc
import os
import signal
import socket
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from swtpm import SwtpmError
from swtpm.instance import SwtpmInstance
from swtpm.provision import (
    EK_CERT_ECC_P256,
    EK_CERT_ECC_P384,
    EK_CERT_RSA2048,
    PLATFORM_CERT,
    LocalCa,
    TpmState,
)

pytestmark = pytest.mark.swtpm

SwtpmFactory = Callable[..., list[SwtpmInstance]]

REPO = Path(__file__).resolve().parent.parent


def _tool(*argv: str) -> str:
    env = {**os.environ, "TSS2_LOG": "all+NONE"}
    result = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=30, check=False)
    assert result.returncode == 0, f"{argv[0]} failed: {result.stderr}"
    return result.stdout


def _nv_read(tcti: str, index: int, out: Path) -> bytes:
    _tool("tpm2_nvread", "-T", tcti, "-C", "o", f"0x{index:08x}", "-o", str(out))
    return out.read_bytes()


def _reset_count(tcti: str) -> int:
    doc = yaml.safe_load(_tool("tpm2_readclock", "-T", tcti))
    return int(doc["clock_info"]["reset_count"])


def _pcr16(tcti: str) -> str:
    doc = yaml.safe_load(_tool("tpm2_pcrread", "-T", tcti, "sha256:16"))
    return f"{doc['sha256'][16]:064x}"


def test_provisioning_writes_nothing_outside_its_directories(tmp_path: Path) -> None:
    """HOME, XDG_* and TMPDIR of the caller point at sentinels that must stay empty."""
    sentinel = tmp_path / "sentinel"
    env_dirs = {
        "HOME": sentinel / "home",
        "XDG_CONFIG_HOME": sentinel / "config",
        "XDG_DATA_HOME": sentinel / "data",
        "XDG_RUNTIME_DIR": sentinel / "run",
        "TMPDIR": sentinel / "tmp",
    }
    for d in env_dirs.values():
        d.mkdir(parents=True)
    work = tmp_path / "w"
    script = textwrap.dedent(
        f"""
        from swtpm.provision import provision_ca, provision_tpm
        ca = provision_ca({str(work / "ca")!r})
        provision_tpm({str(work / "state")!r}, ca)
        """
    )
    var_lib = Path("/var/lib/swtpm-localca")
    var_lib_before = var_lib.exists()
    env = {
        **os.environ,
        **{k: str(v) for k, v in env_dirs.items()},
        "TSS2_LOG": "all+NONE",
        "PYTHONPATH": str(REPO),
    }
    subprocess.run([sys.executable, "-c", script], env=env, check=True, timeout=120, cwd=work.parent)

    assert [
        p for p in sentinel.rglob("*") if p.is_file() or (p.is_dir() and p not in env_dirs.values())
    ] == []
    assert var_lib.exists() == var_lib_before
    written = {p.relative_to(work).as_posix() for p in work.rglob("*")}
    assert written <= {
        "ca",
        "ca/.lock.swtpm-localca",
        "ca/certserial",
        "ca/issuercert.pem",
        "ca/signkey.pem",
        "ca/swtpm-localca-rootca-cert.pem",
        "ca/swtpm-localca-rootca-privkey.pem",
        "ca/swtpm-localca.conf",
        "ca/swtpm-localca.options",
        "ca/swtpm_setup.conf",
        "state",
        "state/tpm2-00.permall",
    }, written


def test_ek_and_platform_certificates_chain_to_the_local_root(swtpm: SwtpmInstance, tmp_path: Path) -> None:
    assert swtpm.ca is not None
    root = x509.load_pem_x509_certificate(swtpm.ca.root_cert.read_bytes())
    inter = x509.load_pem_x509_certificate(swtpm.ca.intermediate_cert.read_bytes())
    inter.verify_directly_issued_by(root)
    root.verify_directly_issued_by(root)

    ek_sizes = {EK_CERT_RSA2048: 2048, EK_CERT_ECC_P256: 256, EK_CERT_ECC_P384: 384}
    for index in (*ek_sizes, PLATFORM_CERT):
        der = tmp_path / f"{index:08x}.der"
        cert = x509.load_der_x509_certificate(_nv_read(swtpm.tcti, index, der))
        cert.verify_directly_issued_by(inter)
        key = cert.public_key()
        if index == EK_CERT_RSA2048:
            assert isinstance(key, rsa.RSAPublicKey)
            assert key.key_size == ek_sizes[index]
        elif index in ek_sizes:
            assert isinstance(key, ec.EllipticCurvePublicKey)
            assert key.key_size == ek_sizes[index]
        # openssl, an implementation independent of cryptography's, must agree on the whole chain.
        pem = tmp_path / f"{index:08x}.pem"
        _tool("openssl", "x509", "-inform", "der", "-in", str(der), "-out", str(pem))
        out = _tool(
            "openssl",
            "verify",
            "-CAfile",
            str(swtpm.ca.root_cert),
            "-untrusted",
            str(swtpm.ca.intermediate_cert),
            str(pem),
        )
        assert out.strip().endswith(": OK")


def test_p256_ek_certificate_certifies_the_standard_template_key(
    swtpm: SwtpmInstance, tmp_path: Path
) -> None:
    from tpm2_pytss import ESAPI
    from tpm2_pytss.constants import ESYS_TR
    from tpm2_pytss.types import TPM2B_SENSITIVE_CREATE
    from tpm2_pytss.utils import NVReadEK, create_ek_template

    with ESAPI(swtpm.tcti) as esys:
        _, template = create_ek_template("EK-ECC256", NVReadEK(esys))
        handle, public, _, _, _ = esys.create_primary(TPM2B_SENSITIVE_CREATE(), template, ESYS_TR.ENDORSEMENT)
        esys.flush_context(handle)
    p256 = x509.load_der_x509_certificate(_nv_read(swtpm.tcti, EK_CERT_ECC_P256, tmp_path / "p256"))
    rsa_cert = x509.load_der_x509_certificate(_nv_read(swtpm.tcti, EK_CERT_RSA2048, tmp_path / "rsa"))
    key = p256.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    numbers = key.public_numbers()
    assert numbers.x.to_bytes(32, "big") == bytes(public.publicArea.unique.ecc.x)
    assert numbers.y.to_bytes(32, "big") == bytes(public.publicArea.unique.ecc.y)
    # Same TPM identity and specification claims as the certificate swtpm_setup issued.
    for oid in ("2.5.29.17", "2.5.29.9"):  # subjectAltName, subjectDirectoryAttributes
        ext = x509.ObjectIdentifier(oid)
        assert (
            p256.extensions.get_extension_for_oid(ext).value
            == rsa_cert.extensions.get_extension_for_oid(ext).value
        )
    assert (
        x509.ObjectIdentifier("2.23.133.8.1")
        in p256.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    )


def test_template_copies_share_the_ek_and_distinct_tpms_do_not(
    swtpm_factory: SwtpmFactory, tmp_path: Path
) -> None:
    a, b = swtpm_factory(2)
    (c,) = swtpm_factory(1, distinct=True)
    certs = [_nv_read(t.tcti, EK_CERT_RSA2048, tmp_path / f"ek{i}") for i, t in enumerate((a, b, c))]
    assert certs[0] == certs[1]
    assert certs[2] != certs[0]
    assert a.ca == c.ca


def test_instances_run_in_parallel_with_separate_pcrs(swtpm_factory: SwtpmFactory) -> None:
    tpms = swtpm_factory(3)
    assert len({t.pid for t in tpms}) == 3
    assert len({t.tcti for t in tpms}) == 3
    _tool("tpm2_pcrextend", "-T", tpms[0].tcti, "16:sha256=" + "11" * 32)
    values = [_pcr16(t.tcti) for t in tpms]
    assert values[0] != "00" * 32
    assert values[1] == values[2] == "00" * 32


def test_restart_keeps_nv_resets_pcrs_and_counts_the_reset(swtpm: SwtpmInstance) -> None:
    tcti = swtpm.tcti
    _tool("tpm2_nvdefine", "-T", tcti, "-C", "o", "-s", "8", "-a", "ownerread|ownerwrite", "0x01500001")
    subprocess.run(
        ["tpm2_nvwrite", "-T", tcti, "-C", "o", "-i", "-", "0x01500001"],
        input=b"persists",
        check=True,
        env={**os.environ, "TSS2_LOG": "all+NONE"},
        timeout=30,
    )
    _tool("tpm2_pcrextend", "-T", tcti, "16:sha256=" + "22" * 32)
    resets = _reset_count(tcti)
    pid = swtpm.pid

    swtpm.restart()

    assert swtpm.tcti == tcti
    assert swtpm.pid != pid
    assert _pcr16(tcti) == "00" * 32
    assert _reset_count(tcti) == resets + 1
    out = subprocess.run(
        ["tpm2_nvread", "-T", tcti, "-C", "o", "0x01500001"],
        capture_output=True,
        check=True,
        env={**os.environ, "TSS2_LOG": "all+NONE"},
        timeout=30,
    )
    assert out.stdout == b"persists"


def test_start_without_startup_waits_for_tpm2_startup(swtpm: SwtpmInstance) -> None:
    swtpm.restart(startup=False)
    env = {**os.environ, "TSS2_LOG": "all+NONE"}
    refused = subprocess.run(
        ["tpm2_pcrread", "-T", swtpm.tcti, "sha256:0"], env=env, capture_output=True, timeout=30, check=False
    )
    assert refused.returncode != 0
    _tool("tpm2_startup", "-T", swtpm.tcti, "-c")
    _tool("tpm2_pcrread", "-T", swtpm.tcti, "sha256:0")


def test_stop_succeeds_while_a_client_holds_the_data_socket(swtpm: SwtpmInstance) -> None:
    pid = swtpm.pid
    assert pid is not None
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as holder:
        holder.connect(str(swtpm.socket_path))
        swtpm.stop()
    assert not swtpm.running
    assert not Path(f"/proc/{pid}").exists()


def test_stop_kills_a_swtpm_that_does_not_answer(swtpm: SwtpmInstance) -> None:
    """A hung swtpm (here: stopped by SIGSTOP, so it ignores its control channel and SIGTERM) is killed."""
    pid = swtpm.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    swtpm.stop(timeout=0.5)
    assert not swtpm.running
    assert not Path(f"/proc/{pid}").exists()


def test_forgotten_instance_is_stopped_and_its_run_dir_removed(
    swtpm_template: TpmState, tmp_path: Path
) -> None:
    from swtpm.provision import copy_state

    state = copy_state(swtpm_template, tmp_path / "state")
    inst = SwtpmInstance(state.state_dir)
    inst.start()
    pid, run_dir = inst.pid, inst.run_dir
    assert pid is not None
    assert run_dir.is_dir()
    del inst
    gc.collect()
    assert not Path(f"/proc/{pid}").exists()
    assert not run_dir.exists()


def test_context_manager_and_attach(swtpm_template: TpmState, tmp_path: Path) -> None:
    from swtpm.provision import copy_state

    state = copy_state(swtpm_template, tmp_path / "state")
    run_dir = Path(os.environ.get("TMPDIR", "/tmp")) / f"swtpm-test-{os.getpid()}-{id(tmp_path):x}"
    try:
        with SwtpmInstance(state.state_dir, run_dir=run_dir) as inst:
            other = SwtpmInstance.attach(state.state_dir, run_dir)
            assert other.pid == inst.pid
            assert other.running
            with pytest.raises(SwtpmError, match="already running"):
                inst.start()
        assert not other.running
    finally:
        for leftover in run_dir.glob("*"):
            leftover.unlink()
        run_dir.rmdir()


def test_refuses_socket_paths_longer_than_sun_path(tmp_path: Path) -> None:
    with pytest.raises(SwtpmError, match="longer than"):
        SwtpmInstance(tmp_path, run_dir=tmp_path / ("x" * 120))


def test_refuses_to_start_an_unprovisioned_state(tmp_path: Path) -> None:
    inst = SwtpmInstance(tmp_path / "empty")
    try:
        with pytest.raises(SwtpmError, match="no provisioned"):
            inst.start()
    finally:
        inst.close()


def test_local_ca_paths(swtpm_ca: LocalCa) -> None:
    assert swtpm_ca.root_cert.is_file()
    assert swtpm_ca.intermediate_cert.is_file()
    assert not list(swtpm_ca.dir.glob(".scratch-*"))
