//! Batch norm (docs/MODEL.md): batch statistics over (N, H, W) in training with
//! the running-statistics update, running statistics in inference, and the
//! backward pass with the gradients of gamma and beta.
use super::reduce::{SumOf, channel_sums, combine};
use super::{
    BATCHNORM, Params, check_rank, items_per_window, kernel, launch, launch_lanes, runs, vec4_lanes,
};
use crate::error::{Result, shape_err};
use crate::gpu::{Gpu, Kernel, Tensor};

const FINALIZE: Kernel = kernel(&BATCHNORM, "bn_finalize");
const APPLY: Kernel = kernel(&BATCHNORM, "bn_apply");
const INFER: Kernel = kernel(&BATCHNORM, "bn_infer");
const BACKWARD: Kernel = kernel(&BATCHNORM, "bn_backward");

pub const EPS: f32 = 1e-5;
pub const MOMENTUM: f32 = 0.01;

/// gamma, beta, running mean and running variance, each [C].
pub struct BnParams<'a> {
    pub gamma: &'a Tensor,
    pub beta: &'a Tensor,
    pub running_mean: &'a Tensor,
    pub running_var: &'a Tensor,
}

fn check(op: &'static str, x: &Tensor, p: &BnParams) -> Result<usize> {
    check_rank(op, "input", x, 4)?;
    let c = x.shape()[1];
    for (name, t) in [
        ("gamma", p.gamma),
        ("beta", p.beta),
        ("running_mean", p.running_mean),
        ("running_var", p.running_var),
    ] {
        if t.shape() != [c] {
            return shape_err(
                op,
                format!(
                    "{name} {:?} must be [{c}] for input {:?}",
                    t.shape(),
                    x.shape()
                ),
            );
        }
    }
    Ok(c)
}

/// Runs `k` elementwise over x's planes in windows; `bind` adds the
/// per-channel bindings (which always fit: they are [C] or [2C]).
fn per_plane(
    gpu: &Gpu,
    op: &'static str,
    k: &Kernel,
    x: &Tensor,
    dy: Option<&Tensor>,
    y: &Tensor,
    channel_bindings: &[(u32, &Tensor)],
) -> Result<()> {
    let (n, c, h, w) = x.nchw();
    let hw = h * w;
    let per_window = items_per_window(gpu, op, hw, "plane")?;
    let chan: Vec<_> = channel_bindings
        .iter()
        .map(|(b, t)| (*b, gpu.window(t, 0, t.numel()).0))
        .collect();
    // Whole planes of vec4s (one channel each) when the plane allows.
    let lanes = vec4_lanes(gpu, hw);
    for (p0, np) in runs(n * c, per_window) {
        let (xw, xb) = gpu.window(x, p0 * hw, np * hw);
        let (yw, yb) = gpu.window(y, p0 * hw, np * hw);
        let (dw, db) = gpu.window(dy.unwrap_or(x), p0 * hw, np * hw);
        let p = Params::new()
            .u(np * hw / lanes)
            .u(hw)
            .u(c)
            .u(p0 % c)
            .u(xb as usize / lanes)
            .u(yb as usize / lanes)
            .u(db as usize / lanes)
            .f((n * hw) as f32)
            .f(EPS)
            .f(MOMENTUM)
            .u(0);
        let mut binds: Vec<(u32, &crate::gpu::Window)> = vec![(1, &xw), (5, &yw)];
        if dy.is_some() {
            binds.push((6, &dw));
        }
        for (b, wnd) in &chan {
            binds.push((*b, wnd));
        }
        launch_lanes(gpu, k, &p, &binds, np * hw, lanes);
    }
    Ok(())
}

/// Training forward: normalises with the batch statistics and, given a
/// momentum m, updates the running statistics in place:
/// `running = (1 - m) * running + m * batch` (docs/MODEL.md's m is `MOMENTUM`).
/// Returns y and the statistics [2, C] (mean, rstd) that the backward pass
/// needs.
pub fn batchnorm_train(
    gpu: &Gpu,
    x: &Tensor,
    p: &BnParams,
    momentum: Option<f32>,
) -> Result<(Tensor, Tensor)> {
    const OP: &str = "batchnorm_train";
    let c = check(OP, x, p)?;
    let (n, _, h, w) = x.nchw();
    let m = (n * h * w) as f32;
    let stats = gpu.empty(&[2, c])?;
    let (part, chunks) = channel_sums(gpu, OP, SumOf::A, x, None, None)?;
    combine(gpu, &part, (n, c, chunks), 1.0 / m, &stats, 0, false)?;
    let (part, chunks) = channel_sums(gpu, OP, SumOf::SqDev, x, None, Some(&stats))?;
    combine(gpu, &part, (n, c, chunks), 1.0 / m, &stats, c, false)?;
    let (sw, _) = gpu.window(&stats, 0, 2 * c);
    let (mw, _) = gpu.window(p.running_mean, 0, c);
    let (vw, _) = gpu.window(p.running_var, 0, c);
    let fp = Params::new()
        .u(c)
        .u(0)
        .u(c)
        .u(0)
        .u(0)
        .u(0)
        .u(0)
        .f(m)
        .f(EPS)
        .f(momentum.unwrap_or(0.0))
        .u(momentum.is_some() as usize);
    launch(gpu, &FINALIZE, &fp, &[(8, &sw), (9, &mw), (10, &vw)], c);
    let y = gpu.empty(x.shape())?;
    per_plane(
        gpu,
        OP,
        &APPLY,
        x,
        None,
        &y,
        &[(2, &stats), (3, p.gamma), (4, p.beta)],
    )?;
    Ok((y, stats))
}

/// Inference forward with the running statistics.
pub fn batchnorm_infer(gpu: &Gpu, x: &Tensor, p: &BnParams) -> Result<Tensor> {
    const OP: &str = "batchnorm_infer";
    check(OP, x, p)?;
    let y = gpu.empty(x.shape())?;
    per_plane(
        gpu,
        OP,
        &INFER,
        x,
        None,
        &y,
        &[
            (3, p.gamma),
            (4, p.beta),
            (11, p.running_mean),
            (12, p.running_var),
        ],
    )?;
    Ok(y)
}

/// Backward of `batchnorm_train`: returns dx and adds (or writes, when not
/// `accumulate`) the gradients of gamma and beta into `dgamma`, `dbeta`.
#[allow(clippy::too_many_arguments)]
pub fn batchnorm_backward(
    gpu: &Gpu,
    x: &Tensor,
    dy: &Tensor,
    gamma: &Tensor,
    stats: &Tensor,
    dgamma: &Tensor,
    dbeta: &Tensor,
    accumulate: bool,
) -> Result<Tensor> {
    const OP: &str = "batchnorm_backward";
    check_rank(OP, "input", x, 4)?;
    let (n, c, _, _) = x.nchw();
    if dy.shape() != x.shape()
        || stats.shape() != [2, c]
        || gamma.shape() != [c]
        || dgamma.shape() != [c]
        || dbeta.shape() != [c]
    {
        return shape_err(
            OP,
            format!(
                "x {:?}, dy {:?}, gamma {:?}, stats {:?}, dgamma {:?}, dbeta {:?} do not agree",
                x.shape(),
                dy.shape(),
                gamma.shape(),
                stats.shape(),
                dgamma.shape(),
                dbeta.shape()
            ),
        );
    }
    let sums = gpu.empty(&[2, c])?;
    let (pg, chunks) = channel_sums(gpu, OP, SumOf::ANormB, dy, Some(x), Some(stats))?;
    combine(gpu, &pg, (n, c, chunks), 1.0, &sums, 0, false)?;
    combine(gpu, &pg, (n, c, chunks), 1.0, dgamma, 0, accumulate)?;
    let (pb, chunks) = channel_sums(gpu, OP, SumOf::A, dy, None, None)?;
    combine(gpu, &pb, (n, c, chunks), 1.0, &sums, c, false)?;
    combine(gpu, &pb, (n, c, chunks), 1.0, dbeta, 0, accumulate)?;
    let dx = gpu.empty(x.shape())?;
    per_plane(
        gpu,
        OP,
        &BACKWARD,
        x,
        Some(dy),
        &dx,
        &[(2, stats), (3, gamma), (7, &sums)],
    )?;
    Ok(dx)
}

/// The f64 CPU reference (the `reference` feature; the tests enable it).
#[cfg(any(test, feature = "reference"))]
pub mod cpu {
    use super::EPS;

    /// Training forward: (y, mean, biased var).
    pub fn batchnorm_train(
        x: &[f64],
        (n, c, hw): (usize, usize, usize),
        gamma: &[f64],
        beta: &[f64],
    ) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let m = (n * hw) as f64;
        let mut mean = vec![0.0; c];
        let mut var = vec![0.0; c];
        for ci in 0..c {
            let vals = (0..n).flat_map(|ni| x[(ni * c + ci) * hw..(ni * c + ci + 1) * hw].iter());
            mean[ci] = vals.clone().sum::<f64>() / m;
            var[ci] = vals.map(|v| (v - mean[ci]).powi(2)).sum::<f64>() / m;
        }
        let mut y = vec![0.0; x.len()];
        for (i, v) in x.iter().enumerate() {
            let ci = (i / hw) % c;
            y[i] = (v - mean[ci]) / (var[ci] + EPS as f64).sqrt() * gamma[ci] + beta[ci];
        }
        (y, mean, var)
    }

    /// Inference with the running statistics: `(x - mean) / sqrt(var + eps)
    /// * gamma + beta` per channel.
    pub fn batchnorm_infer(
        x: &[f64],
        (c, hw): (usize, usize),
        (gamma, beta): (&[f64], &[f64]),
        (mean, var): (&[f64], &[f64]),
    ) -> Vec<f64> {
        x.iter()
            .enumerate()
            .map(|(i, v)| {
                let ci = (i / hw) % c;
                (v - mean[ci]) / (var[ci] + EPS as f64).sqrt() * gamma[ci] + beta[ci]
            })
            .collect()
    }

    /// (dx, dgamma, dbeta) of `batchnorm_train`.
    pub fn batchnorm_backward(
        x: &[f64],
        dy: &[f64],
        (n, c, hw): (usize, usize, usize),
        gamma: &[f64],
    ) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let (_, mean, var) = batchnorm_train(x, (n, c, hw), gamma, &vec![0.0; c]);
        let m = (n * hw) as f64;
        let rstd: Vec<f64> = var.iter().map(|v| 1.0 / (v + EPS as f64).sqrt()).collect();
        let mut dgamma = vec![0.0; c];
        let mut dbeta = vec![0.0; c];
        for (i, (xv, d)) in x.iter().zip(dy).enumerate() {
            let ci = (i / hw) % c;
            dgamma[ci] += d * (xv - mean[ci]) * rstd[ci];
            dbeta[ci] += d;
        }
        let dx = x
            .iter()
            .zip(dy)
            .enumerate()
            .map(|(i, (xv, d))| {
                let ci = (i / hw) % c;
                let xhat = (xv - mean[ci]) * rstd[ci];
                gamma[ci] * rstd[ci] * (d - (dbeta[ci] + xhat * dgamma[ci]) / m)
            })
            .collect();
        (dx, dgamma, dbeta)
    }
}
