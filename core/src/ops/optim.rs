//! Adam (PyTorch's eps placement) with the optional L2 term of docs/MODEL.md
//! folded into the gradient.
use super::{OPTIM, Params, kernel, launch_lanes, runs, vec4_lanes};
use crate::error::{Result, shape_err};
use crate::gpu::{Gpu, Kernel, Tensor};

const ADAM: Kernel = kernel(&OPTIM, "adam_step");
const ADAM_SQ: Kernel = kernel(&OPTIM, "adam_step_sq");

/// Elements between parameters in a squared-gradient buffer
/// (`adam_step_sq`): 256 bytes, every adapter's largest storage offset
/// alignment, so a parameter's windows there have the same base as its own.
pub const SQ_ALIGN: usize = 64;

#[derive(Clone, Copy, Debug)]
pub struct Adam {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
}

impl Default for Adam {
    fn default() -> Self {
        Self {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        }
    }
}

/// One Adam update of `param` in place, `step` counting from 1. The
/// gradient used is `grad_scale * grad + l2 * param` (the gradient of
/// `l2 * sum(param^2) / 2`).
#[allow(clippy::too_many_arguments)]
pub fn adam_step(
    gpu: &Gpu,
    adam: &Adam,
    step: u64,
    param: &Tensor,
    grad: &Tensor,
    m: &Tensor,
    v: &Tensor,
    l2: f32,
    grad_scale: f32,
) -> Result<()> {
    let state = AdamState { param, grad, m, v };
    update(gpu, adam, step, &state, (l2, grad_scale), None)
}

/// `adam_step`, also writing each element's squared gradient (`grad`
/// itself, before `grad_scale` and L2) into `sq` from element `offset` on
/// (a multiple of `SQ_ALIGN`): one reduction of `sq` then gives the
/// squared norm of every parameter's gradient.
#[allow(clippy::too_many_arguments)]
pub fn adam_step_sq(
    gpu: &Gpu,
    adam: &Adam,
    step: u64,
    param: &Tensor,
    grad: &Tensor,
    m: &Tensor,
    v: &Tensor,
    (l2, grad_scale): (f32, f32),
    (sq, offset): (&Tensor, usize),
) -> Result<()> {
    if !offset.is_multiple_of(SQ_ALIGN) || offset + param.numel() > sq.numel() {
        return shape_err(
            "adam_step",
            format!(
                "squares at {offset} of {} do not fit {} aligned elements",
                sq.numel(),
                param.numel()
            ),
        );
    }
    let state = AdamState { param, grad, m, v };
    update(
        gpu,
        adam,
        step,
        &state,
        (l2, grad_scale),
        Some((sq, offset)),
    )
}

/// A parameter and the tensors Adam reads and writes with it.
struct AdamState<'a> {
    param: &'a Tensor,
    grad: &'a Tensor,
    m: &'a Tensor,
    v: &'a Tensor,
}

fn update(
    gpu: &Gpu,
    adam: &Adam,
    step: u64,
    s: &AdamState,
    (l2, grad_scale): (f32, f32),
    sq: Option<(&Tensor, usize)>,
) -> Result<()> {
    let AdamState { param, grad, m, v } = *s;
    for (name, t) in [("grad", grad), ("m", m), ("v", v)] {
        if t.shape() != param.shape() {
            return shape_err(
                "adam_step",
                format!(
                    "{name} {:?} does not match param {:?}",
                    t.shape(),
                    param.shape()
                ),
            );
        }
    }
    if step == 0 {
        return shape_err("adam_step", "step counts from 1");
    }
    // Bias corrections in f64 on the host, so late steps lose nothing.
    let bc1 = (1.0 - (adam.beta1 as f64).powf(step as f64)) as f32;
    let bc2 = (1.0 - (adam.beta2 as f64).powf(step as f64)) as f32;
    let lanes = vec4_lanes(gpu, param.numel());
    for (start, len) in runs(param.numel(), gpu.window_elems() / 4 * 4) {
        let (pw, base) = gpu.window(param, start, len);
        let (gw, _) = gpu.window(grad, start, len);
        let (mw, _) = gpu.window(m, start, len);
        let (vw, _) = gpu.window(v, start, len);
        let p = Params::new()
            .u(len / lanes)
            .f(adam.lr)
            .f(adam.beta1)
            .f(adam.beta2)
            .f(adam.eps)
            .f(bc1)
            .f(bc2)
            .f(l2)
            .f(grad_scale)
            .u(base as usize / lanes);
        let mut binds = vec![(1, &pw), (2, &gw), (3, &mw), (4, &vw)];
        let sw = sq.map(|(t, offset)| gpu.window(t, offset + start, len));
        match &sw {
            Some((sw, sq_base)) => {
                debug_assert_eq!(*sq_base, base, "SQ_ALIGN keeps the bases equal");
                binds.push((5, sw));
                launch_lanes(gpu, &ADAM_SQ, &p, &binds, len, lanes);
            }
            None => launch_lanes(gpu, &ADAM, &p, &binds, len, lanes),
        }
    }
    Ok(())
}

/// The f64 CPU reference (the `reference` feature; the tests enable it).
#[cfg(any(test, feature = "reference"))]
pub mod cpu {
    /// One Adam step in f64 on (p, m, v); returns nothing, updates in place.
    #[allow(clippy::too_many_arguments)]
    pub fn adam_step(
        adam: &super::Adam,
        step: u64,
        p: &mut [f64],
        g: &[f64],
        m: &mut [f64],
        v: &mut [f64],
        l2: f64,
        grad_scale: f64,
    ) {
        let (b1, b2) = (adam.beta1 as f64, adam.beta2 as f64);
        let bc1 = 1.0 - b1.powf(step as f64);
        let bc2 = 1.0 - b2.powf(step as f64);
        for i in 0..p.len() {
            let gi = grad_scale * g[i] + l2 * p[i];
            m[i] = b1 * m[i] + (1.0 - b1) * gi;
            v[i] = b2 * v[i] + (1.0 - b2) * gi * gi;
            p[i] -= adam.lr as f64 * (m[i] / bc1) / ((v[i] / bc2).sqrt() + adam.eps as f64);
        }
    }
}
