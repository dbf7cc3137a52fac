//! Which kernel variant runs each shape: rules per adapter type, or the
//! winner of a timing run (autotuning), kept per adapter in a JSON file in
//! the user's cache folder.
//!
//! A key names an op and its full shape (`conv3x3 fwd n4 c64 o64 80x80 s1
//! d1`); a value is a variant's name (`direct-tp4-to8-wg64`). The ops
//! decide what the candidates are and how to run one; this module only
//! remembers and persists choices. Variants change speed, never results
//! beyond the ops' stated tolerance, and a fixed table gives bit-identical
//! reruns.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Environment variable: `off` (rules only), `cache` (cached winners, else
/// rules; never time), `on` (time unknown shapes and remember the winner).
pub const TUNE_ENV: &str = "ENGINE_TUNE";
/// Environment variable: the tuning file to use instead of the default.
pub const TUNE_FILE_ENV: &str = "ENGINE_TUNE_FILE";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TuneMode {
    Off,
    Cache,
    On,
}

impl TuneMode {
    /// From `ENGINE_TUNE`; unset: `On` for GPUs, `Cache` for CPU adapters
    /// (on lavapipe each candidate costs a shader compile of ~1 s, so
    /// timing every shape of a network is left to `engine tune`).
    pub fn from_env(is_cpu: bool) -> Result<TuneMode, String> {
        match std::env::var(TUNE_ENV).ok().as_deref() {
            None | Some("") => Ok(if is_cpu {
                TuneMode::Cache
            } else {
                TuneMode::On
            }),
            Some("off") => Ok(TuneMode::Off),
            Some("cache") => Ok(TuneMode::Cache),
            Some("on") => Ok(TuneMode::On),
            Some(other) => Err(format!("{TUNE_ENV}={other} is not one of off, cache, on")),
        }
    }
}

#[derive(serde::Serialize, serde::Deserialize, Default)]
struct TuneFile {
    adapter: String,
    driver: String,
    winners: BTreeMap<String, String>,
}

pub struct Variants {
    mode: Mutex<TuneMode>,
    adapter: String,
    driver: String,
    path: Option<PathBuf>,
    winners: Mutex<BTreeMap<String, String>>,
    baseline: std::sync::atomic::AtomicBool,
    long_run: std::sync::atomic::AtomicBool,
    many_runs: std::sync::atomic::AtomicBool,
    last_used: Mutex<String>,
}

/// `$ENGINE_TUNE_FILE`, else `$XDG_CACHE_HOME/engine/tune/ADAPTER.json`,
/// else `~/.cache/engine/tune/ADAPTER.json`.
fn default_path(adapter: &str, driver: &str) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(TUNE_FILE_ENV) {
        return Some(PathBuf::from(p));
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))?;
    let slug: String = format!("{adapter} {driver}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    Some(
        base.join("engine")
            .join("tune")
            .join(format!("{slug}.json")),
    )
}

impl Variants {
    pub fn new(mode: TuneMode, adapter: &str, driver: &str) -> Variants {
        Self::with_file(mode, adapter, driver, default_path(adapter, driver))
    }

    /// Choices kept in `path` (none: in memory only).
    pub fn with_file(
        mode: TuneMode,
        adapter: &str,
        driver: &str,
        path: Option<PathBuf>,
    ) -> Variants {
        let v = Variants {
            mode: Mutex::new(mode),
            adapter: adapter.to_owned(),
            driver: driver.to_owned(),
            path,
            winners: Mutex::new(BTreeMap::new()),
            baseline: Default::default(),
            long_run: Default::default(),
            many_runs: Default::default(),
            last_used: Mutex::default(),
        };
        if mode != TuneMode::Off {
            v.load();
        }
        v
    }

    /// Reads the tuning file. A missing file is normal; a corrupt one or one
    /// written for another adapter or driver is ignored with a warning (and
    /// rewritten at the next tuning).
    fn load(&self) {
        let Some(path) = &self.path else { return };
        let Ok(text) = std::fs::read_to_string(path) else {
            return;
        };
        match serde_json::from_str::<TuneFile>(&text) {
            Ok(f) if f.adapter == self.adapter && f.driver == self.driver => {
                *self.winners.lock().unwrap() = f.winners;
            }
            Ok(_) => eprintln!(
                "warning: {}: tuned for another adapter or driver; ignored (it is rebuilt when tuning)",
                path.display()
            ),
            Err(e) => eprintln!(
                "warning: {}: not a tuning file ({e}); ignored (it is rebuilt when tuning)",
                path.display()
            ),
        }
    }

    /// Whether every op runs its first-generation kernels, unfused (for
    /// before/after measurements in one run).
    pub fn baseline(&self) -> bool {
        self.baseline.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn set_baseline(&self, on: bool) {
        self.baseline
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether the rules may pick kernels that compile longer but run
    /// faster: set for work whose kernels run thousands of times (training),
    /// where a compile of a few more seconds is paid back in minutes; left
    /// off for a first scan, whose time is mostly compiles.
    pub fn long_run(&self) -> bool {
        self.long_run.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn set_long_run(&self, on: bool) {
        self.long_run
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether the network runs often enough (a batch of scans) for
    /// kernel forms that compile longer but give the same sums as a first
    /// scan's, so that a scan's map does not depend on its batch: texel
    /// inputs on CPU adapters, not the long run's wider tiles.
    pub fn many_runs(&self) -> bool {
        self.many_runs.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn set_many_runs(&self, on: bool) {
        self.many_runs
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Records the variant an op just chose (for reports).
    pub fn note_used(&self, name: &str) {
        *self.last_used.lock().unwrap() = name.to_owned();
    }

    /// The variant the last op chose.
    pub fn last_used(&self) -> String {
        self.last_used.lock().unwrap().clone()
    }

    pub fn mode(&self) -> TuneMode {
        *self.mode.lock().unwrap()
    }

    pub fn set_mode(&self, mode: TuneMode) {
        let was = std::mem::replace(&mut *self.mode.lock().unwrap(), mode);
        // Off never read the file: read it now, so that tuning adds to it.
        if was == TuneMode::Off && mode != TuneMode::Off {
            self.load();
        }
    }

    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The remembered winner for `key` (never in `Off` mode).
    pub fn get(&self, key: &str) -> Option<String> {
        if self.mode() == TuneMode::Off {
            return None;
        }
        self.winners.lock().unwrap().get(key).cloned()
    }

    /// Remembers a winner and rewrites the tuning file atomically.
    pub fn set(&self, key: &str, winner: &str) {
        let table = {
            let mut w = self.winners.lock().unwrap();
            w.insert(key.to_owned(), winner.to_owned());
            w.clone()
        };
        if let Some(path) = &self.path
            && let Err(e) = self.save(path, table)
        {
            eprintln!("warning: cannot write tuning file {}: {e}", path.display());
        }
    }

    fn save(&self, path: &Path, winners: BTreeMap<String, String>) -> std::io::Result<()> {
        let file = TuneFile {
            adapter: self.adapter.clone(),
            driver: self.driver.clone(),
            winners,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = path.with_extension(format!("json.{}.tmp", std::process::id()));
        std::fs::write(&tmp, serde_json::to_string_pretty(&file)?)?;
        std::fs::rename(&tmp, path)
    }

    /// Every remembered choice, for `engine tune` and reports.
    pub fn table(&self) -> BTreeMap<String, String> {
        self.winners.lock().unwrap().clone()
    }
}
