"""Run swtpm processes: start, stop, power-cycle, several at once, none left behind.

A `SwtpmInstance` owns one TPM state directory and one pair of Unix sockets (data and control).
Its TCTI string (`swtpm:path=...`) stays the same across restarts, as a device node would, so an
agent configured once survives a reboot of its TPM.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, Self

from swtpm import SwtpmError, require_binary

if TYPE_CHECKING:
    from swtpm.provision import LocalCa

# sockaddr_un.sun_path holds 108 bytes including the terminating NUL.
_SUN_PATH_MAX = 107
SOCKET_NAME = "swtpm.sock"

# swtpm control-channel commands (swtpm's tpm_ioctl.h), big-endian 32-bit.
_CMD_GET_CAPABILITY = 1
_CMD_SHUTDOWN = 3
# TPM2_Shutdown(TPM_SU_CLEAR): tag TPM_ST_NO_SESSIONS, size 12, TPM_CC_Shutdown.
_TPM2_SHUTDOWN_CLEAR = struct.pack(">HIIH", 0x8001, 12, 0x0145, 0x0000)


@dataclass
class _Process:
    """What the finalizer needs to reap a forgotten instance without holding the instance alive."""

    popen: subprocess.Popen[bytes] | None = None
    pid: int | None = None
    owned_run_dir: Path | None = None
    log: IO[bytes] | None = field(default=None, repr=False)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A daemon whose parent exited may linger as a zombie where PID 1 does not reap: that is gone too.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def _wait_gone(proc: _Process, timeout: float) -> bool:
    if proc.popen is not None:
        try:
            proc.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return False
        return True
    deadline = time.monotonic() + timeout
    while proc.pid is not None and _pid_alive(proc.pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True


def _kill(proc: _Process) -> None:
    """SIGTERM, then SIGKILL: the fallback when swtpm ignores its control channel."""
    if proc.pid is None:
        return
    for sig, grace in ((signal.SIGTERM, 2.0), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, sig)
        if _wait_gone(proc, grace):
            return


def _release(proc: _Process) -> None:
    proc.popen = None
    proc.pid = None
    if proc.log is not None:
        proc.log.close()
        proc.log = None


def _short_temp_dir() -> str:
    """The temp dir, unless TMPDIR is too deep for socket paths below it: then /tmp."""
    base = tempfile.gettempdir()
    # mkdtemp's name ("swtpm-" + 8 characters) and the control socket's name follow the base.
    if len(base.encode()) + len("/swtpm-12345678/" + SOCKET_NAME + ".ctrl") > _SUN_PATH_MAX:
        return "/tmp"  # noqa: S108
    return base


def _exchange(path: Path, request: bytes, reply_size: int, timeout: float) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(path))
        s.sendall(request)
        reply = b""
        while len(reply) < reply_size:
            chunk = s.recv(reply_size - len(reply))
            if not chunk:
                break
            reply += chunk
        return reply


class SwtpmInstance:
    """One swtpm process serving `state_dir` on a Unix socket; a context manager that stops it.

    `run_dir` holds the sockets, the pid file and swtpm's log. Left out, it is a new directory
    in the temp dir (in /tmp if TMPDIR is too deep: socket paths are limited to 107 bytes),
    removed by `close()`. `ca` is the CA that certified this TPM's EKs, for callers to trust.
    """

    def __init__(
        self,
        state_dir: str | os.PathLike[str],
        *,
        run_dir: str | os.PathLike[str] | None = None,
        ca: LocalCa | None = None,
    ):
        self.state_dir = Path(state_dir).resolve()
        self.ca = ca
        self._proc = _Process()
        if run_dir is None:
            self.run_dir = Path(tempfile.mkdtemp(prefix="swtpm-", dir=_short_temp_dir()))
            self._proc.owned_run_dir = self.run_dir
        else:
            self.run_dir = Path(run_dir).resolve()
        # Interpreter exit or a forgotten instance must not leave a TPM process running.
        self._finalizer = weakref.finalize(self, _finalize_and_remove, self._proc)
        if len(str(self.ctrl_path).encode()) > _SUN_PATH_MAX:
            self.close()
            raise SwtpmError(f"socket path {self.ctrl_path} is longer than {_SUN_PATH_MAX} bytes")

    @classmethod
    def attach(cls, state_dir: str | os.PathLike[str], run_dir: str | os.PathLike[str]) -> SwtpmInstance:
        """An instance for a swtpm another process started (the CLI's `start`, then `stop`)."""
        inst = cls(state_dir, run_dir=run_dir)
        try:
            pid = int(inst.pid_file.read_text().strip())
        except (OSError, ValueError):
            return inst
        # A stale pid file may name a recycled pid: only adopt a swtpm serving this socket.
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return inst
        if any(b"swtpm" in arg for arg in cmdline[:1]) and any(
            str(inst.socket_path).encode() in arg for arg in cmdline
        ):
            inst._proc.pid = pid
        return inst

    @property
    def socket_path(self) -> Path:
        return self.run_dir / SOCKET_NAME

    @property
    def ctrl_path(self) -> Path:
        # The tpm2-tss swtpm TCTI derives the control socket's path by appending ".ctrl".
        return self.run_dir / (SOCKET_NAME + ".ctrl")

    @property
    def pid_file(self) -> Path:
        return self.run_dir / "swtpm.pid"

    @property
    def log_file(self) -> Path:
        return self.run_dir / "swtpm.log"

    @property
    def tcti(self) -> str:
        """The TCTI string for tpm2-tools (`-T`), tpm2-pytss (`ESAPI(tcti)`) and the agent."""
        return f"swtpm:path={self.socket_path}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid

    @property
    def running(self) -> bool:
        if self._proc.pid is None:
            return False
        if self._proc.popen is not None:
            return self._proc.popen.poll() is None
        return _pid_alive(self._proc.pid)

    def start(self, *, startup: bool = True, timeout: float = 10.0) -> None:
        """Start swtpm and return once its control channel answers.

        With `startup=False` the TPM waits for TPM2_Startup, as at power-on before firmware ran:
        `swtpm.measuredboot.apply` sends it, at the locality the boot profile asks for.
        """
        if self.running:
            raise SwtpmError(f"swtpm for {self.state_dir} is already running (pid {self.pid})")
        if not (self.state_dir / "tpm2-00.permall").is_file():
            raise SwtpmError(f"{self.state_dir} holds no provisioned TPM 2.0 state")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for stale in (self.socket_path, self.ctrl_path, self.pid_file):
            stale.unlink(missing_ok=True)
        flags = "not-need-init,startup-clear" if startup else "not-need-init"
        argv = [
            require_binary("swtpm"),
            "socket",
            "--tpm2",
            "--tpmstate",
            f"dir={self.state_dir}",
            "--server",
            f"type=unixio,path={self.socket_path}",
            "--ctrl",
            f"type=unixio,path={self.ctrl_path}",
            "--flags",
            flags,
            "--pid",
            f"file={self.pid_file}",
        ]
        log = self.log_file.open("ab")
        try:
            # A session of its own: a terminal's Ctrl-C must not power the TPM off under the CLI's `start`.
            popen = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        except BaseException:
            log.close()
            raise
        self._proc.popen, self._proc.pid, self._proc.log = popen, popen.pid, log
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        request = struct.pack(">I", _CMD_GET_CAPABILITY)
        while True:
            if not self.running:
                raise SwtpmError(f"swtpm exited at start: {self._log_tail()}")
            with contextlib.suppress(OSError):
                if len(_exchange(self.ctrl_path, request, 8, timeout=1.0)) == 8:
                    return
            if time.monotonic() >= deadline:
                raise SwtpmError(f"swtpm did not answer on {self.ctrl_path} within {timeout:g} s")
            time.sleep(0.01)

    def _log_tail(self) -> str:
        try:
            text = self.log_file.read_text(errors="replace").strip()
        except OSError:
            return "(no log)"
        return " | ".join(text.splitlines()[-3:]) or "(empty log)"

    def stop(self, *, orderly: bool = True, timeout: float = 5.0) -> None:
        """Power the TPM off; `orderly` sends TPM2_Shutdown(CLEAR) first, as an OS does at reboot.

        Without it the next TPM2_Startup sees a disorderly shutdown (a power loss). Falls back to
        SIGTERM and SIGKILL, so the process is gone when this returns.
        """
        if self._proc.pid is None:
            return
        if self.running:
            if orderly:
                # A client still holding the data socket makes this time out: the control channel
                # below works regardless.
                with contextlib.suppress(OSError):
                    _exchange(self.socket_path, _TPM2_SHUTDOWN_CLEAR, 10, timeout=1.0)
            with contextlib.suppress(OSError):
                _exchange(self.ctrl_path, struct.pack(">I", _CMD_SHUTDOWN), 4, timeout=1.0)
            if not _wait_gone(self._proc, timeout):
                _kill(self._proc)
        elif self._proc.popen is not None:
            self._proc.popen.wait()
        _release(self._proc)

    def restart(self, *, startup: bool = True, orderly: bool = True) -> None:
        """A power cycle of the same TPM: NV state and keys persist, PCRs reset, resetCount grows."""
        self.stop(orderly=orderly)
        self.start(startup=startup)

    def detach(self) -> None:
        """Leave the TPM running after this process exits (the CLI's `start`); `attach` finds it again."""
        self._finalizer.detach()
        if self._proc.log is not None:
            self._proc.log.close()
            self._proc.log = None

    def close(self) -> None:
        """Stop the TPM and remove the run directory if this instance made it."""
        self.stop()
        self._finalizer()

    def __enter__(self) -> Self:
        if not self.running:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SwtpmInstance(state_dir={str(self.state_dir)!r}, tcti={self.tcti!r}, pid={self.pid})"


def _finalize_and_remove(proc: _Process) -> None:
    # Only a process this interpreter started is ours to kill unasked: an attached one (the CLI's)
    # belongs to whoever started it, and its pid may be reused once it is gone.
    if proc.popen is not None:
        _kill(proc)
    _release(proc)
    if proc.owned_run_dir is not None:
        shutil.rmtree(proc.owned_run_dir, ignore_errors=True)
        proc.owned_run_dir = None
