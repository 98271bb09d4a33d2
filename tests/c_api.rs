//! The C API contract from C: `tests/c/api_contract.c` is compiled against
//! `include/estuary.h` with `-Wall -Wextra -Werror`, linked with the static library C
//! firmware links (`libestuary.a`), and run; it exits 0 only if every check passed.
//!
//! Which `libestuary.a`: `cargo test` compiles the library for the tests with dev-dependency
//! features unified in, so its staticlib lands in `deps/` under a different hash and is not
//! copied to `target/<profile>/libestuary.a` — that file is only refreshed by `cargo build`
//! and may be stale or missing. So the test runs `cargo build --lib` itself (the exact
//! build CMake runs), reads the staticlib path from cargo's JSON messages, and links that.
//! `ESTUARY_STATICLIB=/path/libestuary.a` skips the build and links the given file.

use std::env;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const MANIFEST_DIR: &str = env!("CARGO_MANIFEST_DIR");

/// `target/` and the profile of the running test, from the test executable's path
/// (`<target>[/<triple>]/<profile-dir>/deps/c_api-<hash>`).
fn target_layout() -> (PathBuf, Option<String>, String) {
    let exe = env::current_exe().expect("test executable path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("<profile>/deps/ layout");
    let profile = match profile_dir.file_name().and_then(|s| s.to_str()) {
        Some("debug") => "dev".to_string(),
        Some(other) => other.to_string(),
        None => panic!("unexpected layout: {}", exe.display()),
    };
    let above = profile_dir.parent().expect("target directory");
    let triple = env!("ESTUARY_BUILD_TARGET");
    if above.file_name().and_then(|s| s.to_str()) == Some(triple) {
        let target_dir = above.parent().expect("target directory");
        (target_dir.to_path_buf(), Some(triple.to_string()), profile)
    } else {
        (above.to_path_buf(), None, profile)
    }
}

/// Builds the staticlib as `cargo build` does and returns its path.
fn staticlib() -> PathBuf {
    if let Some(p) = env::var_os("ESTUARY_STATICLIB") {
        return PathBuf::from(p);
    }
    let (target_dir, triple, profile) = target_layout();
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(MANIFEST_DIR)
        .args(["build", "--lib", "-p", "estuary", "--message-format=json"])
        .args(["--profile", &profile])
        .arg("--target-dir")
        .arg(&target_dir);
    if let Some(t) = &triple {
        cmd.args(["--target", t]);
    }
    let out = cmd.output().expect("running cargo build");
    assert!(
        out.status.success(),
        "cargo build --lib failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // One JSON object per line; the estuary artifact lists libestuary.a among its files.
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .lines()
        .filter(|l| l.contains("\"reason\":\"compiler-artifact\""))
        .flat_map(|l| l.split('"'))
        .find(|s| s.ends_with("/libestuary.a"))
        .map(|s| PathBuf::from(s.replace("\\\\", "\\")))
        .unwrap_or_else(|| panic!("cargo build reported no libestuary.a:\n{stdout}"))
}

fn c_compiler() -> cc::Tool {
    let target = env!("ESTUARY_BUILD_TARGET");
    cc::Build::new()
        .target(target)
        .host(target)
        .opt_level(0)
        .debug(true)
        .cargo_metadata(false)
        .cargo_warnings(false)
        .get_compiler()
}

/// Compiles and links `tests/c/<name>.c` into `out`, with extra compiler flags.
fn build_c(name: &str, out: &Path, extra: &[&str]) -> Output {
    let lib = staticlib();
    assert!(lib.is_file(), "{} is missing", lib.display());
    let mut cmd = c_compiler().to_command();
    cmd.args([
        "-std=c11",
        "-D_DEFAULT_SOURCE",
        "-Wall",
        "-Wextra",
        "-Werror",
    ])
    .args(extra)
    .arg("-I")
    .arg(Path::new(MANIFEST_DIR).join("include"))
    .arg(Path::new(MANIFEST_DIR).join(format!("tests/c/{name}.c")))
    .arg(&lib)
    .args(["-lpthread", "-ldl", "-lm"])
    .arg("-o")
    .arg(out);
    cmd.output().expect("running the C compiler")
}

fn run_contract(variant: &str, extra: &[&str]) -> Option<Output> {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("c_api");
    std::fs::create_dir_all(&dir).expect("creating the C test directory");
    let exe = dir.join(format!("api_contract{variant}"));
    let built = build_c("api_contract", &exe, extra);
    if !built.status.success() {
        return if extra.is_empty() {
            panic!(
                "compiling tests/c/api_contract.c failed:\n{}",
                String::from_utf8_lossy(&built.stderr)
            )
        } else {
            eprintln!(
                "skipping the {extra:?} build (the C compiler refused it):\n{}",
                String::from_utf8_lossy(&built.stderr)
            );
            None
        };
    }
    Some(
        Command::new(&exe)
            .output()
            .expect("running the C contract test"),
    )
}

fn assert_passed(out: &Output, what: &str) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{what} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    assert!(stdout.contains(", 0 failed"), "{what}: {stdout}");
}

#[test]
fn c_api_contract() {
    let out = run_contract("", &[]).expect("plain build");
    assert_passed(&out, "api_contract");
}

/// The same checks under AddressSanitizer and UndefinedBehaviorSanitizer, where the
/// compiler supports them (leak checking included: every estuary_t is deleted).
#[test]
fn c_api_contract_under_sanitizers() {
    let flags = [
        "-fsanitize=address,undefined",
        "-fno-sanitize-recover=all",
        "-fno-omit-frame-pointer",
    ];
    if let Some(out) = run_contract("_asan", &flags) {
        // LeakSanitizer needs ptrace, which some containers forbid; that is the
        // environment failing, not the code.
        if String::from_utf8_lossy(&out.stderr)
            .contains("LeakSanitizer has encountered a fatal error")
        {
            eprintln!("skipping: LeakSanitizer cannot run in this environment");
            return;
        }
        assert_passed(&out, "api_contract under ASan/UBSan");
    }
}
