#!/usr/bin/env bash
# Sets everything up, then runs the whole check: lint, types, the test suite (unit,
# real-swtpm integration and end-to-end), then every fuzz harness for a bounded time (a crash
# fails the run; its input is left under fuzz/crashes/). Extra arguments go to pytest.
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
echo "== fuzz (each harness ${FUZZ_SECONDS:-45} s, two at a time; make fuzz runs them long)"
python -m fuzz run --seconds "${FUZZ_SECONDS:-45}" --jobs 2 --scratch
