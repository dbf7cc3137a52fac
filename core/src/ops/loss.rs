//! Weighted sigmoid cross-entropy on logits (docs/MODEL.md): positives weighted
//! `pos_weight`, negatives 1, mean over all pixels.
use super::reduce::sum;
use super::{LOSS, Params, kernel, launch, runs};
use crate::error::{Result, shape_err};
use crate::gpu::{Gpu, Kernel, Tensor};

const FORWARD: Kernel = kernel(&LOSS, "bce_forward");
const BACKWARD: Kernel = kernel(&LOSS, "bce_backward");
const FORWARD_BACKWARD: Kernel = kernel(&LOSS, "bce_forward_backward");

fn check(op: &'static str, z: &Tensor, t: &Tensor) -> Result<()> {
    if z.shape() != t.shape() || z.numel() == 0 {
        return shape_err(
            op,
            format!(
                "logits {:?} and targets {:?} must have one non-empty shape",
                z.shape(),
                t.shape()
            ),
        );
    }
    Ok(())
}

/// Runs `k` over every pixel, writing y (and `dz` where given, at the same
/// offsets: both are new tensors of z's shape).
#[allow(clippy::too_many_arguments)]
fn run(
    gpu: &Gpu,
    k: &Kernel,
    z: &Tensor,
    t: &Tensor,
    y: &Tensor,
    dz: Option<&Tensor>,
    pos_weight: f32,
    scale: f32,
) {
    for (start, len) in runs(z.numel(), gpu.window_elems()) {
        let (zw, zb) = gpu.window(z, start, len);
        let (tw, tb) = gpu.window(t, start, len);
        let (yw, yb) = gpu.window(y, start, len);
        let dzw = dz.map(|d| gpu.window(d, start, len).0);
        let p = Params::new()
            .u(len)
            .u(zb as usize)
            .u(tb as usize)
            .u(yb as usize)
            .f(pos_weight)
            .f(scale);
        let mut bound = vec![(1, &zw), (2, &tw), (3, &yw)];
        bound.extend(dzw.as_ref().map(|w| (4, w)));
        launch(gpu, k, &p, &bound, len);
    }
}

/// Mean weighted BCE of logits z against targets t, as a [1] tensor.
pub fn bce_with_logits(gpu: &Gpu, z: &Tensor, t: &Tensor, pos_weight: f32) -> Result<Tensor> {
    check("bce_with_logits", z, t)?;
    let per_pixel = gpu.empty(z.shape())?;
    run(gpu, &FORWARD, z, t, &per_pixel, None, pos_weight, 1.0);
    sum(gpu, &per_pixel, false, 1.0 / z.numel() as f32)
}

/// Gradient of the mean loss with respect to z.
pub fn bce_with_logits_backward(
    gpu: &Gpu,
    z: &Tensor,
    t: &Tensor,
    pos_weight: f32,
) -> Result<Tensor> {
    check("bce_with_logits_backward", z, t)?;
    let dz = gpu.empty(z.shape())?;
    let scale = 1.0 / z.numel() as f32;
    run(gpu, &BACKWARD, z, t, &dz, None, pos_weight, scale);
    Ok(dz)
}

/// `bce_with_logits` and `bce_with_logits_backward` in one pass over z and
/// t (the same bits): the mean loss as a [1] tensor, and its gradient.
pub fn bce_with_logits_and_grad(
    gpu: &Gpu,
    z: &Tensor,
    t: &Tensor,
    pos_weight: f32,
) -> Result<(Tensor, Tensor)> {
    check("bce_with_logits", z, t)?;
    let (per_pixel, dz) = (gpu.empty(z.shape())?, gpu.empty(z.shape())?);
    let scale = 1.0 / z.numel() as f32;
    run(
        gpu,
        &FORWARD_BACKWARD,
        z,
        t,
        &per_pixel,
        Some(&dz),
        pos_weight,
        scale,
    );
    Ok((sum(gpu, &per_pixel, false, scale)?, dz))
}

/// The f64 CPU reference (the `reference` feature; the tests enable it).
#[cfg(any(test, feature = "reference"))]
pub mod cpu {
    fn softplus(u: f64) -> f64 {
        u.max(0.0) + (-u.abs()).exp().ln_1p()
    }

    pub fn bce_with_logits(z: &[f64], t: &[f64], pos_weight: f64) -> f64 {
        z.iter()
            .zip(t)
            .map(|(&z, &t)| pos_weight * t * softplus(-z) + (1.0 - t) * softplus(z))
            .sum::<f64>()
            / z.len() as f64
    }

    pub fn bce_with_logits_backward(z: &[f64], t: &[f64], pos_weight: f64) -> Vec<f64> {
        let m = z.len() as f64;
        z.iter()
            .zip(t)
            .map(|(&z, &t)| {
                let s = crate::ops::elementwise::cpu::sigmoid(z);
                (pos_weight * t * (s - 1.0) + (1.0 - t) * s) / m
            })
            .collect()
    }
}
