//! A run folder's files: the paths, the one-run-per-folder lock, the
//! metrics log, and the clean-up a resume needs.
use anyhow::{Context, bail};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Where a run keeps its files.
pub struct RunDir(pub PathBuf);

impl RunDir {
    pub fn checkpoint(&self) -> PathBuf {
        self.0.join(crate::run_folder::CHECKPOINT)
    }
    /// The weights of the epoch `--select` liked best so far.
    pub fn best(&self) -> PathBuf {
        self.0.join(crate::run_folder::BEST)
    }
    /// The weights averaged over the last `--swa` epochs.
    pub fn swa(&self) -> PathBuf {
        self.0.join(crate::run_folder::SWA)
    }
    pub fn metrics(&self) -> PathBuf {
        self.0.join("metrics.jsonl")
    }
    /// Holds the pid of the run using the folder (see `RunLock`).
    pub fn lock(&self) -> PathBuf {
        self.0.join("train.lock")
    }
}

/// One run per folder: an advisory lock (`flock`) on `train.lock`, which
/// holds the pid of the run. The kernel drops the lock when its process
/// dies, however it dies, so a lock file with a pid but no lock is stale
/// (a killed run) and is taken over with a warning. The file is emptied,
/// never removed, when the run ends.
pub struct RunLock {
    file: std::fs::File,
}

impl RunLock {
    /// Fails, naming the holder, when a live run holds the folder's lock
    /// (checked before anything else looks at the folder). Takes nothing.
    pub fn check_free(dir: &Path) -> anyhow::Result<()> {
        let path = dir.join("train.lock");
        let Ok(file) = std::fs::File::open(&path) else {
            return Ok(());
        };
        if let Err(std::fs::TryLockError::WouldBlock) = file.try_lock_shared() {
            let holder = std::fs::read_to_string(&path).unwrap_or_default();
            let holder = holder.trim();
            bail!(
                "{} is in use by another run (pid {}, lock {}): wait for it to finish or choose another --out",
                dir.display(),
                if holder.is_empty() { "unknown" } else { holder },
                path.display()
            );
        }
        Ok(())
    }

    /// Takes the folder's lock; returns it and a warning when a stale lock
    /// was taken over. A folder in use is an error naming the holder's pid.
    pub fn acquire(dir: &Path) -> anyhow::Result<(RunLock, Option<String>)> {
        use std::io::{Read, Seek};
        let path = dir.join("train.lock");
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("creating the lock file {}", path.display()))?;
        let mut holder = String::new();
        let locked = file.try_lock();
        file.read_to_string(&mut holder).ok();
        let holder = holder.trim().to_string();
        match locked {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => bail!(
                "{} is in use by another run (pid {}, lock {}): wait for it to finish or choose another --out",
                dir.display(),
                if holder.is_empty() {
                    "unknown"
                } else {
                    &holder
                },
                path.display()
            ),
            // File systems without flock: fall back to the pid alone.
            Err(std::fs::TryLockError::Error(_)) => {
                if !holder.is_empty()
                    && holder != std::process::id().to_string()
                    && Path::new("/proc").join(&holder).exists()
                {
                    bail!(
                        "{} is in use by another run (pid {holder}, lock {})",
                        dir.display(),
                        path.display()
                    );
                }
            }
        }
        let warning = (!holder.is_empty()).then(|| {
            format!(
                "warning: {} was left by pid {holder}, which is no longer running; taking it over",
                path.display()
            )
        });
        file.set_len(0)?;
        file.rewind()?;
        write!(file, "{}", std::process::id())?;
        file.sync_all().ok();
        Ok((RunLock { file }, warning))
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        // Empty: no run holds the folder. The lock goes with the file handle.
        let _ = self.file.set_len(0);
    }
}

/// Keeps only the lines of `metrics.jsonl` that the checkpoint covers:
/// the baseline, steps up to `step` and epoch summaries up to `epochs`
/// completed epochs. Torn (unterminated or unparsable) lines go too. The
/// file is rewritten atomically; returns how many lines were dropped.
pub fn cut_metrics(path: &Path, step: u64, epochs: u64) -> anyhow::Result<usize> {
    let text = match std::fs::read(path) {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let mut kept = String::with_capacity(text.len());
    let mut dropped = 0;
    for line in text.split_inclusive('\n') {
        let keep = line.ends_with('\n')
            && serde_json::from_str::<serde_json::Value>(line).is_ok_and(|v| {
                match v["kind"].as_str() {
                    Some("baseline") => true,
                    Some("step") => v["step"].as_u64().is_some_and(|s| s <= step),
                    Some("epoch" | "swa") => v["epoch"].as_u64().is_some_and(|e| e <= epochs),
                    _ => false,
                }
            });
        if keep {
            kept.push_str(line);
        } else {
            dropped += 1;
        }
    }
    if dropped > 0 {
        crate::fsio::write_atomic(path, kept.as_bytes(), true)?;
    }
    Ok(dropped)
}

/// The run's metrics log: each record is one `write` of one whole line
/// (appended), so a killed run leaves at most one torn line, which the
/// next resume cuts away.
pub(super) struct MetricsLog {
    file: std::fs::File,
    path: PathBuf,
}

impl MetricsLog {
    /// Opens the log for appending; `fresh` empties it first (a new run).
    pub(super) fn open(path: &Path, fresh: bool) -> anyhow::Result<MetricsLog> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .truncate(false)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        if fresh {
            file.set_len(0)
                .with_context(|| format!("emptying {}", path.display()))?;
        }
        Ok(MetricsLog {
            file,
            path: path.to_path_buf(),
        })
    }

    /// Appends `record` as one line, in one write.
    pub(super) fn record(&mut self, record: &serde_json::Value) -> anyhow::Result<()> {
        let mut line = record.to_string();
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .with_context(|| format!("writing {}", self.path.display()))
    }
}

/// Temporary files of runs that died mid-write (`.NAME.tmp.PID`): the
/// folder is locked by this run, so no other process is writing them.
pub(super) fn remove_stale_temporaries(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') && name.contains(".tmp.") {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}
