//! One optimiser step: forward, loss and backward per micro-batch, the L2
//! term, the gradient norm and Adam, with one readback.
use super::TrainConfig;
use crate::data::loader::Batch;
use crate::gpu::Gpu;
use crate::graph::Graph;
use crate::model::{L2, L2_WEIGHTS, Model};
use crate::ops::{elementwise, loss, optim, reduce};

/// One optimiser step over a batch split in micro-batches; returns the
/// data loss, the loss with the L2 term and the global gradient norm (one
/// readback: the norm costs no extra wait).
#[allow(clippy::too_many_arguments)]
pub(crate) fn train_step(
    gpu: &Gpu,
    model: &Model,
    cfg: &TrainConfig,
    adam: &optim::Adam,
    lr: f32,
    step: &mut u64,
    b: &Batch,
    micro: usize,
    l2_params: &[crate::gpu::Tensor],
) -> anyhow::Result<(f64, f64, f64)> {
    let s = b.size;
    let per = b.n / micro;
    model.zero_grads(gpu);
    let loss_acc = gpu.zeros(&[1])?;
    for m in 0..micro {
        let range = m * per * s * s..(m + 1) * per * s * s;
        let mut g = Graph::new(gpu, true);
        let x = g.input(gpu.upload(&[per, 1, s, s], &b.images[range.clone()])?);
        let t = gpu.upload(&[per, 1, s, s], &b.masks[range])?;
        let out = model.forward(&mut g, x)?;
        let l = loss::bce_with_logits(gpu, g.value(out), &t, cfg.pos_weight)?;
        elementwise::axpy(gpu, 1.0 / micro as f32, &l, &loss_acc)?;
        let dz = loss::bce_with_logits_backward(gpu, g.value(out), &t, cfg.pos_weight)?;
        g.backward(out, dz)?;
    }
    // The L2 term of the weights this step's data loss was computed with.
    let l2_acc = gpu.zeros(&[1])?;
    for w in l2_params {
        elementwise::axpy(gpu, 1.0, &reduce::sum(gpu, w, true, L2 / 2.0)?, &l2_acc)?;
    }
    // The squared norm of the accumulated gradient: a NaN or infinity in any
    // gradient shows here even when the loss is finite.
    let grad_sq = gpu.zeros(&[1])?;
    for p in &model.params {
        if let Some(t) = &p.train {
            elementwise::axpy(gpu, 1.0, &reduce::sum(gpu, &t.grad, true, 1.0)?, &grad_sq)?;
        }
    }
    *step += 1;
    let adam = optim::Adam { lr, ..*adam };
    for p in &model.params {
        if let Some(t) = &p.train {
            let l2 = if L2_WEIGHTS.contains(&p.name.as_str()) {
                L2
            } else {
                0.0
            };
            optim::adam_step(
                gpu,
                &adam,
                *step,
                &p.value,
                &t.grad,
                &t.m,
                &t.v,
                l2,
                1.0 / micro as f32,
            )?;
        }
    }
    // The step's one readback: what the log shows.
    let read = gpu.read_many(&[&loss_acc, &l2_acc, &grad_sq])?;
    let (data, l2) = (read[0][0] as f64, read[1][0] as f64);
    // Gradients of the micro-batches add up; Adam scales them by 1 / micro.
    let grad_norm = (read[2][0] as f64).sqrt() / micro as f64;
    Ok((data, data + l2, grad_norm))
}
