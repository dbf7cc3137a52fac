//! engine-core: what runs wherever wgpu runs, a browser tab included: the
//! GPU layer, the WGSL ops, the autograd graph, the network and its
//! checkpoints, and inference (spacing, padding, tiling, test-time
//! augmentation, ensembles, candidate lesions), and decoding DICOM files
//! from bytes (pure-Rust codecs).
//!
//! Dependencies point one way: `infer`/`predictor` -> `model` -> `graph`
//! -> `ops` -> `gpu` -> wgpu. Nothing here blocks on the GPU: readbacks are
//! `async`, and the native `engine` crate waits on them at its edge.
// On the web wgpu's handles are neither Send nor Sync (one thread), so the
// Arcs that share buffers across threads natively hold non-Send values there.
#![cfg_attr(target_arch = "wasm32", allow(clippy::arc_with_non_send_sync))]

pub mod dicom;
pub mod error;
pub mod fsio;
pub mod gpu;
pub mod graph;
pub mod image;
pub mod infer;
pub mod lesions;
pub mod model;
pub mod ops;
pub mod predictor;
pub mod resample;
pub mod spacing;
pub mod tta;
#[cfg(target_arch = "wasm32")]
mod wasm_libc;

pub use error::{EngineError, Result};
pub use gpu::{Gpu, Tensor};
