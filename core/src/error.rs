//! The engine's errors. (The `engine` binary maps them to exit codes.)
//!
//! - [`EngineError`]: the engine core (GPU, shapes). Every message names the
//!   op and the shapes involved.
//! - [`DataError`]: files (reading, decoding, writing). Every message names
//!   the file once, then the reason.
//! - [`BadInput`]: anything else the user can fix by changing an argument or
//!   an input (a bad flag value, a missing checkpoint, an unusable folder).
//!
//! The native crate's `error::exit_code` gives 2 for a [`BadInput`] or a
//! [`DataError`] other than a failed write, 1 for anything else.
use std::path::{Path, PathBuf};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum EngineError {
    #[error(
        "no GPU adapter found.{hint}\nOn Linux without a GPU install Mesa's software Vulkan driver lavapipe: `apt-get install mesa-vulkan-drivers`"
    )]
    NoAdapter { hint: String },
    #[error("adapter '{0}' not found; `engine devices` lists the adapters")]
    AdapterNotFound(String),
    #[error("could not create a device on '{adapter}': {reason}")]
    Device { adapter: String, reason: String },
    #[error("{op}: {detail}")]
    Shape { op: &'static str, detail: String },
    #[error("{op}: {detail}")]
    TooLarge { op: &'static str, detail: String },
    #[error("GPU error: {0}")]
    Gpu(String),
    /// A model tensor looked up by a name the model does not have, or a
    /// model whose tensors do not follow the network table.
    #[error("model: {0}")]
    Model(String),
    /// The tape misused: a value read after it was freed, or read by more
    /// ops than it was announced for (`Graph::share`).
    #[error("graph: {0}")]
    Graph(String),
}

pub type Result<T> = std::result::Result<T, EngineError>;

pub(crate) fn shape_err<T>(op: &'static str, detail: impl Into<String>) -> Result<T> {
    Err(EngineError::Shape {
        op,
        detail: detail.into(),
    })
}

/// Every data-layer failure. Messages name the file once, then the reason.
#[derive(Debug, Error)]
pub enum DataError {
    /// The file could not be opened or read. (The I/O error is part of the
    /// message, not a `source`: a chain would repeat it.)
    #[error("{path}: cannot read file: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Decode { path: PathBuf, reason: String },
    #[error("{path}: unsupported: {reason}")]
    Unsupported { path: PathBuf, reason: String },
    #[error("{path}: invalid data: {reason}")]
    Invalid { path: PathBuf, reason: String },
    /// A folder given as a prepared set holds no manifest.
    #[error("{dir}: {what}: run `engine prepare mias|coco|cbis` or `engine synth` first")]
    NotPrepared { dir: PathBuf, what: String },
    /// An output could not be written (an internal error, exit code 1).
    #[error("{path}: cannot write: {reason}")]
    Write { path: PathBuf, reason: String },
}

impl DataError {
    pub fn io(path: &Path, error: std::io::Error) -> Self {
        DataError::Io {
            path: path.to_path_buf(),
            error,
        }
    }
    pub fn decode(path: &Path, reason: impl Into<String>) -> Self {
        DataError::Decode {
            path: path.to_path_buf(),
            reason: reason.into(),
        }
    }
    pub fn unsupported(path: &Path, reason: impl Into<String>) -> Self {
        DataError::Unsupported {
            path: path.to_path_buf(),
            reason: reason.into(),
        }
    }
    pub fn invalid(path: &Path, reason: impl Into<String>) -> Self {
        DataError::Invalid {
            path: path.to_path_buf(),
            reason: reason.into(),
        }
    }
    pub fn write(path: &Path, reason: impl std::fmt::Display) -> Self {
        DataError::Write {
            path: path.to_path_buf(),
            reason: reason.to_string(),
        }
    }

    /// The file (or folder) the error is about.
    pub fn path(&self) -> &Path {
        match self {
            DataError::Io { path, .. }
            | DataError::Decode { path, .. }
            | DataError::Unsupported { path, .. }
            | DataError::Invalid { path, .. }
            | DataError::Write { path, .. } => path,
            DataError::NotPrepared { dir, .. } => dir,
        }
    }

    /// The message without the leading file name (for lines that already
    /// name the file).
    pub fn reason(&self) -> String {
        let full = self.to_string();
        let prefix = format!("{}: ", self.path().display());
        match full.strip_prefix(&prefix) {
            Some(r) => r.to_string(),
            None => full,
        }
    }
}

/// An error the user can fix by changing an argument or an input: exit
/// code 2. The message is complete (it names the file or flag once).
#[derive(Debug)]
pub struct BadInput(pub String);

impl std::fmt::Display for BadInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BadInput {}

/// A [`BadInput`] error with this message.
pub fn bad(msg: impl std::fmt::Display) -> anyhow::Error {
    BadInput(msg.to_string()).into()
}
