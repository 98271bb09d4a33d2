#!/usr/bin/env bash
# ctest: start estuary-testserver, run an example (01-basic, 04-event-loop) against it, see the endpoint in
# GET /api/clients, read /3/0/0 back as the manufacturer string, stop the example with
# SIGINT and see the de-registration event. 127.0.0.1 only; every wait is bounded.
set -euo pipefail
server_bin=$1 example_bin=$2 work=$3
source "$(dirname "$0")/common.sh"

ep="ctest-basic-$$"
start_testserver "$server_bin" "$work" "$ep"

run_example "$example_bin" -e "$ep" -u "coap://127.0.0.1:${LWM2M_PORT}" -l 30 > "$work/example.log" 2>&1 &
example_pid=$!
PIDS+=("$example_pid")

wait_for_event "$work/events.jsonl" "registered" "$ep" 20
"$server_bin" clients --control "$CONTROL" | tee "$work/clients.txt"
grep -q "$ep" "$work/clients.txt" || fail "endpoint $ep not listed by 'clients'"

manufacturer=$("$server_bin" read "$ep" /3/0/0 --format text --control "$CONTROL")
[ "$manufacturer" = "Estuary Labs" ] || fail "read /3/0/0 gave '$manufacturer', expected 'Estuary Labs'"
echo "read /3/0/0 -> $manufacturer"

"$server_bin" client "$ep" --control "$CONTROL" > "$work/client.json"
grep -q "\"endpoint\":\"$ep\"" "$work/client.json" || fail "GET /api/clients/$ep did not describe $ep"
"$server_bin" read "$ep" /3/0 --format tlv --control "$CONTROL" > "$work/tlv.json"
grep -q '"id":0,"value":"Estuary Labs"' "$work/tlv.json" || fail "TLV read of /3/0 did not decode the manufacturer"
if "$server_bin" client no-such-ep --control "$CONTROL" > /dev/null 2>&1; then
    fail "an unknown endpoint was not refused"
fi
"$server_bin" events --control "$CONTROL" | grep -q '"event":"registered"' || fail "GET /api/events lacks the registration"

kill -INT "$example_pid"
rc=0
wait_pid "$example_pid" 15 || rc=$?
[ "$rc" -eq 0 ] || example_failed "$(basename "$example_bin")" "$rc"
wait_for_event "$work/events.jsonl" "deregistered" "$ep" 10
echo "PASS: registered, read, deregistered"
