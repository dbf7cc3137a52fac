//! The one error type of the engine core. Every message names the op (or the
//! file) and the shapes involved, so a user can tell what went wrong without a
//! debugger.
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
