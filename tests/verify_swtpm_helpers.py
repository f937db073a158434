"""A minimal private swtpm for the verifier's integration tests: provision one with EK
certificates from a local CA, start it, drive tpm2-tools against it. Everything, including the
CA and swtpm_setup's scratch files, stays under the directory the test gives it.

Stopgap until the shared harness in swtpm/ provides the fixture.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

# Recorded from swtpm 0.7.1 and tpm2-tools 5.4, for tests that need real artifacts but no TPM:
# `tpm2_createak -G ecc -g sha256 -s ecdsa -u ak.pub -n ak.name` under an RSA EK, then
# `tpm2_quote -l sha256:0,1,2,3,4,5,6,7 -q 0102030405060708 -g sha256` (all eight PCRs zero).
SWTPM_AK = bytes.fromhex(
    "00580023000b00050072000000100018000b000300100020ead7df895cb87f93c696a4f97466802c0f61ab90cd"
    "f337c9ebcb14a4babf15920020734fde61d6e82b169eb93163a8b10c65facfc1a3249171a72c5ab68d7161f720"
)
SWTPM_AK_NAME = bytes.fromhex("000bedf0e3dde10b054ff00cb4202680ce6e2db43e68f8a2153825887a748edd5a40")
SWTPM_QUOTE = bytes.fromhex(
    "ff54434780180022000b975b0084fe70492045470bb271fe2ff83f528dc5b89145244598c412890a33e8000801"
    "020304050607080000000000008801000000020000000001201910230016363600000001000b03ff0000002053"
    "41e6b2646979a70e57653007a1f310169421ec9bdd9f1a5648f75ade005af1"
)
SWTPM_SIG = bytes.fromhex(
    "0018000b0020f2bfac1c1257a68015c9b2bb6b700bab20a1869a9d4349fc8ff80d1744249f4e00203d369b3721"
    "baaae592f8c63696522bdfec8955bc19b7225cfd0f001abc0984c5"
)
SWTPM_NONCE = bytes.fromhex("0102030405060708")

BINARIES = ("swtpm", "swtpm_setup", "swtpm_localca", "tpm2_createek", "tpm2_quote", "tpm2_flushcontext")


def available() -> bool:
    return all(shutil.which(b) for b in BINARIES)


def _env(root: Path) -> dict[str, str]:
    # TMPDIR: swtpm_setup writes its scratch certificates there. XDG_CONFIG_HOME and HOME keep
    # swtpm's per-user configuration lookups inside the test directory too.
    return {
        **os.environ,
        "TSS2_LOG": "all+NONE",
        "TMPDIR": str(root),
        "XDG_CONFIG_HOME": str(root),
        "HOME": str(root),
    }


@dataclass(frozen=True)
class Swtpm:
    root: Path
    socket: Path
    pid: int

    @property
    def ca(self) -> Path:
        return self.root / "ca"

    @property
    def root_cert(self) -> Path:
        return self.ca / "swtpm-localca-rootca-cert.pem"

    @property
    def intermediate_cert(self) -> Path:
        return self.ca / "issuercert.pem"

    @property
    def tcti(self) -> str:
        return f"swtpm:path={self.socket}"

    def tool(self, *argv: str, cwd: Path) -> str:
        """Run one tpm2-tools command and return its stdout. swtpm has no resource manager, so
        the transient objects and sessions a tool leaves loaded are flushed after it."""
        try:
            out = subprocess.run(
                [argv[0], "-T", self.tcti, *argv[1:]],
                cwd=cwd,
                env=_env(self.root),
                capture_output=True,
                text=True,
                timeout=60,
                check=True,
            )
        except subprocess.CalledProcessError as e:
            raise AssertionError(f"{' '.join(argv)} failed: {e.stderr}") from None
        finally:
            for kind in ("-t", "-s"):
                subprocess.run(
                    ["tpm2_flushcontext", "-T", self.tcti, kind],
                    env=_env(self.root),
                    capture_output=True,
                    timeout=60,
                    check=True,
                )
        return out.stdout


def provision(root: Path) -> None:
    """A TPM 2.0 state with RSA-2048 and ECC P-384 EKs and their certificates from a local CA
    (root and intermediate in ``root/ca``), PCR banks sha1, sha256 and sha384."""
    ca, state = root / "ca", root / "state"
    ca.mkdir()
    state.mkdir()
    (root / "swtpm-localca.conf").write_text(
        f"statedir = {ca}\nsigningkey = {ca}/signkey.pem\nissuercert = {ca}/issuercert.pem\n"
        f"certserial = {ca}/certserial\n"
    )
    (root / "swtpm-localca.options").write_text(
        "--platform-manufacturer X\n--platform-version 2.1\n--platform-model swtpm\n"
    )
    (root / "swtpm_setup.conf").write_text(
        "create_certs_tool = /usr/bin/swtpm_localca\n"
        f"create_certs_tool_config = {root}/swtpm-localca.conf\n"
        f"create_certs_tool_options = {root}/swtpm-localca.options\n"
        "active_pcr_banks = sha1,sha256\n"
    )
    subprocess.run(
        [
            "swtpm_setup",
            "--tpm2",
            "--tpm-state",
            str(state),
            "--create-ek-cert",
            "--create-platform-cert",
            "--config",
            str(root / "swtpm_setup.conf"),
            "--pcr-banks",
            "sha1,sha256,sha384",
        ],
        env=_env(root),
        capture_output=True,
        timeout=120,
        check=True,
    )


@contextmanager
def running_swtpm(root: Path) -> Iterator[Swtpm]:
    """Provision and start a swtpm under ``root``; kill it (by its PID) on exit."""
    provision(root)
    socket, pidfile = root / "s", root / "swtpm.pid"
    subprocess.run(
        [
            "swtpm",
            "socket",
            "--tpm2",
            "--tpmstate",
            f"dir={root / 'state'}",
            # The tpm2-tss swtpm TCTI finds the control channel at the socket path + ".ctrl".
            "--server",
            f"type=unixio,path={socket}",
            "--ctrl",
            f"type=unixio,path={socket}.ctrl",
            "--flags",
            "not-need-init,startup-clear",
            "--daemon",
            "--pid",
            f"file={pidfile}",
        ],
        env=_env(root),
        capture_output=True,
        timeout=60,
        check=True,
    )
    pid = int(pidfile.read_text())
    try:
        deadline = time.monotonic() + 10
        while not (socket.exists() and Path(f"{socket}.ctrl").exists()) and time.monotonic() < deadline:
            time.sleep(0.02)
        yield Swtpm(root, socket, pid)
    finally:
        os.kill(pid, signal.SIGTERM)
