//! Files that are either complete or absent: every output is written to a
//! temporary name unique to this process in the same folder, then renamed
//! over the final name. A failed write removes its temporary file and the
//! error names the file.
use anyhow::Context;
use std::io::Write;
use std::path::{Path, PathBuf};

/// `DIR/.NAME.tmp.PID`: beside the target (so the rename stays within one
/// file system), hidden, and unique to this process.
pub fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into());
    path.with_file_name(format!(".{name}.tmp.{}", std::process::id()))
}

/// Writes `path` through `write` into a temporary file, then renames it.
/// With `sync`, the data reaches the disk before the rename (checkpoints).
pub fn write_atomic_with(
    path: &Path,
    sync: bool,
    write: impl FnOnce(&mut std::io::BufWriter<std::fs::File>) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let tmp = temp_path(path);
    let result = (|| -> anyhow::Result<()> {
        {
            let mut w = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
            write(&mut w)?;
            let file = w.into_inner().map_err(|e| e.into_error())?;
            if sync {
                file.sync_all()?;
            }
        } // closed before the rename
        std::fs::rename(&tmp, path)?;
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.with_context(|| format!("writing {}", path.display()))
}

/// Writes `bytes` to `path` atomically (see `write_atomic_with`).
pub fn write_atomic(path: &Path, bytes: &[u8], sync: bool) -> anyhow::Result<()> {
    write_atomic_with(path, sync, |w| Ok(w.write_all(bytes)?))
}

/// Creates `dir` and checks that files can be created in it, before any
/// long work: a read-only or full folder fails now, not after an epoch.
pub fn ensure_writable_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let probe = dir.join(format!(".write-probe.{}", std::process::id()));
    let r = std::fs::File::create(&probe).and_then(|mut f| f.write_all(b"probe"));
    let _ = std::fs::remove_file(&probe);
    r.with_context(|| format!("{} is not writable", dir.display()))
}
