//! Batch norm (docs/MODEL.md): batch statistics over (N, H, W) in training with
//! the running-statistics update, running statistics in inference, and the
//! backward pass with the gradients of gamma and beta.
use super::reduce::{
    SumOf, bn_batch_stats, bn_grad_partials, channel_sums, combine, combine_bn_grads,
};
use super::{BATCHNORM, Params, check_rank, items_per_window, kernel, launch, runs, vec4_lanes};
use crate::error::{Result, shape_err};
use crate::gpu::{Gpu, Kernel, Tensor};

const FINALIZE: Kernel = kernel(&BATCHNORM, "bn_finalize");
const APPLY: Kernel = kernel(&BATCHNORM, "bn_apply");
const APPLY_RELU: Kernel = kernel(&BATCHNORM, "bn_apply_relu");
const APPLY_KEEP: Kernel = kernel(&BATCHNORM, "bn_apply_keep");
const RELU_BACKWARD: Kernel = kernel(&BATCHNORM, "bn_relu_backward");
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

/// Runs `k` elementwise over x's planes in windows. `elems` are the
/// bindings shaped like x (x itself included), all windowed at the same
/// offsets and so sharing one base; `channels` are the per-channel
/// bindings, which always fit (they are [C] or [2C]).
fn per_plane(
    gpu: &Gpu,
    op: &'static str,
    k: &Kernel,
    x: &Tensor,
    elems: &[(u32, &Tensor)],
    channels: &[(u32, &Tensor)],
    flags: u32,
) -> Result<()> {
    let (n, c, h, w) = x.nchw();
    let hw = h * w;
    // One plane per workgroup row (`Gpu::dispatch_planes`).
    let per_window = items_per_window(gpu, op, hw, "plane")?.min(gpu.max_groups());
    let chan: Vec<_> = channels
        .iter()
        .map(|(b, t)| (*b, gpu.window(t, 0, t.numel()).0))
        .collect();
    // Whole planes of vec4s (one channel each) when the plane allows.
    let lanes = vec4_lanes(gpu, hw);
    for (p0, np) in runs(n * c, per_window) {
        let wins: Vec<_> = elems
            .iter()
            .map(|(b, t)| (*b, gpu.window(t, p0 * hw, np * hw)))
            .collect();
        let base = wins[0].1.1;
        debug_assert!(wins.iter().all(|(_, (_, b))| *b == base));
        let p = Params::new()
            .u(hw / lanes)
            .u(c)
            .u(p0 % c)
            .u(base as usize / lanes)
            .f((n * hw) as f32)
            .f(EPS)
            .f(MOMENTUM)
            .u(flags as usize);
        let binds: Vec<(u32, &crate::gpu::Window)> = wins
            .iter()
            .map(|(b, (wnd, _))| (*b, wnd))
            .chain(chan.iter().map(|(b, wnd)| (*b, wnd)))
            .collect();
        gpu.dispatch_planes(k, lanes == 4, p.words(), &binds, (hw / lanes, np));
    }
    Ok(())
}

/// What the training forward's pass also does after normalising.
#[derive(Clone, Copy)]
pub enum Then<'a> {
    /// y = bn(x).
    Nothing,
    /// y = relu(bn(x)).
    Relu,
    /// y = relu(bn(x) + skip): a residual join.
    AddRelu(&'a Tensor),
    /// y = relu(bn(x)), and bn(x) kept too (a residual skip's start).
    ReluKeep,
}

/// The outputs of `batchnorm_train_then`.
pub struct BnOut {
    pub y: Tensor,
    /// bn(x), with `Then::ReluKeep` only.
    pub pre: Option<Tensor>,
    /// The batch statistics [2, C] (mean, rstd) the backward pass needs.
    pub stats: Tensor,
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
    let out = batchnorm_train_then(gpu, x, p, momentum, Then::Nothing)?;
    Ok((out.y, out.stats))
}

/// `batchnorm_train` with the ReLU, or the residual add and the ReLU, in
/// the same pass: one read of x and one write instead of two or three
/// passes, and no tensor between them.
pub fn batchnorm_train_then(
    gpu: &Gpu,
    x: &Tensor,
    p: &BnParams,
    momentum: Option<f32>,
    then: Then,
) -> Result<BnOut> {
    const OP: &str = "batchnorm_train";
    check(OP, x, p)?;
    if let Then::AddRelu(skip) = then
        && skip.shape() != x.shape()
    {
        return shape_err(
            OP,
            format!("skip {:?} must match input {:?}", skip.shape(), x.shape()),
        );
    }
    let stats = batch_stats(gpu, OP, x, p, momentum)?;
    let y = gpu.empty(x.shape())?;
    let chans = [(2, &stats), (3, p.gamma), (4, p.beta)];
    let pre = match then {
        Then::Nothing => {
            per_plane(gpu, OP, &APPLY, x, &[(1, x), (5, &y)], &chans, 0)?;
            None
        }
        Then::Relu => {
            per_plane(
                gpu,
                OP,
                &APPLY_RELU,
                x,
                &[(1, x), (5, &y), (13, x)],
                &chans,
                0,
            )?;
            None
        }
        Then::AddRelu(skip) => {
            per_plane(
                gpu,
                OP,
                &APPLY_RELU,
                x,
                &[(1, x), (5, &y), (13, skip)],
                &chans,
                2,
            )?;
            None
        }
        Then::ReluKeep => {
            let pre = gpu.empty(x.shape())?;
            per_plane(
                gpu,
                OP,
                &APPLY_KEEP,
                x,
                &[(1, x), (5, &y), (14, &pre)],
                &chans,
                0,
            )?;
            Some(pre)
        }
    };
    Ok(BnOut { y, pre, stats })
}

/// The batch's [mean, rstd] per channel (one pass over x where the merge
/// fits, `reduce::bn_batch_stats`; else two: the mean, then the squared
/// deviations from it), and the running statistics updated.
fn batch_stats(
    gpu: &Gpu,
    op: &'static str,
    x: &Tensor,
    p: &BnParams,
    momentum: Option<f32>,
) -> Result<Tensor> {
    let (n, c, h, w) = x.nchw();
    let m = (n * h * w) as f32;
    let stats = gpu.empty(&[2, c])?;
    if !bn_batch_stats(gpu, op, x, &stats)? {
        let (part, chunks) = channel_sums(gpu, op, SumOf::A, x, None)?;
        combine(gpu, &part, (n, c, chunks), 1.0 / m, &stats, 0, false)?;
        let (part, chunks) = channel_sums(gpu, op, SumOf::SqDev, x, Some(&stats))?;
        combine(gpu, &part, (n, c, chunks), 1.0 / m, &stats, c, false)?;
    }
    let (sw, _) = gpu.window(&stats, 0, 2 * c);
    let (mw, _) = gpu.window(p.running_mean, 0, c);
    let (vw, _) = gpu.window(p.running_var, 0, c);
    let fp = Params::new()
        .u(c)
        .u(c)
        .u(0)
        .u(0)
        .f(m)
        .f(EPS)
        .f(momentum.unwrap_or(0.0))
        .u(momentum.is_some() as usize);
    launch(gpu, &FINALIZE, &fp, &[(8, &sw), (9, &mw), (10, &vw)], c);
    Ok(stats)
}

/// Inference forward with the running statistics.
pub fn batchnorm_infer(gpu: &Gpu, x: &Tensor, p: &BnParams) -> Result<Tensor> {
    const OP: &str = "batchnorm_infer";
    check(OP, x, p)?;
    let y = gpu.empty(x.shape())?;
    let chans = [
        (3, p.gamma),
        (4, p.beta),
        (11, p.running_mean),
        (12, p.running_var),
    ];
    per_plane(gpu, OP, &INFER, x, &[(1, x), (5, &y)], &chans, 0)?;
    Ok(y)
}

/// Backward of `batchnorm_train`: returns dx and adds (or writes, when not
/// `accumulate`) the gradients of gamma and beta into `dgamma`, `dbeta`.
/// Given `relu_out`, the output y of `batchnorm_train_then(.., Then::Relu)`,
/// dy is y's gradient and the ReLU's backward runs in the same passes.
#[allow(clippy::too_many_arguments)]
pub fn batchnorm_backward(
    gpu: &Gpu,
    x: &Tensor,
    dy: &Tensor,
    relu_out: Option<&Tensor>,
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
        || relu_out.is_some_and(|r| r.shape() != x.shape())
        || stats.shape() != [2, c]
        || gamma.shape() != [c]
        || dgamma.shape() != [c]
        || dbeta.shape() != [c]
    {
        return shape_err(
            OP,
            format!(
                "x {:?}, dy {:?}, relu output {:?}, gamma {:?}, stats {:?}, dgamma {:?}, dbeta {:?} do not agree",
                x.shape(),
                dy.shape(),
                relu_out.map(|r| r.shape()),
                gamma.shape(),
                stats.shape(),
                dgamma.shape(),
                dbeta.shape()
            ),
        );
    }
    // sums = [sum d * xhat, sum d] per channel: this batch's dgamma, dbeta.
    let sums = gpu.empty(&[2, c])?;
    let (pb, pg, chunks) = bn_grad_partials(gpu, OP, dy, relu_out, x, stats)?;
    let grads = (dgamma, dbeta);
    if !combine_bn_grads(gpu, (&pg, &pb), (n, c, chunks), &sums, grads, accumulate) {
        for (part, offset, grad) in [(&pg, 0, dgamma), (&pb, c, dbeta)] {
            combine(gpu, part, (n, c, chunks), 1.0, &sums, offset, false)?;
            combine(gpu, part, (n, c, chunks), 1.0, grad, 0, accumulate)?;
        }
    }
    let dx = gpu.empty(x.shape())?;
    let chans = [(2, stats), (3, gamma), (7, &sums)];
    match relu_out {
        None => per_plane(
            gpu,
            OP,
            &BACKWARD,
            x,
            &[(1, x), (6, dy), (5, &dx)],
            &chans,
            0,
        )?,
        Some(r) => {
            let elems = [(1, x), (6, dy), (13, r), (5, &dx)];
            per_plane(gpu, OP, &RELU_BACKWARD, x, &elems, &chans, 0)?
        }
    }
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

    /// relu(bn(x) + skip) in training (`Then::Relu`, or `Then::AddRelu`
    /// with a skip).
    pub fn batchnorm_relu_train(
        x: &[f64],
        shape: (usize, usize, usize),
        (gamma, beta): (&[f64], &[f64]),
        skip: Option<&[f64]>,
    ) -> Vec<f64> {
        let (y, _, _) = batchnorm_train(x, shape, gamma, beta);
        y.iter()
            .enumerate()
            .map(|(i, v)| (v + skip.map_or(0.0, |s| s[i])).max(0.0))
            .collect()
    }

    /// (dx, dgamma, dbeta) of relu(bn(x)): dy where the output is
    /// positive, then `batchnorm_backward`.
    pub fn batchnorm_relu_backward(
        x: &[f64],
        dy: &[f64],
        shape: (usize, usize, usize),
        (gamma, beta): (&[f64], &[f64]),
    ) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let y = batchnorm_relu_train(x, shape, (gamma, beta), None);
        let masked: Vec<f64> = dy
            .iter()
            .zip(&y)
            .map(|(d, y)| if *y > 0.0 { *d } else { 0.0 })
            .collect();
        batchnorm_backward(x, &masked, shape, gamma)
    }
}
