//! engine: the native side of the GPU compute engine for the dense-prediction
//! network of "Dense Prediction of Mammography": data preparation, training,
//! evaluation, batch inference over files, benchmarks and the `engine` CLI.
//!
//! The core that also runs in a browser (GPU layer, ops, graph, model,
//! inference) is the `engine-core` crate; its modules are re-exported here
//! under the same names, so `engine::gpu` is `engine_core::gpu`.
//! Data flows one way: `data` -> `graph` -> `ops` -> `gpu`.
pub mod batch;
pub mod bench;
pub mod cli;
pub mod data;
pub mod dicom_out;
pub mod error;
pub mod eval;
pub mod fsio;
pub mod infer;
pub mod prewarm;
pub mod run_folder;
pub mod shard;
pub mod train;

pub use engine_core::{gpu, graph, lesions, model, ops, predictor, spacing, tta};
pub use error::{EngineError, Result};
pub use gpu::{Gpu, Tensor};
