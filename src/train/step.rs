//! One optimiser step: forward, loss and backward per micro-batch, the L2
//! term, the gradient norm and Adam, with one readback.
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
    pos_weight: f32,
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
        let (l, dz) = loss::bce_with_logits_and_grad(gpu, g.value(out), &t, pos_weight)?;
        elementwise::axpy(gpu, 1.0 / micro as f32, &l, &loss_acc)?;
        g.backward(out, dz)?;
    }
    // The L2 term of the weights this step's data loss was computed with.
    let l2_acc = gpu.zeros(&[1])?;
    for w in l2_params {
        elementwise::axpy(gpu, 1.0, &reduce::sum(gpu, w, true, L2 / 2.0)?, &l2_acc)?;
    }
    *step += 1;
    let adam = optim::Adam { lr, ..*adam };
    let grad_sq = adam_with_grad_norm(gpu, model, &adam, *step, micro)?;
    // The step's one readback: what the log shows.
    let read = gpu.read_many(&[&loss_acc, &l2_acc, &grad_sq])?;
    let (data, l2) = (read[0][0] as f64, read[1][0] as f64);
    // Gradients of the micro-batches add up; Adam scales them by 1 / micro.
    let grad_norm = (read[2][0] as f64).sqrt() / micro as f64;
    Ok((data, data + l2, grad_norm))
}

/// Adam on every trained parameter; returns the squared norm of the
/// accumulated gradient, where a NaN or infinity in any gradient shows even
/// when the loss is finite. Adam writes every element's square side by side
/// (`adam_step_sq`), so one reduction sums them all: a reduction per
/// parameter cost three dispatches each, a sixth of a width-0.25 step's.
fn adam_with_grad_norm(
    gpu: &Gpu,
    model: &Model,
    adam: &optim::Adam,
    step: u64,
    micro: usize,
) -> crate::Result<crate::gpu::Tensor> {
    let trained: Vec<_> = model.params.iter().filter(|p| p.train.is_some()).collect();
    let mut len = 0;
    let offsets: Vec<usize> = trained
        .iter()
        .map(|p| {
            let at = len;
            len = at + p.value.numel().next_multiple_of(optim::SQ_ALIGN);
            at
        })
        .collect();
    let squares = gpu.zeros(&[len.max(1)])?;
    for (p, &offset) in trained.iter().zip(&offsets) {
        let t = p.train.as_ref().expect("trained");
        let l2 = if L2_WEIGHTS.contains(&p.name.as_str()) {
            L2
        } else {
            0.0
        };
        let scales = (l2, 1.0 / micro as f32);
        let sq = (&squares, offset);
        optim::adam_step_sq(gpu, adam, step, &p.value, &t.grad, &t.m, &t.v, scales, sq)?;
    }
    reduce::sum(gpu, &squares, false, 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ModelConfig;

    #[test]
    fn the_gradient_norm_covers_every_parameter_once() {
        // The norm comes from Adam's squares side by side in one buffer: a
        // wrong offset would drop or double some parameter's share.
        let gpu = Gpu::new(None).expect("a GPU adapter");
        let cfg = ModelConfig {
            width: 0.125,
            ..ModelConfig::default()
        };
        let model = Model::new(&gpu, cfg, 3).unwrap();
        let (n, size) = (2, 64);
        let images: Vec<f32> = (0..n * size * size)
            .map(|i| ((i * 37 % 101) as f32 / 101.0) - 0.5)
            .collect();
        let masks: Vec<f32> = (0..n * size * size)
            .map(|i| ((i % size) / 24 % 2) as f32)
            .collect();
        let b = Batch {
            n,
            size,
            images,
            masks,
            ids: Vec::new(),
        };
        let (mut step, micro) = (0, 2);
        let adam = optim::Adam::default();
        let (_, _, norm) =
            train_step(&gpu, &model, 15.0, &adam, 1e-3, &mut step, &b, micro, &[]).unwrap();
        let mut want = 0.0f64;
        for p in model.params.iter().filter_map(|p| p.train.as_ref()) {
            let g = gpu.read(&p.grad).unwrap();
            want += g.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>();
        }
        let want = want.sqrt() / micro as f64;
        assert!(want > 0.0, "no gradient at all");
        approx::assert_relative_eq!(norm, want, max_relative = 1e-5);
    }
}
