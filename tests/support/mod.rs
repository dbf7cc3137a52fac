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

/// A prepared folder at `dir` whose `test` split holds `samples` (one
/// patient each, 0.2 mm, no crops), for the command-line tests.
pub fn write_test_split(dir: &std::path::Path, samples: &[engine::data::prepared::Sample]) {
    use engine::data::prepared::{Prepared, SetWriter};
    let mut w = SetWriter::new(dir, "test", 0.0).unwrap();
    for (i, smp) in samples.iter().enumerate() {
        let (scan, mask) = smp.load().unwrap();
        w.add(Prepared {
            name: &format!("case{i}"),
            split: "test",
            patient: &format!("p{i}"),
            source: String::new(),
            rois: vec![],
            abnormal: mask.pixels.iter().any(|&v| v != 0),
            mask_complete: true,
            classes: vec![],
            trim: false,
            spacing_mm: 0.2,
            scan,
            mask,
        })
        .unwrap();
    }
    w.finish().unwrap();
}
