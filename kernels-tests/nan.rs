//! NaN and infinity go through every kernel as they do in PyTorch: a NaN
//! input makes the outputs that depend on it NaN (relu, max-pool and the
//! loss included), so a bad value reaches the loss and the training guard
//! instead of being silently replaced by 0.
use crate::common::*;
use engine::ops::batchnorm::{self, BnParams};
use engine::ops::resize::{self, Mode};
use engine::ops::{conv, elementwise, loss, optim, pool, reduce};

const NAN: f32 = f32::NAN;
const INF: f32 = f32::INFINITY;

/// Indices of the NaN elements.
fn nans(v: &[f32]) -> Vec<usize> {
    v.iter()
        .enumerate()
        .filter(|(_, x)| x.is_nan())
        .map(|(i, _)| i)
        .collect()
}

#[test]
fn relu_and_add_relu_propagate_nan() {
    let gpu = gpu();
    let x = [1.0, -2.0, NAN, 0.0, INF, -INF, -0.5, 3.0];
    let y = read(gpu, &elementwise::relu(gpu, &up(gpu, &[8], &x)).unwrap());
    assert_eq!(nans(&y), [2], "relu {y:?}");
    assert_eq!(
        [y[0], y[1], y[3], y[4], y[5], y[6], y[7]],
        [1.0, 0.0, 0.0, INF, 0.0, 0.0, 3.0]
    );
    let b = [0.0, 1.0, 0.0, NAN, 0.0, 0.0, 1.0, 0.0];
    let y = read(
        gpu,
        &elementwise::add_relu(gpu, &up(gpu, &[8], &x), &up(gpu, &[8], &b)).unwrap(),
    );
    assert_eq!(nans(&y), [2, 3], "add_relu {y:?}");
    assert_eq!([y[0], y[1], y[6], y[7]], [1.0, 0.0, 0.5, 3.0]);
    let y = read(
        gpu,
        &elementwise::add(gpu, &up(gpu, &[8], &x), &up(gpu, &[8], &b)).unwrap(),
    );
    assert_eq!(nans(&y), [2, 3], "add {y:?}");
    assert_eq!([y[4], y[5]], [INF, -INF]);
}

#[test]
fn relu_backward_passes_nan_like_pytorch() {
    // PyTorch: dx = dy where y > 0 or y is NaN (threshold_backward keeps dy
    // unless y <= 0); a NaN dy where y > 0 stays NaN.
    let gpu = gpu();
    let y = [1.0, 0.0, NAN, 2.0, 0.0];
    let dy = [0.5, 0.5, 0.25, NAN, NAN];
    let dx = read(
        gpu,
        &elementwise::relu_backward(gpu, &up(gpu, &[5], &y), &up(gpu, &[5], &dy)).unwrap(),
    );
    assert_eq!(nans(&dx), [3], "{dx:?}");
    assert_eq!([dx[0], dx[1], dx[2], dx[4]], [0.5, 0.0, 0.25, 0.0]);
}

#[test]
fn sigmoid_and_axpy_propagate_nan() {
    let gpu = gpu();
    let s = read(
        gpu,
        &elementwise::sigmoid(gpu, &up(gpu, &[4], &[0.0, NAN, INF, -INF])).unwrap(),
    );
    assert_eq!(nans(&s), [1], "{s:?}");
    assert_eq!([s[0], s[2], s[3]], [0.5, 1.0, 0.0]);
    let y = up(gpu, &[3], &[1.0, 2.0, 3.0]);
    elementwise::axpy(gpu, 2.0, &up(gpu, &[3], &[NAN, 1.0, 0.0]), &y).unwrap();
    let y = read(gpu, &y);
    assert_eq!(nans(&y), [0]);
    assert_eq!([y[1], y[2]], [4.0, 3.0]);
}

#[test]
fn maxpool_takes_nan_as_the_maximum() {
    let gpu = gpu();
    // 4x4, 2x2/s2: one NaN in the top-left window, an infinity in the last.
    let mut x: Vec<f32> = (0..16).map(|i| i as f32).collect();
    x[5] = NAN;
    x[15] = INF;
    let xt = up(gpu, &[1, 1, 4, 4], &x);
    let y = read(gpu, &pool::maxpool2d(gpu, &xt, 2, 2).unwrap());
    assert_eq!(nans(&y), [0], "{y:?}");
    assert_eq!([y[1], y[2], y[3]], [7.0, 13.0, INF]);
    // The NaN (even though a later value compares larger) gets the gradient.
    let dy = up(gpu, &[1, 1, 2, 2], &[1.0, 2.0, 3.0, 4.0]);
    let dx = read(gpu, &pool::maxpool2d_backward(gpu, &xt, &dy, 2, 2).unwrap());
    let mut want = vec![0.0f32; 16];
    want[5] = 1.0;
    want[7] = 2.0;
    want[13] = 3.0;
    want[15] = 4.0;
    assert_eq!(dx, want);
    // The CPU reference agrees.
    let (cy, _) = pool::cpu::maxpool2d(&to64(&x), (1, 1, 4, 4), 2, 2);
    assert!(cy[0].is_nan() && cy[1] == 7.0);
    // 3x3/s2 windows overlap: the NaN reaches every window holding it.
    let mut x = vec![0.0f32; 25];
    x[6] = NAN; // (1, 1): in the windows of outputs (0..2, 0..2)
    let y = read(
        gpu,
        &pool::maxpool2d(gpu, &up(gpu, &[1, 1, 5, 5], &x), 3, 2).unwrap(),
    );
    assert_eq!(nans(&y), [0, 1, 3, 4], "{y:?}");
}

#[test]
fn loss_and_sums_propagate_nan() {
    let gpu = gpu();
    let z = up(gpu, &[1, 1, 2, 2], &[0.5, NAN, -1.0, 2.0]);
    let t = up(gpu, &[1, 1, 2, 2], &[1.0, 0.0, 0.0, 1.0]);
    let l = read(gpu, &loss::bce_with_logits(gpu, &z, &t, 15.0).unwrap());
    assert!(l[0].is_nan(), "bce of a NaN logit: {l:?}");
    let dz = read(
        gpu,
        &loss::bce_with_logits_backward(gpu, &z, &t, 15.0).unwrap(),
    );
    assert_eq!(nans(&dz), [1], "{dz:?}");
    // Sums and sums of squares (gradient norm, L2 term, bias gradients).
    let mut v = vec![0.5f32; 5000];
    v[4321] = NAN;
    let vt = up(gpu, &[5000], &v);
    assert!(read(gpu, &reduce::sum(gpu, &vt, false, 1.0).unwrap())[0].is_nan());
    assert!(read(gpu, &reduce::sum(gpu, &vt, true, 1.0).unwrap())[0].is_nan());
    v[4321] = -INF;
    let sq = read(
        gpu,
        &reduce::sum(gpu, &up(gpu, &[5000], &v), true, 1.0).unwrap(),
    );
    assert_eq!(sq[0], INF);
}

#[test]
fn batchnorm_conv_resize_and_adam_propagate_nan() {
    let gpu = gpu();
    // Batch norm (training): a NaN in channel 0 poisons its statistics, so
    // all of channel 0 is NaN; channel 1 is untouched.
    let mut x = rand_vec(1, 2 * 2 * 3 * 3);
    x[4] = NAN; // image 0, channel 0
    let xt = up(gpu, &[2, 2, 3, 3], &x);
    let (g, b) = (up(gpu, &[2], &[1.0, 1.0]), up(gpu, &[2], &[0.0, 0.0]));
    let (rm, rv) = (up(gpu, &[2], &[0.0, 0.0]), up(gpu, &[2], &[1.0, 1.0]));
    let p = BnParams {
        gamma: &g,
        beta: &b,
        running_mean: &rm,
        running_var: &rv,
    };
    let (y, _) = batchnorm::batchnorm_train(gpu, &xt, &p, Some(0.1)).unwrap();
    let y = read(gpu, &y);
    let want: Vec<usize> = (0..36).filter(|i| (i / 9) % 2 == 0).collect();
    assert_eq!(nans(&y), want);
    let rm = read(gpu, &rm);
    assert!(rm[0].is_nan() && rm[1].is_finite(), "{rm:?}");
    // Inference with a negative running variance: NaN, not a number.
    let bad = up(gpu, &[2], &[-1.0, 1.0]);
    let zero = up(gpu, &[2], &[0.0, 0.0]);
    let p = BnParams {
        gamma: &g,
        beta: &b,
        running_mean: &zero,
        running_var: &bad,
    };
    let clean = up(gpu, &[1, 2, 3, 3], &rand_vec(2, 18));
    let y = read(gpu, &batchnorm::batchnorm_infer(gpu, &clean, &p).unwrap());
    assert_eq!(nans(&y), (0..9).collect::<Vec<_>>());
    // Conv: one NaN weight makes its output channel NaN everywhere.
    let mut w = rand_vec(3, 2 * 2 * 3 * 3);
    w[22] = NAN; // output channel 1, input channel 0, the centre tap
    let y = read(
        gpu,
        &conv::conv2d(gpu, &clean, &up(gpu, &[2, 2, 3, 3], &w), &zero, 1, 1).unwrap(),
    );
    assert_eq!(nans(&y), (9..18).collect::<Vec<_>>());
    // Bilinear resize x2: the NaN reaches the outputs that sample it.
    let mut x = vec![1.0f32; 16];
    x[0] = NAN;
    let y = read(
        gpu,
        &resize::resize(gpu, &up(gpu, &[1, 1, 4, 4], &x), 8, 8, Mode::Bilinear).unwrap(),
    );
    let n = nans(&y);
    assert!(n.contains(&0) && n.len() < 64 && !n.contains(&63), "{n:?}");
    // Adam: a NaN gradient element makes that parameter NaN.
    let param = up(gpu, &[3], &[1.0, 2.0, 3.0]);
    let (m, v) = (up(gpu, &[3], &[0.0; 3]), up(gpu, &[3], &[0.0; 3]));
    let grad = up(gpu, &[3], &[0.1, NAN, -0.1]);
    optim::adam_step(
        gpu,
        &optim::Adam::default(),
        1,
        &param,
        &grad,
        &m,
        &v,
        0.0,
        1.0,
    )
    .unwrap();
    let pv = read(gpu, &param);
    assert_eq!(nans(&pv), [1], "{pv:?}");
}
