"""The shape of a kubelet's certificate signing request, checked once for both of its judges.

The admission webhook (webhook.admission, CSR CREATE) and the CSR approver (webhook.k8s.approver)
both accept only a CSR exactly as a kubelet files it for one of its two signers, by the same
rules, so that the approver never approves what admission would have refused (a CSR created
while the webhook was down is denied by the approver instead):

- `spec.request` is a PEM certificate request, signed by the key it names;
- its subject is exactly `O=system:nodes, CN=system:node:<valid node name>`;
- its key is EC P-256, or RSA of 2048 bits or more;
- `spec.usages` are exactly `digital signature` and `client auth` (client signer) or
  `server auth` (serving signer), plus `key encipherment` with an RSA key (an EC key cannot
  encipher): a kubelet never asks for more, nor for less;
- a client CSR names no subject alternative names; a serving CSR names at least one, and only
  DNS names and IP addresses.

No HTTP and no reason codes here: each caller denies a `MalformedKubeletCsr` with its own code
(`admission_csr_malformed`, `csr_malformed`) and keeps its own further rules (who may file it,
whether the SANs are the node's).
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
from collections.abc import Sequence
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from attest.errors import UNDECODABLE
from attest.wire import valid_node_name

CLIENT_SIGNER: Final = "kubernetes.io/kube-apiserver-client-kubelet"
SERVING_SIGNER: Final = "kubernetes.io/kubelet-serving"
NODE_USER_PREFIX: Final = "system:node:"
NODES_GROUP: Final = "system:nodes"
# The usage each signer is for; with "digital signature" (and "key encipherment" for RSA) the
# whole of what a kubelet puts in spec.usages.
SIGNER_USAGE: Final = {CLIENT_SIGNER: "client auth", SERVING_SIGNER: "server auth"}
SIGNERS: Final = frozenset(SIGNER_USAGE)
MIN_RSA_BITS: Final = 2048

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class MalformedKubeletCsr(Exception):
    """Not a CSR a kubelet files: `message` says what is wrong, `field` where (the CSR object's
    spec.request or spec.usages)."""

    def __init__(self, message: str, field: str = "spec.request") -> None:
        super().__init__(message)
        self.message = message
        self.field = field


@dataclasses.dataclass(frozen=True)
class KubeletCsr:
    """What a kubelet CSR asks for, once checked to be one."""

    signer: str
    node: str  # from the subject's CN
    fingerprint: str  # hex SHA-256 of the requested key's SubjectPublicKeyInfo (DER)
    dns_names: tuple[str, ...] = ()
    ips: tuple[IpAddress, ...] = ()


def spki_fingerprint(key: x509.Certificate | x509.CertificateSigningRequest) -> str:
    """Hex SHA-256 of the public key's SubjectPublicKeyInfo DER: what attestations bind."""
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


def wanted_usages(signer: str, key: object) -> list[str]:
    """spec.usages as a kubelet with this key asks `signer` for them."""
    wanted = ["digital signature", SIGNER_USAGE[signer]]
    if isinstance(key, rsa.RSAPublicKey):
        wanted.insert(1, "key encipherment")
    return wanted


def parse_kubelet_csr(signer: str, request: bytes, usages: Sequence[str]) -> KubeletCsr:
    """The CSR `request` (PEM) with `usages` for `signer`, checked to be what a kubelet files
    (module docstring); MalformedKubeletCsr when it is not."""
    if signer not in SIGNER_USAGE:
        raise MalformedKubeletCsr(f"{signer!r} is not a kubelet signer", "spec.signerName")
    try:
        csr = x509.load_pem_x509_csr(request)
    except UNDECODABLE:
        raise MalformedKubeletCsr("spec.request is not a PEM certificate request") from None
    try:
        # load_pem_x509_csr leaves the key and the subject undecoded (fuzz findings: a point off
        # the curve, an unknown key type, a name attribute of the wrong type).
        key = csr.public_key()
        signed = csr.is_signature_valid
        subject = csr.subject
    except UNDECODABLE:
        raise MalformedKubeletCsr("the certificate request's key or subject does not parse") from None
    if not signed:
        raise MalformedKubeletCsr("the certificate request is not signed by the key it names")

    cns = [a.value for a in subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    orgs = [a.value for a in subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)]
    cn = cns[0] if len(cns) == 1 and isinstance(cns[0], str) else ""
    node = cn.removeprefix(NODE_USER_PREFIX)
    if (
        len(list(subject)) != 2
        or orgs != [NODES_GROUP]
        or cn != NODE_USER_PREFIX + node
        or not valid_node_name(node)
    ):
        raise MalformedKubeletCsr(
            f"the subject is {subject.rfc4514_string()!r}, not exactly "
            f"O={NODES_GROUP}, CN={NODE_USER_PREFIX}<node name>"
        )

    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise MalformedKubeletCsr(f"an RSA key of {key.key_size} bits, less than {MIN_RSA_BITS}")
    elif not (isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1)):
        raise MalformedKubeletCsr(f"the key is neither EC P-256 nor RSA of {MIN_RSA_BITS} bits or more")

    wanted = wanted_usages(signer, key)
    if sorted(usages) != sorted(wanted):  # exact, duplicates included
        raise MalformedKubeletCsr(
            f"usages {list(usages)} are not what a kubelet asks {signer} for ({', '.join(wanted)})",
            "spec.usages",
        )

    try:
        names = list(csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    except x509.ExtensionNotFound:
        names = []
    except ValueError:  # a duplicated or undecodable extension
        raise MalformedKubeletCsr("the certificate request's extensions do not parse") from None
    dns = [n.value for n in names if isinstance(n, x509.DNSName)]
    # An IPAddress name can carry a network too: no kubelet certificate names one.
    ips = [n.value for n in names if isinstance(n, x509.IPAddress) and isinstance(n.value, IpAddress)]
    if signer == CLIENT_SIGNER and names:
        raise MalformedKubeletCsr("a kubelet client certificate request names no subject alternative names")
    if signer == SERVING_SIGNER and (not names or len(dns) + len(ips) != len(names)):
        raise MalformedKubeletCsr(
            "a kubelet serving certificate request names DNS names or IP addresses, and only those"
        )
    return KubeletCsr(
        signer=signer,
        node=node,
        fingerprint=spki_fingerprint(csr),
        dns_names=tuple(dns),
        ips=tuple(ips),
    )
