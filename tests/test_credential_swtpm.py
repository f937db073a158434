"""MakeCredential here, TPM2_ActivateCredential in a real swtpm: the TPM releases the secret for
the AK it was made for, under the RSA-2048 and the ECC P-384 EK, and refuses anything else."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from attest.verify.credential import Credential, check_activation, make_credential
from attest.verify.quote import ak_name, check_ak_attributes
from attest.verify.tpmstructs import parse_public
from swtpm.instance import SwtpmInstance

EK_KINDS = ("EK-RSA2048", "EK-HIGH-ECC384")


class Session:
    """An ESAPI connection that flushes every handle it was given, whatever happens."""

    def __init__(self, esapi: Any) -> None:
        self.esapi = esapi
        self.handles: list[Any] = []

    def keep(self, handle: Any) -> Any:
        self.handles.append(handle)
        return handle


@contextmanager
def esapi(tpm: SwtpmInstance) -> Iterator[Session]:
    from tpm2_pytss import ESAPI, TPM2_CAP, TPM2_HT, TCTILdr

    tcti = TCTILdr.parse(tpm.tcti)
    try:
        s = Session(ESAPI(tcti))
        try:
            yield s
        finally:
            for handle in reversed(s.handles):
                s.esapi.flush_context(handle)
            # swtpm has no resource manager: whatever a test leaves loaded fills its slots.
            for kind in (TPM2_HT.TRANSIENT, TPM2_HT.LOADED_SESSION):
                _, data = s.esapi.get_capability(TPM2_CAP.HANDLES, kind << 24, 64)
                assert list(data.data.handles) == [], f"left loaded: {kind}"
            s.esapi.close()
    finally:
        tcti.close()


def create_ak(s: Session) -> tuple[Any, bytes]:
    """A restricted ECDSA signing key under an SRK, as the agent makes its AK."""
    from tpm2_pytss import ESYS_TR, TPM2B_PUBLIC, TPMA_OBJECT

    srk, *_ = s.esapi.create_primary(None, "ecc256:aes128cfb", ESYS_TR.OWNER)
    try:
        attrs = (
            TPMA_OBJECT.RESTRICTED
            | TPMA_OBJECT.SIGN_ENCRYPT
            | TPMA_OBJECT.FIXEDTPM
            | TPMA_OBJECT.FIXEDPARENT
            | TPMA_OBJECT.SENSITIVEDATAORIGIN
            | TPMA_OBJECT.USERWITHAUTH
        )
        template = TPM2B_PUBLIC.parse("ecc256:ecdsa-sha256:null", objectAttributes=attrs)
        private, public, *_ = s.esapi.create(srk, None, template)
        handle = s.keep(s.esapi.load(srk, private, public))
    finally:
        s.esapi.flush_context(srk)
    return handle, bytes(public.marshal())


def create_ek(s: Session, kind: str) -> tuple[Any, bytes]:
    from tpm2_pytss import ESYS_TR
    from tpm2_pytss.utils import NVReadEK, create_ek_template

    _, template = create_ek_template(kind, NVReadEK(s.esapi))
    handle, public, *_ = s.esapi.create_primary(None, template, ESYS_TR.ENDORSEMENT)
    s.keep(handle)
    return handle, bytes(public.marshal())


def activate(s: Session, kind: str, ak: Any, ek: Any, cred: Credential) -> bytes:
    from tpm2_pytss import ESYS_TR, TPM2_ALG, TPM2_SE, TPM2B_ENCRYPTED_SECRET, TPM2B_ID_OBJECT, TPMT_SYM_DEF

    blob, _ = TPM2B_ID_OBJECT.unmarshal(cred.id_object)
    secret, _ = TPM2B_ENCRYPTED_SECRET.unmarshal(cred.encrypted_secret)
    if kind != "EK-RSA2048":
        # High-range EKs set userWithAuth: the empty password authorizes them.
        return bytes(s.esapi.activate_credential(ak, ek, blob, secret))
    # The low-range EK's policy is PolicySecret(TPM_RH_ENDORSEMENT) (EK Credential Profile).
    session = s.esapi.start_auth_session(
        ESYS_TR.NONE, ESYS_TR.NONE, TPM2_SE.POLICY, TPMT_SYM_DEF(algorithm=TPM2_ALG.NULL), TPM2_ALG.SHA256
    )
    try:
        s.esapi.policy_secret(ESYS_TR.ENDORSEMENT, session)
        return bytes(s.esapi.activate_credential(ak, ek, blob, secret, session2=session))
    finally:
        s.esapi.flush_context(session)


def refused(call: Callable[[], bytes]) -> str:
    from tpm2_pytss import TSS2_Exception

    with pytest.raises(TSS2_Exception) as e:
        call()
    return str(e.value)


def test_our_ak_name_is_the_tpms(swtpm: SwtpmInstance) -> None:
    with esapi(swtpm) as s:
        ak, public = create_ak(s)
        assert ak_name(public) == bytes(s.esapi.tr_get_name(ak))
        check_ak_attributes(parse_public(public))


@pytest.mark.parametrize("kind", EK_KINDS)
def test_tpm_activates_our_credential(swtpm: SwtpmInstance, kind: str) -> None:
    secret = os.urandom(32)
    with esapi(swtpm) as s:
        ak, ak_public = create_ak(s)
        ek, ek_public = create_ek(s, kind)
        cred = make_credential(ek_public, ak_name(ak_public), secret)
        returned = activate(s, kind, ak, ek, cred)
    assert returned == secret
    check_activation(secret, returned)


@pytest.mark.parametrize("kind", EK_KINDS)
def test_tpm_refuses_a_credential_for_another_ak_name(swtpm: SwtpmInstance, kind: str) -> None:
    with esapi(swtpm) as s:
        ak, _ = create_ak(s)
        _, other_public = create_ak(s)
        ek, ek_public = create_ek(s, kind)
        cred = make_credential(ek_public, ak_name(other_public), b"not for you")
        error = refused(lambda: activate(s, kind, ak, ek, cred))
    assert "integrity" in error


def test_tpm_refuses_a_credential_for_another_ek(swtpm: SwtpmInstance) -> None:
    with esapi(swtpm) as s:
        ak, ak_public = create_ak(s)
        rsa_ek, _ = create_ek(s, "EK-RSA2048")
        _, ecc_public = create_ek(s, "EK-HIGH-ECC384")
        cred = make_credential(ecc_public, ak_name(ak_public), b"for the other EK")
        refused(lambda: activate(s, "EK-RSA2048", ak, rsa_ek, cred))


def test_tpm_refuses_a_tampered_credential(swtpm: SwtpmInstance) -> None:
    with esapi(swtpm) as s:
        ak, ak_public = create_ak(s)
        ek, ek_public = create_ek(s, "EK-HIGH-ECC384")
        cred = make_credential(ek_public, ak_name(ak_public), b"secret")
        tampered = Credential(cred.id_object[:-1] + bytes([cred.id_object[-1] ^ 1]), cred.encrypted_secret)
        error = refused(lambda: activate(s, "EK-HIGH-ECC384", ak, ek, tampered))
    assert "integrity" in error
