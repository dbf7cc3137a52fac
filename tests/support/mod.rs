//! Helpers shared by the integration tests (each test file includes this
//! module; not every file uses every helper).
#![allow(dead_code)]
use engine::Gpu;
use std::path::PathBuf;
use std::sync::OnceLock;

/// One device per test binary, with the adapter's own limits.
pub fn gpu() -> &'static Gpu {
    static GPU: OnceLock<Gpu> = OnceLock::new();
    GPU.get_or_init(|| Gpu::new(None).expect("a GPU adapter (apt-get install mesa-vulkan-drivers)"))
}

/// A fresh, empty folder `engine-{suite}-{name}-{pid}` in the temp dir.
pub fn temp_dir(suite: &str, name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("engine-{suite}-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}
