//! Generates the C header `include/estuary.h` from `src/ffi/` with cbindgen.
//!
//! The header is committed. It is always written to `$OUT_DIR/estuary.h` (whose path the
//! crate gets as `ESTUARY_GENERATED_HEADER`, for the staleness test in `src/ffi/`), and
//! copied to `include/estuary.h` only when its content changed, so timestamps do not
//! churn and a read-only source tree only gets a warning.
//!
//! With `ESTUARY_HEADER_CHECK=1` nothing is written to `include/`: the build fails instead
//! if the committed header is stale (for CI on a clean checkout).

use std::env;
use std::fs;
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=cbindgen.toml");
    println!("cargo:rerun-if-changed=src/ffi");
    println!("cargo:rerun-if-changed=include/estuary.h");
    println!("cargo:rerun-if-env-changed=ESTUARY_HEADER_CHECK");

    let crate_dir =
        PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));

    let config = cbindgen::Config::from_file(crate_dir.join("cbindgen.toml"))
        .unwrap_or_else(|e| panic!("reading cbindgen.toml: {e}"));
    let bindings = cbindgen::Builder::new()
        .with_config(config)
        .with_src(crate_dir.join("src/ffi/mod.rs"))
        .generate()
        .unwrap_or_else(|e| panic!("generating the C header from src/ffi/: {e}"));
    let mut header = Vec::new();
    bindings.write(&mut header);

    let generated = out_dir.join("estuary.h");
    write_if_changed(&generated, &header)
        .unwrap_or_else(|e| panic!("writing {}: {e}", generated.display()));
    println!(
        "cargo:rustc-env=ESTUARY_GENERATED_HEADER={}",
        generated.display()
    );
    // The C contract test compiles for the same target the crate was built for.
    println!(
        "cargo:rustc-env=ESTUARY_BUILD_TARGET={}",
        env::var("TARGET").unwrap_or_default()
    );

    let committed = crate_dir.join("include/estuary.h");
    let up_to_date = fs::read(&committed).is_ok_and(|c| c == header);
    if up_to_date {
        return;
    }
    if env::var("ESTUARY_HEADER_CHECK").is_ok_and(|v| v == "1") {
        panic!(
            "include/estuary.h is out of date with src/ffi/: run `cargo build` and commit \
             include/estuary.h (generated: {})",
            generated.display()
        );
    }
    if let Err(e) = write_if_changed(&committed, &header) {
        println!(
            "cargo:warning=could not update {} ({e}); the generated header is {}",
            committed.display(),
            generated.display()
        );
    }
}

fn write_if_changed(path: &std::path::Path, content: &[u8]) -> std::io::Result<()> {
    if fs::read(path).is_ok_and(|c| c == content) {
        return Ok(());
    }
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    fs::write(path, content)
}
