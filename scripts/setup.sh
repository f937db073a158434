#!/usr/bin/env bash
# Installs what the project needs on Debian or Ubuntu, as root: the software TPM, tpm2-tools,
# the TSS headers tpm2-pytss builds against, and a virtualenv (.venv) holding the package
# with all its extras. Safe to run again: it only does what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# postgresql: the store's tests start a private server of their own (tests/pg.py). wrk: the
# admission benchmark's maximum-rate load generator (bench/admission.py). faketime: the clock-jump
# fault tests step the verifier's wall clock with libfaketime (tests/test_faults_clock.py).
APT_PACKAGES=(swtpm swtpm-tools tpm2-tools libtss2-dev pkg-config gcc python3-venv python3-dev openssl postgresql wrk faketime)

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
    echo "setup: installing ${missing[*]}"
    if [ "$(id -u)" -ne 0 ]; then
        echo "setup: must run as root to install Debian packages (or install them first)" >&2
        exit 2
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "setup: $PYTHON is $("$PYTHON" --version 2>&1); Python 3.11 or newer is required" >&2
    exit 2
fi

# Reinstall only when the dependency list changed: building tpm2-pytss takes ~30 s.
stamp=.venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -f "$stamp" ]; then
    [ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
    .venv/bin/python -m pip install -q --upgrade pip
    echo "setup: installing the package and its extras into .venv (builds tpm2-pytss)"
    .venv/bin/python -m pip install -q -e '.[agent,verifier,dev]'
    rm -f .venv/.installed-*
    touch "$stamp"
fi
