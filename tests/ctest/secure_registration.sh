#!/usr/bin/env bash
# ctest: examples-c/01-basic registers with estuary-testserver over DTLS, in PSK mode (-i -k)
# or Certificate mode (-C -K -S), with the credentials `init` wrote to endpoints/NAME/; the
# server lists it with that security mode, a Read of /3/0/0 goes through the DTLS session,
# and SIGINT de-registers. 127.0.0.1 only; every wait is bounded.
#   secure_registration.sh SERVER_BIN EXAMPLE_BIN WORKDIR psk|cert
set -euo pipefail
server_bin=$1 example_bin=$2 work=$3 mode=$4
source "$(dirname "$0")/common.sh"

ep="ctest-$mode-$$"
start_testserver "$server_bin" "$work" "$ep"
creds="$WORK/state/endpoints/$ep"
uri="coaps://127.0.0.1:${COAPS_PORT}"

case "$mode" in
psk)
    args=(-i "$(cat "$creds/psk-identity.txt")" -k "$(tr -d '\n' < "$creds/psk-key.hex")")
    expect_mode=psk
    ;;
cert)
    args=(-C "$creds/factory-cert.pem" -K "$creds/factory-key.pem" -S "$creds/server-cert.pem")
    expect_mode=certificate
    ;;
*)
    fail "unknown mode $mode"
    ;;
esac

run_example "$example_bin" -e "$ep" -u "$uri" -l 30 "${args[@]}" > "$work/example.log" 2>&1 &
example_pid=$!
PIDS+=("$example_pid")

wait_for_event "$work/events.jsonl" "registered" "$ep" 20
grep -q "DTLS session established" "$work/example.log" \
    || fail "the example did not log its DTLS session"
"$server_bin" client "$ep" --control "$CONTROL" > "$work/client.json"
grep -q "\"security_mode\":\"$expect_mode\"" "$work/client.json" \
    || fail "GET /api/clients/$ep does not show security_mode $expect_mode: $(cat "$work/client.json")"

manufacturer=$("$server_bin" read "$ep" /3/0/0 --format text --control "$CONTROL")
[ "$manufacturer" = "Estuary Labs" ] || fail "read /3/0/0 gave '$manufacturer', expected 'Estuary Labs'"
echo "read /3/0/0 over DTLS ($mode) -> $manufacturer"

kill -INT "$example_pid"
rc=0
wait_pid "$example_pid" 15 || rc=$?
[ "$rc" -eq 0 ] || example_failed "$(basename "$example_bin")" "$rc"
wait_for_event "$work/events.jsonl" "deregistered" "$ep" 10
echo "PASS: registered over DTLS ($mode), read, deregistered"
