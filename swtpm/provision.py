"""Provision software TPMs whose EK certificates chain to a local CA, as a manufacturer's would.

`provision_ca(dir)` makes the CA (root and intermediate, by swtpm_localca); `provision_tpm(state, ca)`
manufactures one TPM with swtpm_setup: RSA-2048 and ECC P-384 EK certificates and a platform
certificate, plus an ECC P-256 EK certificate that swtpm_setup 0.7.1 does not make.

Nothing is left outside the caller's directories: swtpm_setup and swtpm_localca are run with
HOME, XDG_* and TMPDIR pointed into a scratch directory that is removed afterwards. The one
exception while it runs: when that directory is too deep for a Unix socket path, the swtpm
serving the P-256 step puts its sockets in a temp directory of its own, removed when it stops.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from swtpm import SwtpmError, require_binary
from swtpm.instance import SwtpmInstance

# TCG EK Credential Profile 2.0: the low-range EK certificate indices.
EK_CERT_RSA2048 = 0x01C00002
EK_CERT_ECC_P256 = 0x01C0000A
EK_CERT_ECC_P384 = 0x01C00016
# swtpm_setup stores the platform certificate here.
PLATFORM_CERT = 0x01C08000

_SETUP_TIMEOUT = 60.0
_STATE_FILE = "tpm2-00.permall"


@dataclass(frozen=True)
class LocalCa:
    """The swtpm_localca certificate authority kept in one directory."""

    dir: Path

    @property
    def root_cert(self) -> Path:
        """The self-signed root: what a verifier trusts, like a TPM manufacturer's root."""
        return self.dir / "swtpm-localca-rootca-cert.pem"

    @property
    def intermediate_cert(self) -> Path:
        """The issuing CA, signed by the root; it signs every EK and platform certificate."""
        return self.dir / "issuercert.pem"

    @property
    def config(self) -> Path:
        return self.dir / "swtpm-localca.conf"

    @property
    def options(self) -> Path:
        return self.dir / "swtpm-localca.options"

    @property
    def setup_config(self) -> Path:
        return self.dir / "swtpm_setup.conf"


@dataclass(frozen=True)
class TpmState:
    """A manufactured TPM: its swtpm state directory and the CA that certified its EKs."""

    state_dir: Path
    ca: LocalCa
    ek_cert_indices: tuple[int, ...]


def provision_ca(ca_dir: str | os.PathLike[str]) -> LocalCa:
    """Make (or reuse) the local CA in `ca_dir`; its root and intermediate exist on return."""
    ca = LocalCa(Path(ca_dir).resolve())
    ca.dir.mkdir(parents=True, exist_ok=True)
    ca.config.write_text(
        f"statedir = {ca.dir}\n"
        f"signingkey = {ca.dir / 'signkey.pem'}\n"
        f"issuercert = {ca.intermediate_cert}\n"
        f"certserial = {ca.dir / 'certserial'}\n"
    )
    ca.options.write_text("--platform-manufacturer X\n--platform-version 2.1\n--platform-model swtpm\n")
    ca.setup_config.write_text(
        f"create_certs_tool = {require_binary('swtpm_localca')}\n"
        f"create_certs_tool_config = {ca.config}\n"
        f"create_certs_tool_options = {ca.options}\n"
        "active_pcr_banks = sha1,sha256\n"
    )
    if not (ca.root_cert.is_file() and ca.intermediate_cert.is_file()):
        # swtpm_localca creates its CA on first use only: issue one throwaway certificate for a
        # key of our own so the CA exists before any TPM does.
        key = ec.generate_private_key(ec.SECP256R1()).public_key().public_numbers()
        with _scratch(ca.dir) as scratch:
            _issue_ek_cert(ca, scratch, key.x, key.y, _SpecParams.swtpm_defaults())
    return ca


def provision_tpm(state_dir: str | os.PathLike[str], ca: LocalCa, *, ecc_p256_ek: bool = True) -> TpmState:
    """Manufacture a TPM in the empty or missing `state_dir`, certified by `ca` (about 1 s).

    EK certificates: RSA-2048 (0x01c00002), ECC P-384 (0x01c00016) and, with `ecc_p256_ek`,
    ECC P-256 (0x01c0000a); platform certificate at 0x01c08000. PCR banks sha1 and sha256.
    The RSA and P-384 EKs are also persisted (0x81010001, 0x81010016), as swtpm_setup does.
    """
    state = Path(state_dir).resolve()
    state.mkdir(parents=True, exist_ok=True)
    if any(state.iterdir()):
        raise SwtpmError(f"{state} is not empty: refusing to overwrite a TPM state")
    with _scratch(ca.dir) as scratch:
        logfile = scratch / "swtpm_setup.log"
        argv = [
            require_binary("swtpm_setup"),
            "--tpm2",
            "--tpm-state",
            str(state),
            "--create-ek-cert",
            "--create-platform-cert",
            "--config",
            str(ca.setup_config),
            "--pcr-banks",
            "sha1,sha256",
            "--logfile",
            str(logfile),
        ]
        require_binary("swtpm")
        _run(argv, scratch, logfile)
        indices = [EK_CERT_RSA2048, EK_CERT_ECC_P384]
        if ecc_p256_ek:
            _add_ecc_p256_ek_cert(state, ca, scratch)
            indices.insert(1, EK_CERT_ECC_P256)
    (state / ".lock").unlink(missing_ok=True)
    return TpmState(state, ca, tuple(indices))


def copy_state(template: TpmState, state_dir: str | os.PathLike[str]) -> TpmState:
    """A second copy of a manufactured TPM: same EKs and certificates, its own NV and PCRs.

    Copying is what makes one provisioning per test session enough; two copies must not be
    attested side by side as different nodes, since their EKs are the same.
    """
    dest = Path(state_dir).resolve()
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy2(template.state_dir / _STATE_FILE, dest / _STATE_FILE)
    return TpmState(dest, template.ca, template.ek_cert_indices)


@contextmanager
def _scratch(parent: Path) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=".scratch-", dir=parent))
    try:
        for sub in ("home/.config", "home/.local/share", "tmp", "run"):
            (path / sub).mkdir(parents=True)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _isolated_env(scratch: Path) -> dict[str, str]:
    """The environment for swtpm_setup and swtpm_localca: every default location inside `scratch`."""
    home = scratch / "home"
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_DATA_HOME": str(home / ".local/share"),
        "XDG_RUNTIME_DIR": str(scratch / "run"),
        "TMPDIR": str(scratch / "tmp"),
        "LC_ALL": "C",
    }


def _run(argv: list[str], scratch: Path, logfile: Path) -> None:
    try:
        result = subprocess.run(
            argv,
            env=_isolated_env(scratch),
            cwd=scratch,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=_SETUP_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise SwtpmError(f"{Path(argv[0]).name} did not finish within {_SETUP_TIMEOUT:g} s") from None
    if result.returncode != 0:
        try:
            log = logfile.read_text(errors="replace")
        except OSError:
            log = ""
        detail = log or result.stderr.decode(errors="replace") or result.stdout.decode(errors="replace")
        last = " | ".join(detail.strip().splitlines()[-3:])
        raise SwtpmError(f"{Path(argv[0]).name} failed (exit {result.returncode}): {last}")


@dataclass(frozen=True)
class _SpecParams:
    """What an EK certificate states about its TPM (its subjectAltName and subjectDirectoryAttributes)."""

    family: str
    level: int
    revision: int
    manufacturer: str
    model: str
    version: str

    @classmethod
    def swtpm_defaults(cls) -> _SpecParams:
        # Only for the CA's throwaway certificate: real ones copy the TPM's own values.
        return cls("2.0", 0, 164, "id:00001014", "swtpm", "id:20191023")


def _issue_ek_cert(ca: LocalCa, scratch: Path, x: int, y: int, spec: _SpecParams) -> bytes:
    outdir = scratch / "certs"
    outdir.mkdir(exist_ok=True)
    logfile = scratch / "swtpm_localca.log"
    argv = [
        require_binary("swtpm_localca"),
        "--type",
        "ek",
        "--ek",
        f"x={x:064x},y={y:064x},id=secp256r1",
        "--dir",
        str(outdir),
        "--logfile",
        str(logfile),
        "--tpm-spec-family",
        spec.family,
        "--tpm-spec-level",
        str(spec.level),
        "--tpm-spec-revision",
        str(spec.revision),
        "--tpm-manufacturer",
        spec.manufacturer,
        "--tpm-model",
        spec.model,
        "--tpm-version",
        spec.version,
        "--tpm2",
        "--configfile",
        str(ca.config),
        "--optsfile",
        str(ca.options),
    ]
    _run(argv, scratch, logfile)
    cert = (outdir / "ek.cert").read_bytes()
    (outdir / "ek.cert").unlink()
    return cert


def _add_ecc_p256_ek_cert(state: Path, ca: LocalCa, scratch: Path) -> None:
    """Create the standard P-256 EK, have the CA certify it, store the certificate in NV.

    The EK itself is not persisted: the low-range template (EK Credential Profile, template L-2) lets
    anyone recreate the same key, which is how agents find it.
    """
    from tpm2_pytss import ESAPI
    from tpm2_pytss.constants import ESYS_TR, TPM2_ALG, TPM2_CAP, TPM2_PT, TPM2_PT_NV, TPMA_NV
    from tpm2_pytss.types import TPM2B_NV_PUBLIC, TPM2B_SENSITIVE_CREATE, TPMS_NV_PUBLIC
    from tpm2_pytss.utils import NVReadEK, create_ek_template

    inst = SwtpmInstance(state, run_dir=_socket_dir(scratch))
    try:
        inst.start()
        with ESAPI(inst.tcti) as esys:
            read_nv = NVReadEK(esys)
            _, template = create_ek_template("EK-ECC256", read_nv)
            handle, public, _, _, _ = esys.create_primary(
                TPM2B_SENSITIVE_CREATE(), template, ESYS_TR.ENDORSEMENT
            )
            esys.flush_context(handle)
            point = public.publicArea.unique.ecc
            x = int.from_bytes(bytes(point.x), "big")
            y = int.from_bytes(bytes(point.y), "big")

            props: dict[int, int] = {}
            more = True
            prop = int(TPM2_PT.FIXED)
            while more:
                more, data = esys.get_capability(TPM2_CAP.TPM_PROPERTIES, prop, 64)
                for p in data.data.tpmProperties:
                    props[int(p.property)] = int(p.value)
                    prop = int(p.property) + 1
            family = props[int(TPM2_PT.FAMILY_INDICATOR)].to_bytes(4, "big").rstrip(b"\0").decode()
            rsa_cert = x509.load_der_x509_certificate(read_nv(EK_CERT_RSA2048))
            spec = _SpecParams(
                family, props[int(TPM2_PT.LEVEL)], props[int(TPM2_PT.REVISION)], *_tpm_identity(rsa_cert)
            )
            cert = _issue_ek_cert(ca, scratch, x, y, spec)

            # The attributes swtpm_setup gives its EK certificate indices (left write-unlocked, as it does).
            attrs = (
                TPMA_NV.PPWRITE
                | TPMA_NV.WRITEDEFINE
                | TPMA_NV.PPREAD
                | TPMA_NV.OWNERREAD
                | TPMA_NV.AUTHREAD
                | TPMA_NV.NO_DA
                | TPMA_NV.PLATFORMCREATE
            )
            nv_public = TPM2B_NV_PUBLIC(
                nvPublic=TPMS_NV_PUBLIC(
                    nvIndex=EK_CERT_ECC_P256, nameAlg=TPM2_ALG.SHA256, attributes=attrs, dataSize=len(cert)
                )
            )
            nv = esys.nv_define_space(None, nv_public, auth_handle=ESYS_TR.PLATFORM)
            chunk = min(1024, props.get(int(TPM2_PT_NV.BUFFER_MAX), 1024))
            for off in range(0, len(cert), chunk):
                esys.nv_write(nv, cert[off : off + chunk], off, auth_handle=ESYS_TR.PLATFORM)
    finally:
        inst.close()


_TCG_AT_TPM_MANUFACTURER = x509.ObjectIdentifier("2.23.133.2.1")
_TCG_AT_TPM_MODEL = x509.ObjectIdentifier("2.23.133.2.2")
_TCG_AT_TPM_VERSION = x509.ObjectIdentifier("2.23.133.2.3")


def _tpm_identity(ek_cert: x509.Certificate) -> tuple[str, str, str]:
    """Manufacturer, model and firmware version as the TPM's existing EK certificate states them."""
    san = ek_cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    for name in san.get_values_for_type(x509.DirectoryName):
        values = []
        for oid in (_TCG_AT_TPM_MANUFACTURER, _TCG_AT_TPM_MODEL, _TCG_AT_TPM_VERSION):
            attrs = name.get_attributes_for_oid(oid)
            if not attrs:
                break
            value = attrs[0].value
            values.append(value if isinstance(value, str) else value.decode())
        else:
            return values[0], values[1], values[2]
    raise SwtpmError("the RSA EK certificate names no TPM manufacturer, model and version")


def _socket_dir(scratch: Path) -> Path | None:
    """The scratch dir when its socket paths fit in sun_path; otherwise a short temp dir."""
    if len(str(scratch / "run" / "swtpm.sock.ctrl").encode()) <= 100:
        return scratch / "run"
    return None
