# Shared by scripts/test, scripts/demo and scripts/bench: installs what a fresh
# Debian/Ubuntu machine with Rust and a C compiler lacks, and prints a step header.
# Sourced, not run.

step() { printf '\n==> %s\n' "$*"; }

# apt packages the build and tests need: cmake for the C side, clang + libclang for
# mbedtls' bindings, openssl as an independent peer for certificate checks, libcoap's
# command-line tools (coap-client-openssl, coap-server-openssl) as an independent DTLS peer,
# valgrind for the memcheck runs of the C examples.
ESTUARY_APT_PACKAGES=(cmake clang libclang-dev openssl make pkg-config libcoap3-bin valgrind)

ensure_tools() {
    local missing=()
    command -v cmake >/dev/null || missing+=(cmake)
    command -v clang >/dev/null || missing+=(clang)
    command -v openssl >/dev/null || missing+=(openssl)
    command -v make >/dev/null || missing+=(make)
    command -v coap-client-openssl >/dev/null || missing+=(libcoap3-bin)
    command -v valgrind >/dev/null || missing+=(valgrind)
    if ! ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1 && ! ls /usr/lib/*/libclang*.so* >/dev/null 2>&1; then
        missing+=(libclang-dev)
    fi
    for extra in "$@"; do
        command -v "$extra" >/dev/null || missing+=("$extra")
    done
    if [ ${#missing[@]} -eq 0 ]; then
        return 0
    fi
    step "installing missing tools: ${missing[*]}"
    local sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null; then sudo=sudo; else
            echo "missing ${missing[*]} and not root: install them (apt-get install ${ESTUARY_APT_PACKAGES[*]})" >&2
            return 1
        fi
    fi
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
        "${ESTUARY_APT_PACKAGES[@]}" "$@" >/dev/null
}

ensure_rust() {
    if ! command -v cargo >/dev/null; then
        if [ -x "$HOME/.cargo/bin/cargo" ]; then
            export PATH="$HOME/.cargo/bin:$PATH"
        else
            echo "cargo not found: install a Rust toolchain (https://rustup.rs)" >&2
            return 1
        fi
    fi
    rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy rustfmt >/dev/null 2>&1 || true
}
