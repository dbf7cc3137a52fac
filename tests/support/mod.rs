//! Helpers shared by the integration tests (each test file includes this
//! module; not every file uses every helper).
#![allow(dead_code)]
use engine::Gpu;
use std::path::PathBuf;
use std::sync::Mutex;

/// A device with the adapter's own limits, leased to the calling test
/// (see `DevicePool`).
pub fn gpu() -> &'static Gpu {
    static POOL: DevicePool = DevicePool::new();
    thread_local!(static LEASE: Lease = POOL.lease(|| Gpu::new(None)));
    LEASE.with(|l| l.gpu)
}

/// Devices leased one per running test thread and handed on, with the
/// pipelines they compiled, when it ends. lavapipe compiles a kernel (up
/// to ~13 s of LLVM for the widest tiles) and runs its dispatches on its
/// device's one queue thread, so tests sharing one device wait for each
/// other's compiles: one core busy while the others idle.
pub struct DevicePool {
    free: Mutex<Vec<&'static Gpu>>,
}

/// A test thread's device, back in its pool when the thread ends.
pub struct Lease {
    pub gpu: &'static Gpu,
    pool: &'static DevicePool,
}

impl DevicePool {
    pub const fn new() -> DevicePool {
        DevicePool {
            free: Mutex::new(Vec::new()),
        }
    }

    /// A free device, or a new one from `make` (kept for later tests).
    pub fn lease(&'static self, make: impl FnOnce() -> engine::Result<Gpu>) -> Lease {
        let free = self.free.lock().unwrap().pop();
        let gpu = free.unwrap_or_else(|| {
            let gpu = make().expect("a GPU adapter (apt-get install mesa-vulkan-drivers)");
            Box::leak(Box::new(gpu))
        });
        Lease { gpu, pool: self }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Ok(mut free) = self.pool.free.lock() {
            free.push(self.gpu);
        }
    }
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
            lesion_boxes: None,
            scan,
            mask,
        })
        .unwrap();
    }
    w.finish().unwrap();
}

/// A `w x h` scan with a slanted texture and a bright blob at (40, 30):
/// for sizes other than 80 x 60 no flip or rotation of it equals another.
pub fn textured_scan(w: usize, h: usize) -> engine::data::Gray8 {
    let mut g = engine::data::Gray8::new(w, h);
    for y in 0..h {
        for x in 0..w {
            let d2 = (x as f64 - 40.0).powi(2) + (y as f64 - 30.0).powi(2);
            let v = 60.0 + 40.0 * ((x * 3 + y * 5) % 17) as f64 / 17.0 + 140.0 * (-d2 / 80.0).exp();
            g.set(x, y, v.min(255.0) as u8);
        }
    }
    g
}

/// Runs the `engine` binary with `args`, no standard input; returns (exit
/// code, stdout, stderr). Kernel choices it times (a long run's tiles) go
/// to a tuning file of this test process, not the user's cache, unless
/// `ENGINE_TUNE_FILE` names one.
pub fn engine<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> (i32, String, String) {
    let tune_file = std::env::var_os("ENGINE_TUNE_FILE").unwrap_or_else(|| {
        let name = format!("engine-tests-tune-{}.json", std::process::id());
        std::env::temp_dir().join(name).into_os_string()
    });
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_engine"))
        .args(args)
        .env("ENGINE_TUNE_FILE", tune_file)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}
