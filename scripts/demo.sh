#!/usr/bin/env bash
# The local demo. Two software TPMs play two nodes: one boots the known-good chain, the other
# an altered kernel. Each node's agent quotes its PCRs over a fresh nonce; a reference policy
# is generated from the good node; the evidence of both is appraised.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export TSS2_LOG=${TSS2_LOG:-all+NONE}

work=$(mktemp -d /tmp/attest-demo.XXXXXX)
cleanup() {
    for node in good altered; do
        [ -d "$work/$node" ] && python -m swtpm stop "$work/$node" >/dev/null 2>&1 || true
    done
    rm -rf "$work"
}
trap cleanup EXIT

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "Manufacture two TPMs (swtpm) with EK certificates from one local CA"
python -m swtpm provision "$work/good" --ca "$work/ca"
python -m swtpm provision "$work/altered" --ca "$work/ca"

step "Boot them: the good chain, and the same chain with an altered kernel"
for node in good altered; do
    profile=good; [ "$node" = altered ] && profile=altered-kernel
    python -m swtpm boot "$work/$node" --profile "$profile" --eventlog "$work/$node/eventlog.bin" \
        --ima "$work/$node/ima.log" > "$work/$node/tcti"
    echo "node '$node' booted profile '$profile'; its TPM: $(cat "$work/$node/tcti")"
done
attestctl eventlog replay "$work/good/eventlog.bin" | head -14

step "A reference policy from the good node's evidence"
attestctl policy create --name demo-good --eventlog "$work/good/eventlog.bin" --ima "$work/good/ima.log" -o "$work/policy.yaml"
grep -E '^(version|name|bank)|secure_boot|efi_applications|kernel_cmdline' "$work/policy.yaml"

for node in good altered; do
    nonce=$(openssl rand -hex 32)
    tcti=$(cat "$work/$node/tcti")
    step "Node '$node': the agent quotes PCRs 0-10 over a fresh nonce"
    attest-agent quote --tcti "$tcti" --state-dir "$work/$node/agent" --nonce "$nonce" \
        --pcrs sha256:0-10 --out "$work/$node/quote" >/dev/null
    ls "$work/$node/quote"
    echo "tpm2_checkquote (tpm2-tools, independently):"
    tpm2_checkquote -u "$work/$node/quote/ak.pub" -m "$work/$node/quote/quote.msg" -s "$work/$node/quote/quote.sig" \
        -f "$work/$node/quote/pcrs.bin" -g sha256 -q "$nonce" >/dev/null && echo "  signature and nonce OK"
    step "Node '$node': appraisal against the policy"
    set +e
    attestctl verify --ak "$work/$node/quote/ak.pub" --quote "$work/$node/quote/quote.msg" \
        --sig "$work/$node/quote/quote.sig" --pcrs "$work/$node/quote/pcrs.bin" --nonce "$nonce" \
        --eventlog "$work/$node/eventlog.bin" --ima "$work/$node/ima.log" --policy "$work/policy.yaml"
    echo "(exit status $?)"
    set -e
done
