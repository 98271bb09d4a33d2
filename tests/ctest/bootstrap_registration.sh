#!/usr/bin/env bash
# ctest: examples-c/01-basic -b bootstraps from estuary-testserver over DTLS and registers with
# the management server the Bootstrap-Server gave it.
#   psk: bootstrap with the endpoint's PSK (-i -k); the management account is PSK too.
#   est: bootstrap with the factory certificate (-C -K -S); the management account is mode 4,
#        so the client enrolls over EST-coaps (/est/crts, /est/sen) after Bootstrap-Finish and
#        registers with the certificate it got.
# 127.0.0.1 only; every wait is bounded.
#   bootstrap_registration.sh SERVER_BIN EXAMPLE_BIN WORKDIR psk|est
set -euo pipefail
server_bin=$1 example_bin=$2 work=$3 mode=$4
source "$(dirname "$0")/common.sh"

ep="ctest-bs-$mode-$$"
prepare_state() {
    local cfg=$1 want=$2
    sed -i "s/^security_mode = .*/security_mode = \"$want\"/" "$cfg"
}
START_HOOK=prepare_state
case "$mode" in
psk) mgmt=psk ;;
est) mgmt=est ;;
*) fail "unknown mode $mode" ;;
esac
start_testserver "$server_bin" "$work" "$ep" "$mgmt"
creds="$WORK/state/endpoints/$ep"
uri="coaps://127.0.0.1:${BS_COAPS_PORT}"
case "$mode" in
psk) args=(-i "$(cat "$creds/psk-identity.txt")" -k "$(tr -d '\n' < "$creds/psk-key.hex")") ;;
est) args=(-C "$creds/factory-cert.pem" -K "$creds/factory-key.pem" -S "$creds/server-cert.pem") ;;
esac

run_example "$example_bin" -e "$ep" -b -u "$uri" "${args[@]}" > "$work/example.log" 2>&1 &
example_pid=$!
PIDS+=("$example_pid")

wait_for_event "$work/events.jsonl" "bootstrap_finished" "$ep" 30
if [ "$mode" = est ]; then
    wait_for_event "$work/events.jsonl" "enrolled" "$ep" 30
fi
wait_for_event "$work/events.jsonl" "registered" "$ep" 30
"$server_bin" client "$ep" --control "$CONTROL" > "$work/client.json"
grep -q "\"security_mode\":\"$mgmt\"" "$work/client.json" \
    || fail "GET /api/clients/$ep does not show security_mode $mgmt: $(cat "$work/client.json")"
manufacturer=$("$server_bin" read "$ep" /3/0/0 --format text --control "$CONTROL")
[ "$manufacturer" = "Estuary Labs" ] || fail "read /3/0/0 gave '$manufacturer'"
echo "read /3/0/0 after bootstrap ($mode) -> $manufacturer"

kill -INT "$example_pid"
rc=0
wait_pid "$example_pid" 15 || rc=$?
[ "$rc" -eq 0 ] || example_failed "$(basename "$example_bin")" "$rc"
wait_for_event "$work/events.jsonl" "deregistered" "$ep" 10
echo "PASS: bootstrapped over DTLS ($mode), registered, read, deregistered"
