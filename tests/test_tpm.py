"""The node-side TPM layer against real swtpm instances."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from attest.agent.state import load_or_create_ak
from attest.errors import TpmError
from attest.pcrselect import PcrSelection
from attest.tpm import (
    Tpm,
    activate_credential,
    create_ak,
    create_ek,
    pcr_extend,
    pcr_read,
    quote,
    read_ek_certificates,
)

pytestmark = pytest.mark.swtpm


def _loaded_handles(tpm: Tpm) -> list[int]:
    """Transient objects and sessions still occupying the TPM's slots."""
    from tpm2_pytss import TPM2_CAP, TPM2_HT

    out: list[int] = []
    for ht in (TPM2_HT.TRANSIENT, TPM2_HT.LOADED_SESSION, TPM2_HT.SAVED_SESSION):
        _, data = tpm.esapi.get_capability(TPM2_CAP.HANDLES, ht << 24, 64)
        out += [int(h) for h in data.data.handles]
    return out


def _make_credential(
    ek_public: bytes, ak_public: bytes, secret: bytes, name: bytes | None = None
) -> tuple[bytes, bytes]:
    # tpm2-pytss' own MakeCredential: an implementation independent of the verifier's,
    # so these tests exercise the agent side on its own.
    from tpm2_pytss import TPM2B_PUBLIC
    from tpm2_pytss.utils import make_credential

    ek, _ = TPM2B_PUBLIC.unmarshal(ek_public)
    ak, _ = TPM2B_PUBLIC.unmarshal(ak_public)
    blob, enc = make_credential(ek, secret, name if name is not None else ak.get_name())
    return bytes(blob.marshal()), bytes(enc.marshal())


def test_reads_rsa_and_ecc_ek_certificates_issued_by_the_local_ca(swtpm: Any) -> None:
    with Tpm(swtpm.tcti) as tpm:
        certs = {c.kind: c for c in read_ek_certificates(tpm)}
    assert {"EK-RSA2048", "EK-HIGH-ECC384"} <= set(certs)
    issuer = x509.load_pem_x509_certificate(swtpm.ca.intermediate_cert.read_bytes())
    for c in certs.values():
        cert = c.certificate()
        assert cert.issuer == issuer.subject
        cert.verify_directly_issued_by(issuer)


@pytest.mark.parametrize("kind", ["EK-RSA2048", "EK-HIGH-ECC384"])
def test_created_ek_is_the_certified_key(swtpm: Any, kind: str) -> None:
    with Tpm(swtpm.tcti) as tpm, create_ek(tpm, kind) as ek:
        assert ek.certificate is not None
        assert ek.certificate.kind == kind
        # EK Credential Profile: low-range templates need PolicySecret, high-range ones allow empty auth.
        assert ek.needs_policy is (kind == "EK-RSA2048")


def test_ek_certificate_for_another_key_is_refused(swtpm_factory: Any) -> None:
    """A certificate copied from another TPM must not vouch for this TPM's EK."""
    from tpm2_pytss import ESYS_TR, TPM2B_NV_PUBLIC, TPMA_NV, TPMS_NV_PUBLIC

    a, b = swtpm_factory(2, distinct=True)
    with Tpm(a.tcti) as tpm:
        foreign = next(c for c in read_ek_certificates(tpm) if c.kind == "EK-RSA2048").der
    with Tpm(b.tcti) as tpm:
        esapi = tpm.esapi
        index = 0x01C00002
        handle = esapi.tr_from_tpmpublic(index)
        esapi.nv_undefine_space(handle, auth_handle=ESYS_TR.RH_PLATFORM)
        attrs = (
            TPMA_NV.PPWRITE
            | TPMA_NV.PPREAD
            | TPMA_NV.OWNERREAD
            | TPMA_NV.AUTHREAD
            | TPMA_NV.PLATFORMCREATE
            | TPMA_NV.NO_DA
            | TPMA_NV.WRITEDEFINE
        )
        pub = TPM2B_NV_PUBLIC(
            nvPublic=TPMS_NV_PUBLIC(nvIndex=index, nameAlg=0x000B, attributes=attrs, dataSize=len(foreign))
        )
        handle = esapi.nv_define_space(None, pub, auth_handle=ESYS_TR.RH_PLATFORM)
        for off in range(0, len(foreign), 512):
            esapi.nv_write(handle, foreign[off : off + 512], off, auth_handle=ESYS_TR.RH_PLATFORM)
        with pytest.raises(TpmError, match="not the key in its certificate"), create_ek(tpm, "EK-RSA2048"):
            pass
        assert _loaded_handles(tpm) == []


@pytest.mark.parametrize(
    ("ek_kind", "ak_alg"), [("EK-RSA2048", "ecc"), ("EK-RSA2048", "rsa"), ("EK-HIGH-ECC384", "ecc")]
)
def test_credential_activation_releases_the_secret_only_for_the_right_ak(
    swtpm: Any, ek_kind: str, ak_alg: str
) -> None:
    with Tpm(swtpm.tcti) as tpm:
        with create_ek(tpm, ek_kind) as ek:
            ek_public = ek.public
        ak = create_ak(tpm, ak_alg)
        blob, enc = _make_credential(ek_public, ak.public, b"verifier secret!")
        assert activate_credential(tpm, ak, blob, enc, ek_kind) == b"verifier secret!"

        # A credential made for another key's name: the TPM's integrity check fails.
        other = create_ak(tpm, ak_alg)
        blob, enc = _make_credential(
            ek_public, other.public, b"verifier secret!", name=b"\x00\x0b" + b"\x11" * 32
        )
        with pytest.raises(TpmError, match="activating the credential"):
            activate_credential(tpm, ak, blob, enc, ek_kind)
        assert _loaded_handles(tpm) == []


def test_ak_is_reused_after_agent_and_tpm_restart(swtpm: Any, tmp_path: Path) -> None:
    with Tpm(swtpm.tcti) as tpm:
        ak, created = load_or_create_ak(tpm, tmp_path)
    assert created
    assert (tmp_path / "ak.json").stat().st_mode & 0o777 == 0o600
    swtpm.restart()
    with Tpm(swtpm.tcti) as tpm:
        again, created = load_or_create_ak(tpm, tmp_path)
        assert not created
        assert again == ak
        q = quote(tpm, again, b"\x01" * 32, PcrSelection.parse("sha256:0-7"))
        assert _loaded_handles(tpm) == []
    _checkquote(tmp_path, ak.public, q, "01" * 32)


def test_pcr_read_beyond_eight_and_extend_all_banks(swtpm: Any) -> None:
    from attest.tcg import hash_alg

    sel = PcrSelection.parse("sha1:0-23+sha256:0-23")
    with Tpm(swtpm.tcti) as tpm:
        before = pcr_read(tpm, sel)
        assert all(len(v) == 24 for v in before.values())
        assert before["sha256"][17] == b"\xff" * 32  # PC Client: DRTM PCRs reset to ones
        digests = {bank: hash_alg(bank).digest(b"measured") for bank in ("sha1", "sha256")}
        pcr_extend(tpm, 16, digests)
        after = pcr_read(tpm, sel)
    for bank, d in digests.items():
        assert after[bank][16] == hash_alg(bank).digest(before[bank][16] + d)
        assert {i: v for i, v in after[bank].items() if i != 16} == {
            i: v for i, v in before[bank].items() if i != 16
        }


def _checkquote(tmp: Path, ak_public: bytes, q: Any, nonce_hex: str) -> subprocess.CompletedProcess[str]:
    from attest.agent.artifacts import write_quote_artifacts

    out = tmp / "artifacts"
    write_quote_artifacts(q, ak_public, out)
    return subprocess.run(
        [
            "tpm2_checkquote",
            "-u",
            out / "ak.pub",
            "-m",
            out / "quote.msg",
            "-s",
            out / "quote.sig",
            "-f",
            out / "pcrs.bin",
            "-g",
            "sha256",
            "-q",
            nonce_hex,
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )


def test_agent_quote_command_output_passes_tpm2_checkquote(swtpm: Any, tmp_path: Path) -> None:
    from attest.agent.cli import main

    out = tmp_path / "q"
    nonce = "c0ffee" * 10
    rc = main(
        [
            "quote",
            "--tcti",
            swtpm.tcti,
            "--state-dir",
            str(tmp_path / "state"),
            "--nonce",
            nonce,
            "--pcrs",
            "sha1:0-7+sha256:0-9,23",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    args = [
        "tpm2_checkquote",
        "-u",
        out / "ak.pub",
        "-m",
        out / "quote.msg",
        "-s",
        out / "quote.sig",
        "-f",
        out / "pcrs.bin",
        "-g",
        "sha256",
    ]
    ok = subprocess.run([*args, "-q", nonce], check=False, capture_output=True, text=True, timeout=30)
    assert ok.returncode == 0, ok.stderr
    # The same artifacts with another nonce, or one changed PCR value, must not pass.
    bad_nonce = subprocess.run(
        [*args, "-q", "c0ffee"], check=False, capture_output=True, text=True, timeout=30
    )
    assert bad_nonce.returncode != 0
    pcrs = bytearray((out / "pcrs.bin").read_bytes())
    pcrs[132 + 4 + 4 + 2] ^= 1  # first byte of the first digest
    (out / "pcrs.bin").write_bytes(bytes(pcrs))
    bad_pcr = subprocess.run([*args, "-q", nonce], check=False, capture_output=True, text=True, timeout=30)
    assert bad_pcr.returncode != 0


def test_agent_quote_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from attest.agent.cli import main

    rc = main(
        [
            "quote",
            "--tcti",
            f"swtpm:path={tmp_path}/absent.sock",
            "--state-dir",
            str(tmp_path),
            "--nonce",
            "00",
            "--out",
            str(tmp_path / "o"),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1
    assert "Traceback" not in err
    for bad in (
        ["--nonce", "xyz"],
        ["--nonce", "00", "--pcrs", "sha999:0"],
        ["--nonce", "00", "--pcrs", "sha256:24"],
    ):
        with pytest.raises(SystemExit) as exit_:
            main(["quote", *bad, "--out", str(tmp_path)])
        assert exit_.value.code == 2
        assert "Traceback" not in capsys.readouterr().err


def test_quote_over_a_simulated_boot_checks_out_with_tpm2_tools(swtpm_booted: Any, tmp_path: Path) -> None:
    """The agent's quote of a measured boot: tpm2_checkquote accepts it, and the PCR values it
    signed are the ones tpm2_eventlog replays from the boot's event log."""
    import yaml

    from attest.agent.cli import main
    from attest.verify.pcrs import load_pcr_file

    out = tmp_path / "q"
    nonce = "b007" * 8
    assert main(["quote", "--tcti", swtpm_booted.tpm.tcti, "--state-dir", str(tmp_path / "state"),
                 "--nonce", nonce, "--pcrs", "sha1:0-9+sha256:0-9", "--out", str(out)]) == 0  # fmt: skip
    checked = subprocess.run(
        ["tpm2_checkquote", "-u", out / "ak.pub", "-m", out / "quote.msg", "-s", out / "quote.sig",
         "-f", out / "pcrs.bin", "-g", "sha256", "-q", nonce],
        check=False, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stderr
    quoted = load_pcr_file((out / "pcrs.bin").read_bytes())
    replay = subprocess.run(
        ["tpm2_eventlog", str(swtpm_booted.eventlog_path)],
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    )
    replayed = yaml.safe_load(replay.stdout)["pcrs"]
    for bank in ("sha1", "sha256"):
        for pcr in range(10):
            value = replayed[bank][pcr]
            # tpm2_eventlog prints PCRs as YAML hex integers: leading zero bytes are lost.
            expected = (value if isinstance(value, int) else int(str(value), 16)).to_bytes(
                len(quoted[bank][pcr]), "big"
            )
            assert quoted[bank][pcr] == expected, (bank, pcr)
