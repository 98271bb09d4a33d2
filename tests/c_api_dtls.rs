//! The DTLS parts of the C API from C: `tests/c/dtls_config.c` (trust_store_certs and the
//! estuary_certificate_chain_info_from_* helpers, udp_dtls_hs_tx_params, the Security
//! instance's DTLS fields) compiled against `include/estuary.h` with `-Wall -Wextra -Werror`,
//! linked with `libestuary.a` (built as `tests/c_api.rs` explains) and run.

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

#[test]
fn c_api_dtls_fields() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("c_api_dtls");
    let certs = dir.join("certs");
    std::fs::create_dir_all(&certs).expect("creating the C test directory");
    let mut rng = estuary::crypto::Drbg::from_seed(8);
    let ca = estuary::crypto::CertificateIssuer::new_root_ca(
        estuary::crypto::KeyPair::generate(&mut rng).unwrap(),
        "CN=c-api-dtls",
        estuary::time::UtcTime::from_unix_seconds(0),
        estuary::time::UtcTime::from_unix_seconds(1 << 31),
        &mut rng,
    )
    .unwrap();
    let pem = certs.join("ca.pem");
    std::fs::write(&pem, ca.certificate().to_pem()).unwrap();
    let exe = dir.join("dtls_config");
    let built = build_c("dtls_config", &exe, &[]);
    assert!(
        built.status.success(),
        "compiling tests/c/dtls_config.c failed:\n{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let out = Command::new(&exe)
        .arg(&pem)
        .arg(&certs)
        .output()
        .expect("running the C test");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains(", 0 failed"),
        "dtls_config failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}
