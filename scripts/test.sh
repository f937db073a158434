#!/usr/bin/env bash
# Sets everything up, then runs the whole check: lint, types, and the test suite (unit,
# real-swtpm integration and end-to-end). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export TSS2_LOG=${TSS2_LOG:-all+NONE}

echo "== ruff"
ruff check .
ruff format --check .
echo "== mypy --strict"
mypy
echo "== pytest"
pytest -n "${PYTEST_WORKERS:-auto}" "$@"
