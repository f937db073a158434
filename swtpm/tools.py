"""Run tpm2-tools against a software TPM: how tests cross-check this project with the reference tools."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from swtpm.instance import SwtpmInstance

TOOL_TIMEOUT = 60  # seconds, for one tool and for each flush after it


def run_tool(tpm: SwtpmInstance, *argv: str, cwd: Path) -> str:
    """Run one tpm2-tools command against `tpm` and return its stdout.

    `argv` is the tool's name and arguments without the TCTI, which is added (`-T`); the tool
    runs in `cwd`, so relative file names in `argv` are read and written there. swtpm has no
    resource manager, so the transient objects and sessions a tool leaves loaded are flushed
    after it, failed or not: the next tool finds the TPM's few object slots free. A failure
    raises AssertionError naming the command and carrying its stderr, as a failed check in a
    test does."""
    env = {**os.environ, "TSS2_LOG": "all+NONE"}
    try:
        out = subprocess.run(
            [argv[0], "-T", tpm.tcti, *argv[1:]],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=TOOL_TIMEOUT,
            check=True,
        )
    except subprocess.CalledProcessError as e:
        raise AssertionError(f"{' '.join(argv)} failed: {e.stderr}") from None
    finally:
        for kind in ("-t", "-s"):
            subprocess.run(
                ["tpm2_flushcontext", "-T", tpm.tcti, kind],
                env=env,
                capture_output=True,
                timeout=TOOL_TIMEOUT,
                check=True,
            )
    return out.stdout
