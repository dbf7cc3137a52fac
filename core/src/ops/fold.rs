//! Batch norm folded into the preceding convolution for inference
//! (shaders/fold.wgsl): `conv -> bn` becomes one convolution with scaled
//! weights and a shifted bias, which saves the batch-norm pass and lets the
//! ReLU and the residual add run in the convolution's store.
use super::batchnorm::{BnParams, EPS};
use super::{FOLD, Params, kernel, launch};
use crate::error::{Result, shape_err};
use crate::gpu::{Gpu, Kernel, Tensor, Window};

fn win<'a>(gpu: &Gpu, t: &'a Tensor) -> Window<'a> {
    gpu.window(t, 0, t.numel()).0
}

const FOLD_WEIGHT: Kernel = kernel(&FOLD, "fold_weight");
const FOLD_BIAS: Kernel = kernel(&FOLD, "fold_bias");

/// (w', b') with `w'[o] = w[o] * s[o]`, `b'[o] = (b[o] - mean[o]) * s[o] + beta[o]`,
/// `s = gamma / sqrt(running_var + eps)`, for w [O, ...] and b [O].
pub fn fold_bn(gpu: &Gpu, w: &Tensor, b: &Tensor, bn: &BnParams) -> Result<(Tensor, Tensor)> {
    let o = w.shape()[0];
    let stats = [bn.gamma, bn.beta, bn.running_mean, bn.running_var];
    if b.shape() != [o] || stats.iter().any(|t| t.shape() != [o]) {
        return shape_err(
            "fold_bn",
            format!(
                "weight {:?} needs bias and batch-norm tensors of [{o}]",
                w.shape()
            ),
        );
    }
    if w.numel() > gpu.window_elems() {
        return shape_err(
            "fold_bn",
            format!("weight {:?} exceeds one storage binding", w.shape()),
        );
    }
    let (wf, bf) = (gpu.empty(w.shape())?, gpu.empty(&[o])?);
    let (g, be, m, v) = (
        win(gpu, bn.gamma),
        win(gpu, bn.beta),
        win(gpu, bn.running_mean),
        win(gpu, bn.running_var),
    );
    let (ws, wd) = (win(gpu, w), win(gpu, &wf));
    let p = Params::new().u(w.numel()).u(w.numel() / o).f(EPS);
    launch(
        gpu,
        &FOLD_WEIGHT,
        &p,
        &[(1, &ws), (2, &g), (4, &wd), (6, &v)],
        w.numel(),
    );
    let (bs, bd) = (win(gpu, b), win(gpu, &bf));
    let p = Params::new().u(o).u(1).f(EPS);
    launch(
        gpu,
        &FOLD_BIAS,
        &p,
        &[(1, &bs), (2, &g), (3, &be), (4, &bd), (5, &m), (6, &v)],
        o,
    );
    Ok((wf, bf))
}
