"""The agent imports only what it uses: its RSS budget (50 MB, issue 6) has no room for the
verifier's stack, and each of these packages, once imported, stays in its memory for good.
bench/agent_memory.py measures the RSS itself; this keeps the import graph from growing back."""

from __future__ import annotations

import json
import subprocess
import sys

# What `attest-agent run` loads: the command line, then the daemon and its client.
AGENT_MODULES = ("attest.agent.cli", "attest.agent.daemon", "attest.agent.client")
# The verifier's service, store and Kubernetes stack; httpx (the agent speaks http.client) and
# the command-line tools httpx would bring; YAML and the verifier's TPM structure parsers.
FORBIDDEN = (
    "fastapi",
    "starlette",
    "uvicorn",
    "sqlalchemy",
    "psycopg",
    "lightkube",
    "webhook",
    "httpx",
    "httpcore",
    "click",
    "rich",
    "pygments",
    "yaml",
    "attest.store",
    "attest.verify.appraise",
    "attest.verify.tpmstructs",
    "attest.verify.eventlog",
)


def _modules_after_importing(*modules: str) -> set[str]:
    code = f"import json, sys, {', '.join(modules)}; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    return set(json.loads(out.stdout))


def _forbidden(loaded: set[str]) -> list[str]:
    return sorted(m for m in loaded if any(m == f or m.startswith(f + ".") for f in FORBIDDEN))


def test_the_agent_does_not_import_the_verifier_side() -> None:
    loaded = _modules_after_importing(*AGENT_MODULES)
    assert "attest.agent.daemon" in loaded
    assert _forbidden(loaded) == []


def test_the_check_sees_a_forbidden_import() -> None:
    """The subprocess reports what it really imported: the verifier's service brings its stack."""
    loaded = _modules_after_importing("attest.agent.cli", "webhook.app")
    assert {"webhook", "fastapi", "starlette"} <= set(_forbidden(loaded))
