//! Kernel correctness tests: every WGSL kernel, forward and backward, against
//! a plain Rust f64 CPU reference (with `approx`, tolerance stated per
//! kernel), every backward pass also against central finite differences of
//! the CPU forward in f64, naga validation of every shader, determinism, and
//! binding-limit splitting.
#[path = "../tests/support/mod.rs"]
mod support;

mod checks;
mod common;

mod batchnorm;
mod conv;
mod elementwise;
mod limits;
mod loss;
mod nan;
mod optim;
mod pool;
mod reduce;
mod resize;
mod shaders;
mod variants;
