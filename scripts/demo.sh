#!/usr/bin/env bash
# The local demo, all on this machine. Two software TPMs (swtpm) play two nodes: one boots the
# known-good chain, the other the same chain with an altered kernel. A verifier runs with TLS on
# SQLite; a reference policy made from the good node is applied; each node's agent enrolls its
# TPM and attests; `attestctl node list` shows one node trusted and one not, with the reason;
# and the verifier, as the cluster's admission webhook, decides whether a pod may be placed on
# each node.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export TSS2_LOG=${TSS2_LOG:-all+NONE}

work=$(mktemp -d /tmp/attest-demo.XXXXXX)
verifier_pid=
cleanup() {
    [ -n "$verifier_pid" ] && kill "$verifier_pid" 2>/dev/null && wait "$verifier_pid" 2>/dev/null
    for node in node-good node-altered; do
        [ -d "$work/$node" ] && python -m swtpm stop "$work/$node" >/dev/null 2>&1
    done
    rm -rf "$work"
}
trap cleanup EXIT
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "Two TPMs (swtpm) with EK certificates from a local manufacturer CA, booted"
for node in node-good node-altered; do
    profile=good; [ "$node" = node-altered ] && profile=altered-kernel
    python -m swtpm provision "$work/$node" --ca "$work/tpm-ca" >/dev/null
    python -m swtpm boot "$work/$node" --profile "$profile" --eventlog "$work/$node/eventlog.bin" \
        --ima "$work/$node/ima.log" > "$work/$node/tcti"
    # Stands in for /proc/sys/kernel/random/boot_id, which tells the agent a reboot happened.
    python -c 'import uuid; print(uuid.uuid4())' > "$work/$node/boot_id"
    echo "$node booted profile '$profile' on $(cat "$work/$node/tcti")"
done

step "The verifier: TLS material, then attest-verifier serve on SQLite"
attestctl certs init --dir "$work/pki" --host localhost --ip 127.0.0.1 >/dev/null
port=$(python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
attest-verifier serve --listen "127.0.0.1:$port" \
    --tls-cert "$work/pki/server.crt" --tls-key "$work/pki/server.key" \
    --database "sqlite:///$work/verifier.db" --admin-token-file "$work/pki/admin.token" \
    --ek-roots "$work/tpm-ca/swtpm-localca-rootca-cert.pem" \
    --ek-intermediates "$work/tpm-ca/issuercert.pem" > "$work/verifier.log" 2>&1 &
verifier_pid=$!
export ATTEST_VERIFIER="https://127.0.0.1:$port" ATTEST_CA_CERT="$work/pki/ca.crt" \
    ATTEST_TOKEN_FILE="$work/pki/admin.token"
for _ in $(seq 100); do
    curl -fsS --cacert "$ATTEST_CA_CERT" "$ATTEST_VERIFIER/readyz" >/dev/null 2>&1 && break
    sleep 0.1
done
echo "verifier ready at $ATTEST_VERIFIER (log: verifier.log)"

step "A reference policy from the good node's evidence, applied"
attestctl policy create --name default --eventlog "$work/node-good/eventlog.bin" \
    --ima "$work/node-good/ima.log" -o "$work/policy.yaml"
attestctl policy apply "$work/policy.yaml"

for node in node-good node-altered; do
    step "$node: the agent enrolls its TPM and attests once"
    set +e
    attest-agent once --verifier "$ATTEST_VERIFIER" --ca-cert "$ATTEST_CA_CERT" --node "$node" \
        --tcti "$(cat "$work/$node/tcti")" --state-dir "$work/$node/agent" \
        --eventlog "$work/$node/eventlog.bin" --ima "$work/$node/ima.log" \
        --boot-id-file "$work/$node/boot_id" --container-log "$work/$node/containers.log" --log-level error
    echo "(attest-agent exit status $?)"
    set -e
done

step "attestctl node list"
attestctl node list
step "attestctl node show node-altered"
attestctl node show node-altered || true

if [ -f webhook/routes_admission.py ]; then
    step "Admission: may a pod be bound to each node? (a real kube-apiserver pods/binding request)"
    for node in node-good node-altered; do
        python - "$node" <<'PY'
import json, os, sys, httpx
from attest.wire import ADMISSION_PODS
node = sys.argv[1]
review = json.load(open("tests/data/k8s/admission/05-validate-pods-binding-CREATE-demo.json"))
review["request"]["object"]["target"]["name"] = node
with httpx.Client(verify=os.environ["ATTEST_CA_CERT"]) as c:
    r = c.post(os.environ["ATTEST_VERIFIER"] + ADMISSION_PODS + "?timeout=5s", json=review)
resp = r.json()["response"]
verdict = "allowed" if resp["allowed"] else "denied: " + resp.get("status", {}).get("message", "")
print(f"bind pod {review['request']['name']} to {node}: {verdict}")
PY
    done
fi
