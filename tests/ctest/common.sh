# Helpers for the ctest drivers: free loopback ports, starting estuary-testserver with a
# fresh state directory, bounded waits, and cleanup of every process started. Sourced.

PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
}
trap cleanup EXIT

# Memory-checking runs (CMake's "valgrind" tests) set ESTUARY_EXAMPLE_WRAPPER to the checker's
# command line and ESTUARY_CTEST_SLOWDOWN to how much longer every bounded wait may take.
SLOWDOWN=${ESTUARY_CTEST_SLOWDOWN:-1}

# run_example BIN ARGS...: runs the example, under $ESTUARY_EXAMPLE_WRAPPER when set. Start
# it in the background (`run_example ... &`): exec makes $! the example's (or the checker's)
# own pid, so SIGINT reaches it.
run_example() {
    # shellcheck disable=SC2086 # the wrapper is a command line: split on purpose
    exec ${ESTUARY_EXAMPLE_WRAPPER:-} "$@"
}

# example_failed NAME RC: fails with the example's exit status, naming what memory checker
# (if any) ran it, since a checker reports errors and leaks through the exit status.
example_failed() {
    local what="$1 exited with $2 after SIGINT"
    if [ -n "${ESTUARY_EXAMPLE_WRAPPER:-}" ]; then
        what="$what (under ${ESTUARY_EXAMPLE_WRAPPER%% *}: memory errors or definite leaks; see example.log)"
    fi
    fail "$what"
}

fail() {
    echo "FAIL: $*" >&2
    for f in "$WORK"/*.log; do
        [ -f "$f" ] && { echo "--- $f" >&2; tail -n 40 "$f" >&2; }
    done
    exit 1
}

# A port on 127.0.0.1 that is free for both UDP and TCP right now, asked from the kernel.
# Another test may still take it before the server binds it: start_testserver retries.
free_port() {
    python3 -c '
import socket
while True:
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind(("127.0.0.1", 0))
    port = u.getsockname()[1]
    t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        t.bind(("127.0.0.1", port))
    except OSError:
        continue
    print(port)
    break
' 2>/dev/null || echo $(( 20000 + RANDOM % 20000 ))
}

# set_lwm2m_port CONFIG PORT: point the state directory's LwM2M server at PORT.
set_lwm2m_port() {
    sed -i "s/^lwm2m_coap = .*/lwm2m_coap = $2/" "$1"
}

# set_coaps_port CONFIG PORT: point the state directory's LwM2M coaps listener at PORT.
set_coaps_port() {
    sed -i "s/^lwm2m_coaps = .*/lwm2m_coaps = $2/" "$1"
}

# start_testserver BIN WORKDIR ENDPOINT [ARG]: init + run in the background (calling
# $START_HOOK CONFIG ARG first when set); sets LWM2M_PORT, BS_PORT, BS_COAPS_PORT,
# COAPS_PORT and CONTROL, and waits until the control API answers.
start_testserver() {
    local bin=$1 ep=$3 attempt
    WORK=$2
    rm -rf "$WORK"
    mkdir -p "$WORK"
    "$bin" init --dir "$WORK/state" --endpoint "$ep" > "$WORK/init.log"
    # Tests run in parallel: a port found free may be taken before the server binds it, so
    # a bind failure picks new ports and starts again (a few times).
    for attempt in 1 2 3 4 5; do
        LWM2M_PORT=$(free_port)
        CONTROL="127.0.0.1:$(free_port)"
        set_lwm2m_port "$WORK/state/config.toml" "$LWM2M_PORT"
        COAPS_PORT=$(free_port)
        set_coaps_port "$WORK/state/config.toml" "$COAPS_PORT"
        BS_PORT=$(free_port)
        BS_COAPS_PORT=$(free_port)
        sed -i "s/^bootstrap_coap = .*/bootstrap_coap = $BS_PORT/" "$WORK/state/config.toml"
        sed -i "s/^bootstrap_coaps = .*/bootstrap_coaps = $BS_COAPS_PORT/" "$WORK/state/config.toml"
        # A driver may adjust the state directory before the server starts.
        if [ -n "${START_HOOK:-}" ]; then
            "$START_HOOK" "$WORK/state/config.toml" "${4:-}"
        fi
        "$bin" run --dir "$WORK/state" --control "$CONTROL" --events "$WORK/events.jsonl" > "$WORK/server.log" 2>&1 &
        local pid=$!
        local i
        for i in $(seq 1 100); do
            if "$bin" clients --control "$CONTROL" > /dev/null 2>&1; then
                PIDS+=("$pid")
                return 0
            fi
            if ! kill -0 "$pid" 2>/dev/null; then
                break
            fi
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            PIDS+=("$pid")
            fail "test server did not come up"
        fi
        wait "$pid" 2>/dev/null || true
        grep -q "Address already in use" "$WORK/server.log" \
            || fail "test server exited at start"
        echo "ports taken meanwhile (attempt $attempt); retrying with new ones" >&2
    done
    fail "test server could not bind free ports"
}

# wait_for_event FILE EVENT ENDPOINT SECONDS
wait_for_event() {
    local file=$1 event=$2 ep=$3 secs=$(($4 * SLOWDOWN)) i
    for i in $(seq 1 $((secs * 10))); do
        if [ -f "$file" ] && grep "\"event\":\"$event\"" "$file" | grep -q "\"ep\":\"$ep\""; then
            echo "event: ep=$ep $event"
            return 0
        fi
        sleep 0.1
    done
    fail "no '$event' event for $ep within ${secs}s"
}

# wait_pid PID SECONDS: the process's exit status, or failure if it is still running.
wait_pid() {
    local pid=$1 secs=$(($2 * SLOWDOWN)) i
    for i in $(seq 1 $((secs * 10))); do
        if ! kill -0 "$pid" 2>/dev/null; then
            wait "$pid"
            return $?
        fi
        sleep 0.1
    done
    fail "process $pid still running after ${secs}s"
}
