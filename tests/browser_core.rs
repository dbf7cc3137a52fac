//! The core crate (GPU layer through inference) and the web page's crate
//! must build for the browser: no native-only dependency, no blocking
//! readback. This checks both for `wasm32-unknown-unknown`, as
//! `web/build.sh` builds them.
use std::path::Path;
use std::process::Command;

#[test]
#[cfg_attr(
    not(wasm_target),
    ignore = "the wasm32 target is not installed: run `rustup target add wasm32-unknown-unknown` and rebuild"
)]
fn core_builds_for_webgpu_in_a_browser() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    // A target folder of its own (the outer `cargo test` holds the lock on
    // the workspace's), and web/build.sh's profile: tests/browser.rs then
    // finds the build done.
    let target = root.join("target").join("wasm-site");
    let out = Command::new(env!("CARGO"))
        .current_dir(root)
        .args([
            "build",
            "--release",
            "--package",
            "engine-core",
            "--package",
            "engine-web",
            "--target",
            "wasm32-unknown-unknown",
            "--quiet",
        ])
        .env("CARGO_TARGET_DIR", &target)
        .output()
        .expect("cargo runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "engine-core or engine-web does not build for wasm32:\n{stderr}"
    );
    // A build succeeds with warnings: the core is kept warning-free
    // on both targets.
    assert!(!stderr.contains("warning"), "{stderr}");
}
