//! engine: a GPU compute engine in Rust and WGSL for the dense-prediction
//! network of "Dense Prediction of Mammography".
//!
//! Data flows one way: `data` -> `graph` -> `ops` -> `gpu`.
pub mod batch;
pub mod bench;
pub mod cli;
pub mod data;
pub mod dicom_out;
pub mod error;
pub mod eval;
pub mod fsio;
pub mod gpu;
pub mod graph;
pub mod infer;
pub mod lesions;
pub mod model;
pub mod ops;
pub mod predictor;
pub mod run_folder;
pub mod shard;
pub mod spacing;
pub mod train;
pub mod tta;

pub use error::{EngineError, Result};
pub use gpu::{Gpu, Tensor};
