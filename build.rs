// Real-data tests run when MAMMO_DATA is set at build time and are ignored
// (with a message saying so) otherwise: `cargo test` is the one test command
// both for users without the data and for CI, which sets it.
fn main() {
    println!("cargo:rustc-check-cfg=cfg(mammo_data)");
    println!("cargo:rustc-check-cfg=cfg(python_torch)");
    println!("cargo:rustc-check-cfg=cfg(dciodvfy)");
    println!("cargo:rustc-check-cfg=cfg(python_onnx)");
    println!("cargo:rustc-check-cfg=cfg(wasm_target)");
    println!("cargo:rustc-check-cfg=cfg(browser_tools)");
    println!("cargo:rerun-if-env-changed=MAMMO_DATA");
    if std::env::var_os("MAMMO_DATA").is_some_and(|v| !v.is_empty()) {
        println!("cargo:rustc-cfg=mammo_data");
    }
    git_commit();
    // tests/browser_core.rs builds the core for the browser when the
    // toolchain has the wasm32 target.
    if has_wasm_target() {
        println!("cargo:rustc-cfg=wasm_target");
        // tests/browser.rs also needs the page's build tools and a browser.
        if wasm_bindgen_matches_lock() && runs("chromedriver") && runs("chromium") {
            println!("cargo:rustc-cfg=browser_tools");
        }
    }
    // tests/python_interop.rs runs when python3 has what tools/ needs.
    let python = std::process::Command::new("python3")
        .args(["-c", "import torch, safetensors, numpy, PIL"])
        .output();
    if python.is_ok_and(|o| o.status.success()) {
        println!("cargo:rustc-cfg=python_torch");
        // The ONNX export also needs onnx (and onnxscript from torch 2.9 on).
        let onnx = std::process::Command::new("python3")
            .args([
                "-c",
                "import importlib.util as u, torch, onnx; \
                 v = tuple(int(x) for x in torch.__version__.split('+')[0].split('.')[:2]); \
                 assert v < (2, 9) or u.find_spec('onnxscript')",
            ])
            .output();
        if onnx.is_ok_and(|o| o.status.success()) {
            println!("cargo:rustc-cfg=python_onnx");
        }
    }
    // tests/workflow.rs validates the DICOM results with dicom3tools'
    // dciodvfy when it is installed.
    if std::process::Command::new("dciodvfy")
        .arg("-")
        .output()
        .is_ok()
    {
        println!("cargo:rustc-cfg=dciodvfy");
    }
}

/// ENGINE_GIT_COMMIT: the commit being built (recorded in a training run's
/// config.json), when built from a git checkout; rebuilt when HEAD moves.
fn git_commit() {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let Some(commit) = git(&["rev-parse", "HEAD"]) else {
        return;
    };
    println!("cargo:rustc-env=ENGINE_GIT_COMMIT={commit}");
    let mut watch = Vec::new();
    if let Some(dir) = git(&["rev-parse", "--git-dir"]) {
        watch.push(std::path::Path::new(&dir).join("HEAD"));
    }
    if let (Some(common), Some(head)) = (
        git(&["rev-parse", "--git-common-dir"]),
        git(&["symbolic-ref", "-q", "HEAD"]),
    ) {
        watch.push(std::path::Path::new(&common).join(head));
        watch.push(std::path::Path::new(&common).join("packed-refs"));
    }
    for p in watch.into_iter().filter(|p| p.exists()) {
        println!("cargo:rerun-if-changed={}", p.display());
    }
}

/// Whether the toolchain building this has the standard library for
/// `wasm32-unknown-unknown` (`rustup target add wasm32-unknown-unknown`).
fn has_wasm_target() -> bool {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let Some(libdir) = std::process::Command::new(rustc)
        .args([
            "--print",
            "target-libdir",
            "--target",
            "wasm32-unknown-unknown",
        ])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    else {
        return false;
    };
    std::fs::read_dir(libdir).is_ok_and(|entries| {
        entries
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with("libcore-"))
    })
}

/// Whether `program --version` runs.
fn runs(program: &str) -> bool {
    std::process::Command::new(program)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Whether the installed wasm-bindgen CLI is the version of the
/// wasm-bindgen crate in Cargo.lock (web/build.sh needs exactly that).
fn wasm_bindgen_matches_lock() -> bool {
    println!("cargo:rerun-if-changed=Cargo.lock");
    let lock = std::fs::read_to_string("Cargo.lock").unwrap_or_default();
    let locked = lock
        .split("[[package]]")
        .find(|p| p.contains("name = \"wasm-bindgen\"\n"))
        .and_then(|p| p.lines().find_map(|l| l.strip_prefix("version = ")))
        .map(|v| v.trim_matches('"').to_string());
    let installed = std::process::Command::new("wasm-bindgen")
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    matches!((locked, installed), (Some(l), Some(i)) if i == format!("wasm-bindgen {l}"))
}
