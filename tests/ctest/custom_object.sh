#!/usr/bin/env bash
# ctest: start estuary-testserver, run examples-c/02-custom-object against it, then write
# pmin/pmax on /3303/0/5700, observe it and receive at least two notifications with
# different values, execute Reset Min and Max (/3303/0/5605) and see
# the range shrink, read /3303/0 as SenML CBOR and as TLV, cancel the observation, stop
# the example with SIGINT and see the de-registration. Everything goes through the test
# server's command-line client (the control API). 127.0.0.1 only; waits are bounded.
set -euo pipefail
server_bin=$1 example_bin=$2 work=$3
source "$(dirname "$0")/common.sh"

ep="ctest-custom-$$"
start_testserver "$server_bin" "$work" "$ep"

run_example "$example_bin" -e "$ep" -u "coap://127.0.0.1:${LWM2M_PORT}" -l 60 > "$work/example.log" 2>&1 &
example_pid=$!
PIDS+=("$example_pid")
wait_for_event "$work/events.jsonl" "registered" "$ep" 20

# op COMMAND PATH [ARGS...]: one LwM2M operation through the test server's command-line
# client (which uses the control API); prints the control API's JSON answer.
op() {
    local cmd=$1 path=$2
    shift 2
    "$server_bin" "$cmd" "$ep" "$path" "$@" --control "$CONTROL" --json --timeout 20 || true
}

# field JSON KEY: a top-level field of a JSON object, as text.
field() {
    python3 -c 'import json,sys; v=json.loads(sys.argv[1]).get(sys.argv[2]); print(v if not isinstance(v,(dict,list)) else json.dumps(v))' "$1" "$2"
}

# expect_code JSON CODE WHAT
expect_code() {
    local got
    got=$(field "$1" code)
    [ "$got" = "$2" ] || fail "$3: code '$got', expected $2 (answer: $1)"
    echo "$3 -> $2"
}

units=$(op read /3303/0/5701 --format text)
expect_code "$units" "2.05" "read /3303/0/5701"
[ "$(field "$units" value)" = "Cel" ] || fail "units are not Cel: $units"

expect_code "$(op attr /3303/0/5700 pmin=1 pmax=5)" "2.04" "write-attributes pmin=1 pmax=5"

observe=$(op observe /3303/0/5700 --format text)
expect_code "$observe" "2.05" "observe /3303/0/5700"

# At least two notifications for /3303/0/5700 with different values, within 20 s.
notifications() {
    "$server_bin" events --control "$CONTROL" | python3 -c '
import json, sys
ep, path = sys.argv[1], sys.argv[2]
text = sys.stdin.read().strip()
try:
    data = json.loads(text)
    items = data if isinstance(data, list) else data.get("events", [])
except ValueError:
    items = [json.loads(l) for l in text.splitlines() if l.strip()]
for e in items:
    if e.get("event") == "notification" and e.get("endpoint") == ep and e.get("path") == path \
            and e.get("code") == "2.05":
        print(e.get("value"))
' "$ep" /3303/0/5700
}
values=""
for i in $(seq 1 200); do
    values=$(notifications || true)
    if [ "$(printf '%s\n' "$values" | grep -c .)" -ge 2 ] \
            && [ "$(printf '%s\n' "$values" | sort -u | grep -c .)" -ge 2 ]; then
        break
    fi
    sleep 0.1
done
count=$(printf '%s\n' "$values" | grep -c . || true)
distinct=$(printf '%s\n' "$values" | sort -u | grep -c . || true)
[ "$count" -ge 2 ] && [ "$distinct" -ge 2 ] \
    || fail "expected >= 2 notifications with changing values, got $count ($distinct distinct): $values"
echo "notifications: $count, $distinct distinct values: $(echo $values)"

# Reset Min and Max: afterwards min and max are (nearly) the current value, so the range
# is narrower than the one collected while observing.
range() {
    local min max
    min=$(field "$(op read /3303/0/5601 --format text)" value)
    max=$(field "$(op read /3303/0/5602 --format text)" value)
    python3 -c 'import sys; print(float(sys.argv[2]) - float(sys.argv[1]))' "$min" "$max"
}
sleep 3
before=$(range)
expect_code "$(op exec /3303/0/5605)" "2.04" "execute /3303/0/5605"
after=$(range)
python3 -c 'import sys; b, a = float(sys.argv[1]), float(sys.argv[2]); sys.exit(0 if 0 <= a < b else 1)' "$before" "$after" \
    || fail "reset did not narrow min..max: before $before, after $after"
echo "min..max range: $before before the reset, $after after"

senml=$(op read /3303/0 --format senml-cbor)
expect_code "$senml" "2.05" "read /3303/0 as SenML CBOR"
grep -q "5700" <<< "$senml" || fail "SenML CBOR read lacks 5700: $senml"
tlv=$(op read /3303/0 --format tlv)
expect_code "$tlv" "2.05" "read /3303/0 as TLV"
grep -q "5700" <<< "$tlv" || fail "TLV read lacks 5700: $tlv"
grep -q "Cel" <<< "$tlv" || fail "TLV read lacks the units: $tlv"

op cancel-observe /3303/0/5700 > "$work/cancel.json"
grep -q '"cancelled":true' "$work/cancel.json" || fail "cancelling the observation failed: $(cat "$work/cancel.json")"

kill -INT "$example_pid"
rc=0
wait_pid "$example_pid" 15 || rc=$?
[ "$rc" -eq 0 ] || example_failed "$(basename "$example_bin")" "$rc"
wait_for_event "$work/events.jsonl" "deregistered" "$ep" 10
echo "PASS: observed, notified, reset, read as SenML CBOR and TLV, deregistered"
