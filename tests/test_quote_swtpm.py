"""Quotes made by tpm2-tools on a real swtpm must verify here, in every PCR file format, and
tampered copies of those real files must be refused with the right reason."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from attest.errors import ParseError
from attest.pcrselect import PcrSelection
from attest.reasons import Reason
from attest.verify.pcrs import PcrValues, load_pcr_file, parse_pcrread_yaml, parse_tools_serialized
from attest.verify.quote import QuoteResult, ak_name, compare_clock, load_ak, verify_quote
from attest.verify.tpmstructs import parse_public
from swtpm.instance import SwtpmInstance
from swtpm.provision import TpmState, copy_state
from swtpm.tools import run_tool

NONCE = bytes.fromhex("5eedf00d0123456789abcdef")
PCRS = "0,1,2,3,4,5,6,7"
EIGHT = PcrSelection.parse("sha256:0-7")
PERSISTENT_AK = "0x81000020"


@dataclass(frozen=True)
class Artifacts:
    tpm: SwtpmInstance
    dir: Path

    def tool(self, *argv: str) -> str:
        return run_tool(self.tpm, *argv, cwd=self.dir)

    def read(self, name: str) -> bytes:
        return (self.dir / name).read_bytes()

    def verify(
        self,
        ak: str,
        quote: str = "",
        *,
        pcrs: str = "",
        nonce: bytes = NONCE,
        selection: PcrSelection = EIGHT,
        pcr_values: PcrValues | None = None,
        allow_sha1: bool = False,
    ) -> QuoteResult:
        """Verify quote files ``<quote>.msg/.sig`` under ``<ak>.pub``, with the PCR values given
        or read from ``pcrs`` (default ``<quote>.pcrs``, as tpm2_quote -o wrote it)."""
        quote = quote or ak
        if pcr_values is None:
            pcr_values = load_pcr_file(self.read(pcrs or f"{quote}.pcrs"))
        return verify_quote(
            self.read(f"{ak}.pub"),
            self.read(f"{quote}.msg"),
            self.read(f"{quote}.sig"),
            nonce=nonce,
            selection=selection,
            pcr_values=pcr_values,
            allow_sha1=allow_sha1,
        )


@pytest.fixture(scope="module")
def art(swtpm_template: TpmState, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Artifacts]:
    # Made once per module: four AKs (two RSA) take about a second, and every test but the last only
    # reads them. `swtpm` is per test, so this starts its own copy of the shared template instead.
    state = copy_state(swtpm_template, tmp_path_factory.mktemp("swtpm") / "state")
    with SwtpmInstance(state.state_dir, ca=state.ca) as tpm:
        art = Artifacts(tpm, tmp_path_factory.mktemp("quote"))
        w, t = art.dir, art.tool
        t("tpm2_createek", "-c", "ek.ctx", "-G", "rsa", "-u", "ek.pub")
        # Measurements, so the quoted values are not all the reset value.
        for pcr, byte in ((0, "11"), (4, "44"), (7, "77")):
            t("tpm2_pcrextend", f"{pcr}:sha1={byte * 20},sha256={byte * 32}")
        for ak, alg, scheme in (("ecc", "ecc", "ecdsa"), ("ecc2", "ecc", "ecdsa"), ("rsa", "rsa", "rsassa")):
            t("tpm2_createak", "-C", "ek.ctx", "-c", f"{ak}.ctx", "-G", alg, "-g", "sha256", "-s", scheme,
              "-u", f"{ak}.pub", "-n", f"{ak}.name")  # fmt: skip
        t("tpm2_createak", "-C", "ek.ctx", "-c", "pss.ctx", "-G", "rsa", "-g", "sha256", "-s", "rsapss",
          "-u", "pss.pub", "-n", "pss.name")  # fmt: skip
        for ak, extra in (("ecc", []), ("rsa", []), ("pss", ["--scheme", "rsapss"])):
            t("tpm2_quote", "-c", f"{ak}.ctx", "-l", f"sha256:{PCRS}", "-q", NONCE.hex(), "-g", "sha256",
              "-m", f"{ak}.msg", "-s", f"{ak}.sig", "-o", f"{ak}.pcrs", *extra)  # fmt: skip
        t("tpm2_quote", "-c", "ecc.ctx", "-l", "sha1:0,4+sha256:0,4", "-q", NONCE.hex(), "-g", "sha256",
          "-m", "mixed.msg", "-s", "mixed.sig", "-o", "mixed.pcrs")  # fmt: skip
        (w / "pcrread.yaml").write_text(t("tpm2_pcrread", f"sha256:{PCRS}", "-o", "pcrread.values"))
        # A real attestation that is not a quote, signed by the same AK.
        t("tpm2_certify", "-c", "ecc.ctx", "-C", "ecc.ctx", "-g", "sha256", "-o", "certify.msg",
          "-s", "certify.sig")  # fmt: skip
        (w / "certify.pcrs").write_bytes((w / "ecc.pcrs").read_bytes())
        t("tpm2_readpublic", "-c", "ecc.ctx", "-o", "readpublic.pub")
        t("tpm2_evictcontrol", "-C", "o", "-c", "ecc.ctx", PERSISTENT_AK)
        yield art


# --- genuine ------------------------------------------------------------------------------


@pytest.mark.parametrize("ak", ["ecc", "rsa", "pss"])
def test_tpm2_tools_quotes_verify(art: Artifacts, ak: str) -> None:
    result = art.verify(ak)
    assert result.ok, result.failures
    assert result.pcrs == parse_tools_serialized(art.read(f"{ak}.pcrs"))
    assert result.pcrs["sha256"][0] != bytes(32)


def test_quote_verifies_with_pcrread_yaml_and_values_files(art: Artifacts) -> None:
    yaml_values = parse_pcrread_yaml(art.read("pcrread.yaml").decode())
    assert art.verify("ecc", pcr_values=yaml_values).ok
    assert art.verify("ecc", pcrs="pcrread.yaml").ok
    values = load_pcr_file(art.read("pcrread.values"), EIGHT)
    assert values == yaml_values
    assert art.verify("ecc", pcr_values=values).ok


@pytest.mark.parametrize("ak", ["ecc", "ecc2", "rsa", "pss"])
def test_ak_name_matches_tpm2_createak(art: Artifacts, ak: str) -> None:
    assert ak_name(art.read(f"{ak}.pub")) == art.read(f"{ak}.name")


def test_tpm2_readpublic_output_is_the_same_ak(art: Artifacts) -> None:
    assert parse_public(art.read("readpublic.pub")) == parse_public(art.read("ecc.pub"))


def test_sha1_bank_is_refused_unless_allowed(art: Artifacts) -> None:
    sel = PcrSelection.parse("sha1:0,4+sha256:0,4")
    assert set(art.verify("ecc", "mixed", selection=sel).reasons) == {Reason.QUOTE_SHA1_NOT_ALLOWED}
    allowed = art.verify("ecc", "mixed", selection=sel, allow_sha1=True)
    assert allowed.ok, allowed.failures
    assert set(allowed.pcrs) == {"sha1", "sha256"}


# --- tampered copies of the real files ------------------------------------------------------


def flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :]


def copy_quote(
    art: Artifacts, src: str, dst: str, *, msg: bytes | None = None, sig: bytes | None = None
) -> str:
    (art.dir / f"{dst}.msg").write_bytes(msg if msg is not None else art.read(f"{src}.msg"))
    (art.dir / f"{dst}.sig").write_bytes(sig if sig is not None else art.read(f"{src}.sig"))
    (art.dir / f"{dst}.pcrs").write_bytes(art.read(f"{src}.pcrs"))
    return dst


@pytest.mark.parametrize("ak", ["ecc", "rsa", "pss"])
def test_flipped_signature_byte(art: Artifacts, ak: str) -> None:
    sig = art.read(f"{ak}.sig")
    q = copy_quote(art, ak, f"{ak}-badsig", sig=flip(sig, len(sig) - 5))
    assert set(art.verify(ak, q).reasons) == {Reason.QUOTE_SIGNATURE_INVALID}


def test_flipped_nonce_byte(art: Artifacts) -> None:
    msg = art.read("ecc.msg")
    q = copy_quote(art, "ecc", "badnonce", msg=flip(msg, msg.index(NONCE) + 5))
    assert set(art.verify("ecc", q).reasons) == {Reason.QUOTE_NONCE_MISMATCH, Reason.QUOTE_SIGNATURE_INVALID}


@pytest.mark.parametrize("nonce", [bytes(12), NONCE[:-1], NONCE + b"\0", NONCE[1:]])
def test_wrong_nonce_or_prefix(art: Artifacts, nonce: bytes) -> None:
    assert set(art.verify("ecc", nonce=nonce).reasons) == {Reason.QUOTE_NONCE_MISMATCH}


def test_trailing_bytes(art: Artifacts) -> None:
    q = copy_quote(art, "ecc", "longmsg", msg=art.read("ecc.msg") + b"\0")
    with pytest.raises(ParseError) as e:
        art.verify("ecc", q)
    assert e.value.code is Reason.QUOTE_MALFORMED
    q = copy_quote(art, "ecc", "longsig", sig=art.read("ecc.sig") + b"\0")
    with pytest.raises(ParseError) as e:
        art.verify("ecc", q)
    assert e.value.code is Reason.QUOTE_SIGNATURE_MALFORMED


def test_pcr_value_changed(art: Artifacts) -> None:
    real = parse_tools_serialized(art.read("ecc.pcrs"))
    lied = PcrValues({"sha256": {**real["sha256"], 7: bytes(32)}})
    result = art.verify("ecc", pcr_values=lied)
    assert set(result.reasons) == {Reason.PCR_DIGEST_MISMATCH}
    assert result.pcrs == PcrValues()


def test_selection_differs_from_request(art: Artifacts) -> None:
    for asked in ("sha256:0-6", "sha256:0-7,10", "sha384:0-7"):
        reasons = set(art.verify("ecc", selection=PcrSelection.parse(asked)).reasons)
        assert reasons == {Reason.QUOTE_PCR_SELECTION_MISMATCH}, asked


def test_another_aks_public_key(art: Artifacts) -> None:
    assert set(art.verify("ecc2", "ecc").reasons) == {Reason.QUOTE_SIGNATURE_INVALID}


def test_edited_magic_and_type_report_their_own_codes(art: Artifacts) -> None:
    msg = art.read("ecc.msg")
    q = copy_quote(art, "ecc", "badmagic", msg=flip(msg, 3))
    assert set(art.verify("ecc", q).reasons) == {Reason.QUOTE_BAD_MAGIC, Reason.QUOTE_SIGNATURE_INVALID}
    q = copy_quote(art, "ecc", "badtype", msg=msg[:4] + b"\x80\x17" + msg[6:])
    assert set(art.verify("ecc", q).reasons) == {Reason.QUOTE_WRONG_TYPE, Reason.QUOTE_SIGNATURE_INVALID}


def test_real_certify_structure_is_not_a_quote(art: Artifacts) -> None:
    """TPM2_Certify output, validly signed by the AK: only its type is wrong."""
    result = art.verify("ecc", "certify", nonce=bytes.fromhex("00ff55aa"))  # tpm2_certify's default qualifier
    assert set(result.reasons) == {Reason.QUOTE_WRONG_TYPE}


def test_rsa_signature_scheme_swapped(art: Artifacts) -> None:
    sig = art.read("rsa.sig")
    assert sig[:2] == b"\x00\x14"
    q = copy_quote(art, "rsa", "as-pss", sig=b"\x00\x16" + sig[2:])
    assert set(art.verify("rsa", q).reasons) == {Reason.QUOTE_SIGNATURE_SCHEME_MISMATCH}
    # and a genuine RSAPSS signature is refused under the RSASSA AK's public area
    assert set(art.verify("rsa", "pss").reasons) == {Reason.QUOTE_SIGNATURE_SCHEME_MISMATCH}


# --- clock ---------------------------------------------------------------------------------


def test_reboot_between_quotes_is_detected(art: Artifacts) -> None:
    t = art.tool
    before = art.verify("ecc")
    t("tpm2_quote", "-c", PERSISTENT_AK, "-l", f"sha256:{PCRS}", "-q", NONCE.hex(), "-g", "sha256",
      "-m", "later.msg", "-s", "later.sig", "-o", "later.pcrs")  # fmt: skip
    later = art.verify("ecc", "later")
    assert later.ok, later.failures
    same_boot = compare_clock(before.clock_info, later.clock_info)
    assert (same_boot.reboot, same_boot.failures) == (False, ())

    # Power-cycle the TPM with no orderly shutdown: swtpm stops, starts again, Startup(CLEAR).
    art.tpm.restart(orderly=False)
    t("tpm2_quote", "-c", PERSISTENT_AK, "-l", f"sha256:{PCRS}", "-q", NONCE.hex(), "-g", "sha256",
      "-m", "rebooted.msg", "-s", "rebooted.sig", "-o", "rebooted.pcrs")  # fmt: skip
    rebooted = art.verify("ecc", "rebooted")
    assert rebooted.ok, rebooted.failures
    assert rebooted.pcrs["sha256"][0] == bytes(32)  # the measurements are gone with the reset
    change = compare_clock(later.clock_info, rebooted.clock_info)
    assert change.reboot
    assert not change.failures
    assert compare_clock(rebooted.clock_info, later.clock_info).failures  # and never the other way
    assert load_ak(art.read("ecc.pub")).name == art.read("ecc.name")
