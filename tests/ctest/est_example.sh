#!/usr/bin/env bash
# ctest: examples-c/03-est against estuary-testserver with 20-second EST certificates.
#   run 1: no persistence file -> bootstrap (factory certificate) -> /est/crts -> /est/sen ->
#          Register in mode 4 -> the server reads /3/0 -> /est/sren -> reconnect + Register
#          -> SIGINT: persists, de-registers, exits 0 (the file is 0600)
#   run 2: restores from the file and registers with its EST certificate: no new
#          Bootstrap-Request and no new /est/sen in the events file -> SIGINT, exit 0
#   run 3: one byte of the file flipped: the restore is refused, the file set aside
#          (.rejected), and the device bootstraps again -> SIGINT, exit 0
# 127.0.0.1 only; every wait is bounded (about 25 s in all when things work, 90 s at most).
#   est_example.sh SERVER_BIN EXAMPLE_BIN WORKDIR
set -euo pipefail
server_bin=$1 example_bin=$2 work=$3
source "$(dirname "$0")/common.sh"

# Memory-checked runs: common.sh may provide run_example (the example under a checker named
# by $ESTUARY_EXAMPLE_WRAPPER) and SLOWDOWN (how much longer waits may take); plain runs
# need neither.
declare -F run_example > /dev/null || run_example() { exec "$@"; }
SLOWDOWN=${SLOWDOWN:-1}
deadline=$((SECONDS + 90 * SLOWDOWN))
ep="ctest-est-$$"

# start_est_server BIN WORKDIR ENDPOINT: a fresh state directory whose endpoint gets a
# management account in mode 4, every port chosen by the OS (port 0, read back from the
# server's "listening" line, so parallel tests never race for a port), and the server
# running with 20-second EST certificates. Sets WORK, BS_COAPS_PORT, COAPS_PORT, CONTROL.
start_est_server() {
    local bin=$1 ep=$3 i line=""
    WORK=$2
    rm -rf "$WORK"
    mkdir -p "$WORK"
    "$bin" init --dir "$WORK/state" --endpoint "$ep" > "$WORK/init.log"
    sed -i -e 's/^\(lwm2m_coaps\?\|bootstrap_coaps\?\|control\) = .*/\1 = 0/' \
        -e 's/^security_mode = .*/security_mode = "est"/' "$WORK/state/config.toml"
    "$bin" run --dir "$WORK/state" --events "$WORK/events.jsonl" --cert-validity 20s \
        > "$WORK/server.log" 2>&1 &
    local server_pid=$!
    PIDS+=("$server_pid")
    for i in $(seq 1 $((100 * ${SLOWDOWN:-1}))); do
        line=$(grep -m1 '^listening ' "$WORK/server.log" 2>/dev/null || true)
        [ -n "$line" ] && break
        kill -0 "$server_pid" 2>/dev/null || fail "the test server exited"
        sleep 0.1
    done
    [ -n "$line" ] || fail "the test server did not come up"
    BS_COAPS_PORT=$(sed -n 's/.* bootstrap_coaps=coaps:\/\/[^ ]*:\([0-9]*\).*/\1/p' <<< "$line")
    COAPS_PORT=$(sed -n 's/.* coaps=coaps:\/\/[^ ]*:\([0-9]*\).*/\1/p' <<< "$line")
    CONTROL=$(sed -n 's/.* control=http:\/\/\([^ ]*\).*/\1/p' <<< "$line")
    [ -n "$BS_COAPS_PORT" ] && [ -n "$COAPS_PORT" ] && [ -n "$CONTROL" ] \
        || fail "unexpected listening line: $line"
    for i in $(seq 1 50); do
        "$bin" clients --control "$CONTROL" > /dev/null 2>&1 && return 0
        sleep 0.1
    done
    fail "the control API at $CONTROL does not answer"
}
start_est_server "$server_bin" "$work" "$ep"
events="$WORK/events.jsonl"
creds="$WORK/state/endpoints/$ep"
persist_file="$WORK/$ep.persist"
args=("$ep" -u "coaps://127.0.0.1:${BS_COAPS_PORT}" -c "$creds" -p "$persist_file")

pid="" # the running example, watched by every wait
count() { # count EVENT [EXTRA_PATTERN]: events of this endpoint
    { grep "\"event\":\"$1\"" "$events" 2>/dev/null || true; } | grep "\"ep\":\"$ep\"" \
        | { grep -c -- "${2:-.}" || true; }
}
wait_count() { # wait_count EVENT MIN SECONDS [EXTRA_PATTERN]
    local i
    for i in $(seq 1 $(($3 * 10 * SLOWDOWN))); do
        [ "$(count "$1" "${4:-.}")" -ge "$2" ] && { echo "event: ep=$ep $1 (#$2)"; return 0; }
        [ "$SECONDS" -lt "$deadline" ] || fail "$((90 * SLOWDOWN)) s bound reached waiting for $1"
        [ -z "$pid" ] || kill -0 "$pid" 2>/dev/null || fail "03-est exited while waiting for $1"
        sleep 0.1
    done
    fail "fewer than $2 '$1' events for $ep within $3 s"
}
wait_log() { # wait_log PATTERN LOG SECONDS [AFTER]: a line matching PATTERN (after AFTER's line)
    local i
    for i in $(seq 1 $(($3 * 10 * SLOWDOWN))); do
        if sed -n "/${4:-^}/,\$p" "$2" 2>/dev/null | grep -q -- "$1"; then
            return 0
        fi
        sleep 0.1
    done
    fail "no '$1' in $2 within $3 s"
}
stop_example() { # stop_example PID LOG: SIGINT, exit code 0 within 15 s
    kill -INT "$1"
    local rc=0
    wait_pid "$1" 15 || rc=$?
    if [ "$rc" -ne 0 ]; then
        declare -F example_failed > /dev/null && example_failed 03-est "$rc"
        fail "03-est exited with $rc after SIGINT (see $2)"
    fi
    pid=""
}

# ---- run 1: first boot
[ ! -e "$persist_file" ] || fail "stale $persist_file"
run_example "$example_bin" "${args[@]}" > "$WORK/run1.log" 2>&1 &
pid=$!
PIDS+=("$pid")
wait_count bootstrap_finished 1 30
wait_count cacerts 1 20
wait_count enrolled 1 20 '"reenroll":false'
wait_count registered 1 20
"$server_bin" client "$ep" --control "$CONTROL" > "$WORK/client1.json"
grep -q '"security_mode":"est"' "$WORK/client1.json" \
    || fail "not registered in mode 4: $(cat "$WORK/client1.json")"
"$server_bin" read "$ep" /3/0 --format tlv --lines --control "$CONTROL" > "$WORK/read.txt" \
    || fail "Read /3/0 failed"
grep -q "Estuary Labs" "$WORK/read.txt" || fail "Read /3/0 gave: $(cat "$WORK/read.txt")"
grep -q "03-est" "$WORK/read.txt" || fail "Read /3/0 has no model number: $(cat "$WORK/read.txt")"
echo "read /3/0: $(tr '\n' ' ' < "$WORK/read.txt")"
# 0.8 of a 20 s certificate: /est/sren about 16 s after enrollment, then a new session.
wait_count enrolled 1 30 '"reenroll":true'
wait_count registered 2 20
# Within a tick of its loop the example reports the new certificate, then persists it.
wait_log "03-est: re-enrolled" "$WORK/run1.log" 5
wait_log "03-est: persisted to .*changed:.* EST state" "$WORK/run1.log" 5 "03-est: re-enrolled"
stop_example "$pid" "$WORK/run1.log"
wait_count deregistered 1 10
[ -f "$persist_file" ] || fail "no persistence file after run 1"
mode=$(stat -c %a "$persist_file")
[ "$mode" = 600 ] || fail "persistence file has mode $mode, want 600"
grep -q "persisted to" "$WORK/run1.log" || fail "03-est never said it persisted"

# ---- run 2: restart from the persistence file
bootstraps=$(count bootstrap_requested)
enrollments=$(count enrolled '"reenroll":false')
registrations=$(count registered)
run_example "$example_bin" "${args[@]}" > "$WORK/run2.log" 2>&1 &
pid=$!
PIDS+=("$pid")
wait_count registered $((registrations + 1)) 20
grep -q "03-est: restored" "$WORK/run2.log" || fail "03-est did not restore: $(head -n 20 "$WORK/run2.log")"
[ "$(count bootstrap_requested)" -eq "$bootstraps" ] || fail "run 2 bootstrapped again"
[ "$(count enrolled '"reenroll":false')" -eq "$enrollments" ] || fail "run 2 enrolled from scratch (/est/sen)"
"$server_bin" client "$ep" --control "$CONTROL" > "$WORK/client2.json"
grep -q '"security_mode":"est"' "$WORK/client2.json" \
    || fail "run 2 not registered in mode 4: $(cat "$WORK/client2.json")"
# The certificate presented is the last one the CA issued: the one from the file.
issued=$(grep '"event":"enrolled"' "$events" | grep "\"ep\":\"$ep\"" | tail -n 1 \
    | sed -n 's/.*"not_after":"\([^"]*\)".*/\1/p')
grep -q "\"certificate_not_after\":\"$issued\"" "$WORK/client2.json" \
    || fail "run 2 did not present the certificate issued last (notAfter $issued): $(cat "$WORK/client2.json")"
stop_example "$pid" "$WORK/run2.log"
wait_count deregistered 2 10
[ "$(count bootstrap_requested)" -eq 1 ] || fail "more than one Bootstrap-Request in all"

# ---- run 3: a damaged persistence file is refused whole, set aside, and the device
# bootstraps again from its factory credentials
cp "$persist_file" "$WORK/intact.persist"
offset=$(($(stat -c %s "$persist_file") / 2))
byte=$(od -An -tu1 -j "$offset" -N1 "$persist_file" | tr -d ' ')
printf "\\x$(printf %02x $((byte ^ 0xff)))" | dd of="$persist_file" bs=1 seek="$offset" conv=notrunc status=none
cmp -s "$persist_file" "$WORK/intact.persist" && fail "the byte at $offset did not change"
registrations=$(count registered)
run_example "$example_bin" "${args[@]}" > "$WORK/run3.log" 2>&1 &
pid=$!
PIDS+=("$pid")
wait_count bootstrap_requested 2 20
wait_count registered $((registrations + 1)) 20
grep -q "03-est: cannot restore" "$WORK/run3.log" || fail "run 3 did not report the damaged file"
[ -f "$persist_file.rejected" ] || fail "the damaged file was not set aside"
stop_example "$pid" "$WORK/run3.log"
echo "PASS: bootstrap, crts, sen, mode-4 Register, Read /3/0, sren + reconnect; restart from persistence registered without bootstrap; a damaged file made it bootstrap again (${SECONDS}s)"
