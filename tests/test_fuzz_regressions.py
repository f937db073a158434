"""One test per input that broke a parser's contract (fuzz/__init__.py): found by the fuzz
harnesses or by the input-bounds audit of issue 7, fixed in the parser, kept here inline."""

from __future__ import annotations

import struct
import uuid

import pytest

from attest.errors import ParseError
from attest.reasons import Reason
from attest.verify import efi, ekcert, imasig
from attest.verify.pcrs import load_pcr_file
from attest.verify.policy import load_policy
from webhook.kubelet_csr import CLIENT_SIGNER, MalformedKubeletCsr, parse_kubelet_csr

# Seven levels of ten aliases each: 10**7 list elements from 300 bytes once expanded.
ALIAS_BOMB = "a: &a [x,x,x,x,x,x,x,x,x,x]\n" + "".join(
    f"{b}: &{b} [{','.join([f'*{a}'] * 10)}]\n" for a, b in zip("abcdef", "bcdefg", strict=True)
)


def test_policy_of_deeply_nested_brackets() -> None:
    """Audit: PyYAML composes nodes recursively, so `boot: [[[[...` (5000 deep, 10 KB, far
    under MAX_POLICY_BYTES) escaped load_policy as RecursionError, an unhandled 500 on upload."""
    with pytest.raises(ParseError, match="nested deeper than") as e:
        load_policy("version: 1\nname: x\nboot: " + "[" * 5000 + "]" * 5000)
    assert e.value.code is Reason.POLICY_INVALID


def test_policy_of_deeply_nested_mappings() -> None:
    with pytest.raises(ParseError, match="nested deeper than") as e:
        load_policy("version: 1\nname: x\nboot: " + "{a: " * 3000 + "1" + "}" * 3000)
    assert e.value.code is Reason.POLICY_INVALID


def test_policy_alias_bomb_in_a_field_an_error_message_prints() -> None:
    """Audit: `version: *g` loaded (PyYAML shares the aliased list), then the error message's
    repr expanded all 10**7 elements: a 52 MB message and 0.7 CPU-seconds from a 300-byte upload,
    ten times more for each line added."""
    with pytest.raises(ParseError, match="aliases") as e:
        load_policy(ALIAS_BOMB + "version: *g\nname: x\n")
    assert e.value.code is Reason.POLICY_INVALID


def test_pcr_yaml_of_deeply_nested_brackets() -> None:
    """Audit: the same RecursionError from tpm2_pcrread YAML (64 KiB of `[` fit MAX_PCR_FILE)."""
    with pytest.raises(ParseError, match="nested deeper than") as e:
        load_pcr_file(b"sha256: " + b"[" * 60_000)
    assert e.value.code is Reason.PCR_VALUES_MALFORMED


def test_pcr_yaml_alias_bomb_as_a_pcr_value() -> None:
    """Audit: a bad entry's error message printed the value's repr: an alias bomb there expanded."""
    with pytest.raises(ParseError, match="aliases") as e:
        load_pcr_file((ALIAS_BOMB + "sha256: {0: *g}\n").encode())
    assert e.value.code is Reason.PCR_VALUES_MALFORMED


# A self-signed P-256 certificate whose version INTEGER was edited from 2 (v3) to 0x42.
CERT_VERSION_66 = bytes.fromhex(
    "3081eb308193a003020142020101300a06082a8648ce3d0403023000301e170d3230303130313030303030305a17"
    "0d3330303130313030303030305a30003059301306072a8648ce3d020106082a8648ce3d0301070342000428f1a4"
    "d7e2e449c804536d73c3b33d1b53995ce66c94fdc923355d2dbeb351015c34fbd9897d1fd83eae93f9157b76ab2b"
    "d1611e6fc36b03344059b67bac8872300a06082a8648ce3d040302034700304402203277638b588d2e1c394910cc"
    "309bcbb6d1838fb21e1a95596fcfb181269657b002203112cfa63dca40c2a4a2e1e3a92563b53085bf47d4e1a181"
    "7bfc00992328795b"
)


def test_efi_certificate_with_an_unknown_x509_version() -> None:
    """Fuzzer (eventlog harness, 250k executions): an X.509 entry of a db/KEK variable in PCR 7
    whose version is not 1-3 made cryptography raise InvalidVersion, which is no ValueError, out
    of Event.decoded: secure_boot_state and the event log's JSON failed with an internal error."""
    assert efi.certificate(CERT_VERSION_66).subject is None
    owner = bytes(16)
    entry = owner + CERT_VERSION_66
    header = struct.pack("<16sIII", uuid.UUID(efi.EFI_CERT_X509).bytes_le, 28 + len(entry), 0, len(entry))
    db = efi.signature_database(header + entry)
    assert db.lists[0].signatures[0].certificate is not None
    assert db.lists[0].signatures[0].certificate.subject is None


# A kubelet client CSR (CN=system:node:node3, P-256) from tests/data/k8s/admission with one bit
# of the key's point flipped: the PEM and the ASN.1 parse, the key does not decode.
CSR_BAD_POINT = b"""-----BEGIN CERTIFICATE REQUEST-----
MIHvMIGVAgEAMDMxFTATBgNVBAoMDHN5c3RlbTpub2RlczEaMBgGA1UEAwwRc3lz
dGVtOm5vZGU6bm9kZTMwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAASMPC0xYSKa
JMvJWZojyN6IG5ziPMxkMgSoFimTI5Q3eUBP/MeGLyHQh4uu3M6knJondA3ovVDL
DSoN2AvPMfDToAAwCgYIKoZIzj0EAwIDSQAwRgIhANlfpOZuuFKCPTMk9OU3JW1H
j80uWHaiAYYngalGQ8uwAiEA9ZAxwtW9KEzF7avHfmWlke9X8AP2zEhjaDT1MbuL
lsA=
-----END CERTIFICATE REQUEST-----
"""


def test_kubelet_csr_whose_key_does_not_decode() -> None:
    """Fuzzer (admission harness, 1.6k executions): cryptography decodes a CSR's key only when
    asked, so is_signature_valid raised ValueError("Invalid key") out of the admission decision:
    a 500 to the API server instead of admission_csr_malformed."""
    with pytest.raises(MalformedKubeletCsr, match="key or subject does not parse") as e:
        parse_kubelet_csr(CLIENT_SIGNER, CSR_BAD_POINT, ["digital signature", "client auth"])
    assert e.value.field == "spec.request"


# The same CSR with its key's algorithm OID edited from id-ecPublicKey (…2.1) to …2.2.
CSR_UNKNOWN_KEY_TYPE = b"""-----BEGIN CERTIFICATE REQUEST-----
MIHvMIGVAgEAMDMxFTATBgNVBAoMDHN5c3RlbTpub2RlczEaMBgGA1UEAwwRc3lz
dGVtOm5vZGU6bm9kZTMwWTATBgcqhkjOPQICBggqhkjOPQMBBwNCAASMPC0xYSKa
JMvJWZojyN6IG5ziPMxkMgSoFimTI5Q3eUBQ/MeGLyHQh4uu3M6knJondA3ovVDL
DSoN2AvPMfDToAAwCgYIKoZIzj0EAwIDSQAwRgIhANlfpOZuuFKCPTMk9OU3JW1H
j80uWHaiAYYngalGQ8uwAiEA9ZAxwtW9KEzF7avHfmWlke9X8AP2zEhjaDT1MbuL
lsA=
-----END CERTIFICATE REQUEST-----
"""


def test_kubelet_csr_of_an_unknown_key_type() -> None:
    """Fuzzer (admission harness, 5.6k executions, after the fix above): an unknown key
    algorithm makes cryptography raise UnsupportedAlgorithm, which is no ValueError either."""
    with pytest.raises(MalformedKubeletCsr, match="key or subject does not parse"):
        parse_kubelet_csr(CLIENT_SIGNER, CSR_UNKNOWN_KEY_TYPE, ["digital signature", "client auth"])


def test_ek_and_ima_certificates_with_an_unknown_x509_version() -> None:
    """Audit after the eventlog finding: the same InvalidVersion escaped the EK certificate a node
    enrolls with (a 500 instead of ek_cert_malformed) and IMA keys in a policy upload."""
    for load in (ekcert.load_ek_certificate, ekcert.load_ca_certificates):
        with pytest.raises(ParseError) as e:
            load(CERT_VERSION_66)
        assert e.value.code is Reason.EK_CERT_MALFORMED
    with pytest.raises(ParseError) as e:
        imasig.KeyRing.load([CERT_VERSION_66])
    assert e.value.code is Reason.POLICY_INVALID


# A self-signed P-256 certificate whose subject CN's UTF8String tag (0x0c) was edited to BIT STRING.
CERT_CN_BIT_STRING = bytes.fromhex(
    "3081f830819fa003020102020101300a06082a8648ce3d0403023000301e170d3230303130313030303030305a17"
    "0d3330303130313030303030305a300c310a300806035504030301783059301306072a8648ce3d020106082a8648"
    "ce3d0301070342000470a5252c26a864f7a101d288f2681b04ee2b6da7d48b9c1b90399870821a5cfe9199a650f5"
    "538a6235a2e822a9802e5b02c121faf5ae076a98dc10c28df8ea59300a06082a8648ce3d04030203480030450221"
    "00a6d89aea0b7195710fc053dcb1ba11e3a23b69f83056e8bf077229012999b0d102202e8fee17a5c54632309aef"
    "2c6bb3f8f72aafe6a9f03139700ca8b773d028162c"
)


def test_efi_certificate_with_a_bit_string_in_its_subject() -> None:
    """Fuzzer (eventlog harness, 72k executions after the InvalidVersion fix): a db certificate
    whose subject attribute is a BIT STRING loads, then reading its subject raises TypeError
    ("oid must be X500_UNIQUE_IDENTIFIER for BitString type") out of Event.decoded."""
    assert efi.certificate(CERT_CN_BIT_STRING).subject is None
    with pytest.raises(ParseError) as e:
        imasig.KeyRing.load([CERT_CN_BIT_STRING])
    assert e.value.code is Reason.POLICY_INVALID


# The same CSR with its version INTEGER edited from 0 to 5.
CSR_VERSION_5 = b"""-----BEGIN CERTIFICATE REQUEST-----
MIHvMIGVAgEFMDMxFTATBgNVBAoMDHN5c3RlbTpub2RlczEaMBgGA1UEAwwRc3lz
dGVtOm5vZGU6bm9kZTMwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAASMPC0xYSKa
JMvJWZojyN6IG5ziPMxkMgSoFimTI5Q3eUBP/MeGLyHQh4uu3M6knJondA3ovVDL
DSoN2AvPMfDToAAwCgYIKoZIzj0EAwIDSQAwRgIhANlfpOZuuFKCPTMk9OU3JW1H
j80uWHaiAYYngalGQ8uwAiEA9ZAxwtW9KEzF7avHfmWlke9X8AP2zEhjaDT1MbuL
lsA=
-----END CERTIFICATE REQUEST-----
"""


def test_kubelet_csr_of_an_unknown_version() -> None:
    """Fuzzer (admission harness, 306k executions after the fixes above): load_pem_x509_csr
    itself raises InvalidVersion, which the ValueError handler around it let through."""
    with pytest.raises(MalformedKubeletCsr, match="not a PEM certificate request"):
        parse_kubelet_csr(CLIENT_SIGNER, CSR_VERSION_5, ["digital signature", "client auth"])
