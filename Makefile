# Shorthands for the scripts; each target installs what it needs first (scripts/setup.sh).
PY := .venv/bin/python
FUZZ_SECONDS ?= 600
SOAK_MINUTES ?= 30

.PHONY: setup test demo bench fuzz soak

setup:
	bash scripts/setup.sh

test:
	bash scripts/test.sh

demo:
	bash scripts/demo.sh

# Every benchmark, one table (docs/performance.md explains the figures and targets).
bench: setup
	$(PY) -m bench

# Every fuzz harness for FUZZ_SECONDS each, growing the corpus under fuzz/corpus/.
fuzz: setup
	$(PY) -m fuzz run --seconds $(FUZZ_SECONDS)

# Many agents against one verifier for SOAK_MINUTES with random faults (not part of CI).
soak: setup
	$(PY) -m bench.soak --minutes $(SOAK_MINUTES)
