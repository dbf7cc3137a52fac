//! Elementwise ops: relu (and backward, also adding into a gradient), residual add, add + relu, sigmoid,
//! and axpy for accumulating gradients. Split into flat runs that fit one
//! binding.
use super::{ELEMENTWISE, Params, kernel, launch_lanes, runs, vec4_lanes};
use crate::error::{Result, shape_err};
use crate::gpu::{Gpu, Kernel, Tensor};

const RELU: Kernel = kernel(&ELEMENTWISE, "relu");
const RELU_BACKWARD: Kernel = kernel(&ELEMENTWISE, "relu_backward");
const RELU_BACKWARD_ADD: Kernel = kernel(&ELEMENTWISE, "relu_backward_add");
const ADD: Kernel = kernel(&ELEMENTWISE, "add");
const ADD_RELU: Kernel = kernel(&ELEMENTWISE, "add_relu");
const SIGMOID: Kernel = kernel(&ELEMENTWISE, "sigmoid");
const AXPY: Kernel = kernel(&ELEMENTWISE, "axpy");

fn same_shape(op: &'static str, a: &Tensor, b: &Tensor) -> Result<()> {
    if a.shape() != b.shape() {
        return shape_err(
            op,
            format!("shapes {:?} and {:?} differ", a.shape(), b.shape()),
        );
    }
    if a.numel() == 0 {
        return shape_err(op, format!("tensor {:?} is empty", a.shape()));
    }
    Ok(())
}

/// Runs `k` over all elements in windows; as vec4s when the length is a
/// multiple of 4 (window starts and offsets then are too).
fn run(gpu: &Gpu, k: &Kernel, a: &Tensor, b: Option<&Tensor>, y: &Tensor, alpha: f32) {
    let lanes = vec4_lanes(gpu, a.numel());
    for (start, len) in runs(a.numel(), gpu.window_elems() / 4 * 4) {
        let (aw, ab) = gpu.window(a, start, len);
        let (bw, bb) = gpu.window(b.unwrap_or(a), start, len);
        let (yw, yb) = gpu.window(y, start, len);
        let p = Params::new()
            .u(len / lanes)
            .u(ab as usize / lanes)
            .u(bb as usize / lanes)
            .u(yb as usize / lanes)
            .f(alpha);
        let binds: Vec<(u32, &crate::gpu::Window)> = if b.is_some() {
            vec![(1, &aw), (2, &bw), (3, &yw)]
        } else {
            vec![(1, &aw), (3, &yw)]
        };
        launch_lanes(gpu, k, &p, &binds, len, lanes);
    }
}

fn unary(gpu: &Gpu, op: &'static str, k: &Kernel, a: &Tensor) -> Result<Tensor> {
    same_shape(op, a, a)?;
    let y = gpu.empty(a.shape())?;
    run(gpu, k, a, None, &y, 0.0);
    Ok(y)
}

fn binary(gpu: &Gpu, op: &'static str, k: &Kernel, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    same_shape(op, a, b)?;
    let y = gpu.empty(a.shape())?;
    run(gpu, k, a, Some(b), &y, 0.0);
    Ok(y)
}

pub fn relu(gpu: &Gpu, x: &Tensor) -> Result<Tensor> {
    unary(gpu, "relu", &RELU, x)
}

/// dx = dy where the relu's output y is positive.
pub fn relu_backward(gpu: &Gpu, y: &Tensor, dy: &Tensor) -> Result<Tensor> {
    binary(gpu, "relu_backward", &RELU_BACKWARD, y, dy)
}

/// acc += dy where the relu's output y is positive: `relu_backward` and
/// `axpy` in one pass (the same bits), in place.
pub fn relu_backward_add(gpu: &Gpu, y: &Tensor, dy: &Tensor, acc: &Tensor) -> Result<()> {
    same_shape("relu_backward_add", y, dy)?;
    same_shape("relu_backward_add", y, acc)?;
    if acc.same_buffer(y) || acc.same_buffer(dy) {
        return shape_err("relu_backward_add", "acc must be a tensor of its own");
    }
    run(gpu, &RELU_BACKWARD_ADD, y, Some(dy), acc, 0.0);
    Ok(())
}

pub fn add(gpu: &Gpu, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary(gpu, "add", &ADD, a, b)
}

/// relu(a + b), the residual join.
pub fn add_relu(gpu: &Gpu, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary(gpu, "add_relu", &ADD_RELU, a, b)
}

pub fn sigmoid(gpu: &Gpu, x: &Tensor) -> Result<Tensor> {
    unary(gpu, "sigmoid", &SIGMOID, x)
}

/// y += alpha * a, in place.
pub fn axpy(gpu: &Gpu, alpha: f32, a: &Tensor, y: &Tensor) -> Result<()> {
    same_shape("axpy", a, y)?;
    if a.same_buffer(y) {
        return shape_err("axpy", "a and y must be different tensors");
    }
    run(gpu, &AXPY, a, None, y, alpha);
    Ok(())
}

/// The f64 CPU reference (the `reference` feature; the tests enable it).
#[cfg(any(test, feature = "reference"))]
pub mod cpu {
    pub fn sigmoid(z: f64) -> f64 {
        if z >= 0.0 {
            1.0 / (1.0 + (-z).exp())
        } else {
            let e = z.exp();
            e / (1.0 + e)
        }
    }
}
