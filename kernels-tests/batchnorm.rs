use crate::common::*;
use engine::Gpu;
use engine::ops::batchnorm::{self, BnParams, Then, cpu};

/// Normalised outputs are O(1): 1e-4 absolute after f32 mean/variance.
fn check(n: usize, c: usize, h: usize, w: usize, seed: u64) {
    check_on(gpu(), (n, c, h, w), seed);
}

fn check_on(gpu: &Gpu, (n, c, h, w): (usize, usize, usize, usize), seed: u64) {
    let tag = format!("batchnorm n{n} c{c} {h}x{w}");
    let hw = h * w;
    // Offset and scale per channel so the statistics matter.
    let x: Vec<f32> = rand_vec(seed, n * c * hw)
        .iter()
        .enumerate()
        .map(|(i, v)| v * (1.0 + ((i / hw) % c) as f32) + 0.5 * ((i / hw) % c) as f32)
        .collect();
    let gamma: Vec<f32> = rand_vec(seed + 1, c)
        .iter()
        .map(|v| 1.0 + 0.5 * v)
        .collect();
    let beta = rand_vec(seed + 2, c);
    let rm0 = rand_vec(seed + 3, c);
    let rv0: Vec<f32> = rand_vec(seed + 4, c)
        .iter()
        .map(|v| 1.0 + 0.5 * v)
        .collect();
    let (x64, g64, b64) = (to64(&x), to64(&gamma), to64(&beta));
    let xt = up(gpu, &[n, c, h, w], &x);
    let (gt, bt) = (up(gpu, &[c], &gamma), up(gpu, &[c], &beta));
    let (rmt, rvt) = (up(gpu, &[c], &rm0), up(gpu, &[c], &rv0));
    let p = BnParams {
        gamma: &gt,
        beta: &bt,
        running_mean: &rmt,
        running_var: &rvt,
    };
    let (y, stats) = batchnorm::batchnorm_train(gpu, &xt, &p, Some(batchnorm::MOMENTUM)).unwrap();
    let (want, mean, var) = cpu::batchnorm_train(&x64, (n, c, hw), &g64, &b64);
    assert_close(&format!("{tag} forward"), &read(gpu, &y), &want, 1e-4, 1e-4);
    let m = (n * hw) as f64;
    let want_rm: Vec<f64> = (0..c)
        .map(|i| 0.99 * rm0[i] as f64 + 0.01 * mean[i])
        .collect();
    let want_rv: Vec<f64> = (0..c)
        .map(|i| 0.99 * rv0[i] as f64 + 0.01 * var[i] * m / (m - 1.0))
        .collect();
    assert_close(
        &format!("{tag} running mean"),
        &read(gpu, &rmt),
        &want_rm,
        1e-5,
        1e-5,
    );
    assert_close(
        &format!("{tag} running var"),
        &read(gpu, &rvt),
        &want_rv,
        1e-5,
        1e-4,
    );
    // Momentum 1 (the first batch of a statistics recomputation) replaces
    // the running statistics by the batch's, with the unbiased variance.
    batchnorm::batchnorm_train(gpu, &xt, &p, Some(1.0)).unwrap();
    let unbiased: Vec<f64> = var.iter().map(|v| v * m / (m - 1.0)).collect();
    assert_close(
        &format!("{tag} running mean, momentum 1"),
        &read(gpu, &rmt),
        &mean,
        1e-5,
        1e-5,
    );
    assert_close(
        &format!("{tag} running var, momentum 1"),
        &read(gpu, &rvt),
        &unbiased,
        1e-5,
        1e-4,
    );

    // Inference uses the running statistics.
    let yi = read(gpu, &batchnorm::batchnorm_infer(gpu, &xt, &p).unwrap());
    let rm = to64(&read(gpu, &rmt));
    let rv = to64(&read(gpu, &rvt));
    let want_i = cpu::batchnorm_infer(&x64, (c, hw), (&g64, &b64), (&rm, &rv));
    assert_close(&format!("{tag} inference"), &yi, &want_i, 1e-4, 1e-4);

    let dy = rand_vec(seed + 5, n * c * hw);
    let dy64 = to64(&dy);
    let dyt = up(gpu, &[n, c, h, w], &dy);
    let (dgt, dbt) = (gpu.empty(&[c]).unwrap(), gpu.empty(&[c]).unwrap());
    let dx = read(
        gpu,
        &batchnorm::batchnorm_backward(gpu, &xt, &dyt, None, &gt, &stats, &dgt, &dbt, false)
            .unwrap(),
    );
    let (wdx, wdg, wdb) = cpu::batchnorm_backward(&x64, &dy64, (n, c, hw), &g64);
    assert_close(&format!("{tag} dx"), &dx, &wdx, 1e-4, 1e-3);
    let dg = read(gpu, &dgt);
    let db = read(gpu, &dbt);
    assert_close(&format!("{tag} dgamma"), &dg, &wdg, 1e-3, 1e-4);
    assert_close(&format!("{tag} dbeta"), &db, &wdb, 1e-3, 1e-4);
    let fx = |xv: &[f64]| dot(&dy64, &cpu::batchnorm_train(xv, (n, c, hw), &g64, &b64).0);
    assert_fd(&format!("{tag} dx"), fx, &x64, &dx, 40, 2e-3);
    let fg = |gv: &[f64]| dot(&dy64, &cpu::batchnorm_train(&x64, (n, c, hw), gv, &b64).0);
    assert_fd(&format!("{tag} dgamma"), fg, &g64, &dg, 40, 1e-3);
    let fb = |bv: &[f64]| dot(&dy64, &cpu::batchnorm_train(&x64, (n, c, hw), &g64, bv).0);
    assert_fd(&format!("{tag} dbeta"), fb, &b64, &db, 40, 1e-3);
}

#[test]
fn batchnorm_small() {
    check(3, 5, 7, 9, 1);
}

#[test]
fn batchnorm_vec4_planes() {
    // Planes of a multiple of 4 take the vec4 form of every elementwise pass.
    check(2, 6, 4, 6, 4);
}

#[test]
fn batchnorm_48_channels() {
    check(2, 48, 5, 5, 2);
}

#[test]
fn batchnorm_planes_longer_than_a_chunk() {
    check(2, 3, 40, 37, 3);
}

#[test]
fn batch_statistics_take_one_pass_or_two_where_one_merge_cannot_hold_them() {
    // One pass over x (per-chunk sums and squared deviations, merged per
    // channel) where one merge holds every partial; under a 4 KiB binding
    // 8 images x 130 channels of partials do not fit a window, so the
    // statistics take the two passes (the mean, then the deviations).
    let kernels = |gpu: &Gpu, (n, c, h, w)| {
        let xt = up(gpu, &[n, c, h, w], &rand_vec(21, n * c * h * w));
        let t = identity_params(gpu, c);
        let p = bn_params(&t);
        let (done, k) = gpu.dry_run(|| batchnorm::batchnorm_train(gpu, &xt, &p, None).map(drop));
        done.unwrap();
        k.into_iter().map(|k| k.key).collect::<Vec<_>>()
    };
    let has = |keys: &[String], name: &str| keys.iter().any(|k| k.contains(name));
    let plain = Gpu::new(None).expect("a GPU adapter");
    let keys = kernels(&plain, (2, 6, 4, 6));
    assert!(
        has(&keys, "bn_stat_sums") && !has(&keys, "plane_sums"),
        "{keys:?}"
    );
    let tiny = Gpu::new(None).expect("a GPU adapter");
    tiny.set_binding_limit(4096);
    let keys = kernels(&tiny, (8, 130, 2, 2));
    assert!(
        has(&keys, "plane_sums") && !has(&keys, "bn_stat_sums"),
        "{keys:?}"
    );
    check_on(&tiny, (8, 130, 2, 2), 22);
}

#[test]
fn batch_statistics_of_a_large_mean_and_a_small_spread() {
    // Values about 100 with a spread of 0.1 in planes of several chunks:
    // the squared deviations stay about each chunk's own mean, so the
    // variance does not come from a difference of large sums.
    let gpu = gpu();
    let (n, c, h, w) = (3, 2, 40, 36);
    let x: Vec<f32> = rand_vec(23, n * c * h * w)
        .iter()
        .map(|v| 100.0 + 0.1 * v)
        .collect();
    let xt = up(gpu, &[n, c, h, w], &x);
    let t = identity_params(gpu, c);
    let (_, stats) = batchnorm::batchnorm_train(gpu, &xt, &bn_params(&t), None).unwrap();
    let ones = vec![1.0; c];
    let (_, mean, var) = cpu::batchnorm_train(&to64(&x), (n, c, h * w), &ones, &[0.0; 2]);
    let rstd: Vec<f64> = var.iter().map(|v| 1.0 / (v + 1e-5).sqrt()).collect();
    let got = read(gpu, &stats);
    assert_close("mean", &got[..c], &mean, 1e-5, 1e-6);
    assert_close("rstd", &got[c..], &rstd, 1e-3, 1e-4);
}

/// gamma 1, beta 0, running mean 0 and running variance 1 for `c` channels.
fn identity_params(gpu: &Gpu, c: usize) -> [engine::Tensor; 4] {
    [1.0, 0.0, 0.0, 1.0].map(|v| up(gpu, &[c], &vec![v; c]))
}

fn bn_params(t: &[engine::Tensor; 4]) -> BnParams<'_> {
    BnParams {
        gamma: &t[0],
        beta: &t[1],
        running_mean: &t[2],
        running_var: &t[3],
    }
}

#[test]
fn batchnorm_is_deterministic() {
    let gpu = gpu();
    let xt = up(gpu, &[4, 8, 33, 33], &rand_vec(9, 4 * 8 * 33 * 33));
    let one = up(gpu, &[8], &[1.0; 8]);
    let zero = up(gpu, &[8], &[0.0; 8]);
    let p = BnParams {
        gamma: &one,
        beta: &zero,
        running_mean: &zero,
        running_var: &one,
    };
    let a = read(
        gpu,
        &batchnorm::batchnorm_train(gpu, &xt, &p, None).unwrap().0,
    );
    let b = read(
        gpu,
        &batchnorm::batchnorm_train(gpu, &xt, &p, None).unwrap().0,
    );
    assert!(a.iter().zip(&b).all(|(p, q)| p.to_bits() == q.to_bits()));
}

#[test]
fn folded_conv_equals_conv_then_batchnorm_in_eval_mode() {
    use engine::ops::{conv, fold};
    let gpu = gpu();
    let (n, c, o, h, w) = (2, 3, 5, 7, 6);
    let x = up(gpu, &[n, c, h, w], &rand_vec(1, n * c * h * w));
    let wt = up(gpu, &[o, c, 3, 3], &rand_vec(2, o * c * 9));
    let b = up(gpu, &[o], &rand_vec(3, o));
    let gamma = up(gpu, &[o], &rand_vec(4, o));
    let beta = up(gpu, &[o], &rand_vec(5, o));
    let mean = up(gpu, &[o], &rand_vec(6, o));
    let var: Vec<f32> = rand_vec(7, o).iter().map(|v| v.abs() + 0.1).collect();
    let var = up(gpu, &[o], &var);
    let p = BnParams {
        gamma: &gamma,
        beta: &beta,
        running_mean: &mean,
        running_var: &var,
    };
    let y = conv::conv2d(gpu, &x, &wt, &b, 1, 1).unwrap();
    let want = to64(&read(
        gpu,
        &batchnorm::batchnorm_infer(gpu, &y, &p).unwrap(),
    ));
    let (wf, bf) = fold::fold_bn(gpu, &wt, &b, &p).unwrap();
    let got = read(gpu, &conv::conv2d(gpu, &x, &wf, &bf, 1, 1).unwrap());
    assert_close("folded conv", &got, &want, 1e-4, 1e-4);
}

/// Batch norm with the ReLU (and the residual add) in the same pass,
/// forward and backward, against the f64 references and, for the
/// backward, finite differences through the ReLU.
fn check_fused(gpu: &Gpu, (n, c, h, w): (usize, usize, usize, usize), seed: u64) {
    let tag = format!("fused batchnorm n{n} c{c} {h}x{w}");
    let hw = h * w;
    let x = rand_vec(seed, n * c * hw);
    let skip = rand_vec(seed + 1, n * c * hw);
    let gamma: Vec<f32> = rand_vec(seed + 2, c)
        .iter()
        .map(|v| 1.0 + 0.5 * v)
        .collect();
    let beta = rand_vec(seed + 3, c);
    let (x64, s64, g64, b64) = (to64(&x), to64(&skip), to64(&gamma), to64(&beta));
    let shape = [n, c, h, w];
    let (xt, st) = (up(gpu, &shape, &x), up(gpu, &shape, &skip));
    let (gt, bt) = (up(gpu, &[c], &gamma), up(gpu, &[c], &beta));
    let (rmt, rvt) = (up(gpu, &[c], &vec![0.0; c]), up(gpu, &[c], &vec![1.0; c]));
    let p = BnParams {
        gamma: &gt,
        beta: &bt,
        running_mean: &rmt,
        running_var: &rvt,
    };
    let dims = (n, c, hw);
    let fused =
        |xv: &[f64], gv: &[f64], bv: &[f64], sv| cpu::batchnorm_relu_train(xv, dims, (gv, bv), sv);
    let train = |then| batchnorm::batchnorm_train_then(gpu, &xt, &p, None, then).unwrap();

    let relu = train(Then::Relu);
    let want = fused(&x64, &g64, &b64, None);
    assert_close(
        &format!("{tag} relu"),
        &read(gpu, &relu.y),
        &want,
        1e-4,
        1e-4,
    );
    let join = train(Then::AddRelu(&st));
    let want_join = fused(&x64, &g64, &b64, Some(&s64));
    assert_close(
        &format!("{tag} add+relu"),
        &read(gpu, &join.y),
        &want_join,
        1e-4,
        1e-4,
    );
    let keep = train(Then::ReluKeep);
    assert_close(
        &format!("{tag} keep: relu"),
        &read(gpu, &keep.y),
        &want,
        1e-4,
        1e-4,
    );
    let pre = keep.pre.expect("ReluKeep keeps bn(x)");
    let bn = cpu::batchnorm_train(&x64, dims, &g64, &b64).0;
    assert_close(
        &format!("{tag} keep: bn"),
        &read(gpu, &pre),
        &bn,
        1e-4,
        1e-4,
    );

    // Backward through relu(bn(x)) from the fused output's gradient.
    let dy = rand_vec(seed + 4, n * c * hw);
    let dy64 = to64(&dy);
    let dyt = up(gpu, &shape, &dy);
    let (dgt, dbt) = (stale(gpu, &[c]), stale(gpu, &[c]));
    let backward = |accumulate| {
        batchnorm::batchnorm_backward(
            gpu,
            &xt,
            &dyt,
            Some(&relu.y),
            &gt,
            &relu.stats,
            &dgt,
            &dbt,
            accumulate,
        )
        .unwrap()
    };
    let dx = read(gpu, &backward(false));
    let (wdx, wdg, wdb) = cpu::batchnorm_relu_backward(&x64, &dy64, dims, (&g64, &b64));
    assert_close(&format!("{tag} relu dx"), &dx, &wdx, 1e-4, 1e-3);
    let (dg, db) = (read(gpu, &dgt), read(gpu, &dbt));
    assert_close(&format!("{tag} relu dgamma"), &dg, &wdg, 1e-3, 1e-4);
    assert_close(&format!("{tag} relu dbeta"), &db, &wdb, 1e-3, 1e-4);
    let fx = |xv: &[f64]| dot(&dy64, &fused(xv, &g64, &b64, None));
    assert_fd(&format!("{tag} relu dx"), fx, &x64, &dx, 40, 2e-3);
    // Moving gamma or beta moves every value of a channel: over large
    // planes some value then crosses the ReLU's kink inside the difference
    // step, so those finite differences are taken on small planes only.
    if n * hw <= 600 {
        let fg = |gv: &[f64]| dot(&dy64, &fused(&x64, gv, &b64, None));
        assert_fd(&format!("{tag} relu dgamma"), fg, &g64, &dg, 40, 1e-3);
        let fb = |bv: &[f64]| dot(&dy64, &fused(&x64, &g64, bv, None));
        assert_fd(&format!("{tag} relu dbeta"), fb, &b64, &db, 40, 1e-3);
    }
    // Accumulating adds this batch's gradients to what is there.
    backward(true);
    let twice = |v: &[f64]| v.iter().map(|v| 2.0 * v).collect::<Vec<_>>();
    let (dg2, db2) = (read(gpu, &dgt), read(gpu, &dbt));
    assert_close(
        &format!("{tag} relu dgamma accumulated"),
        &dg2,
        &twice(&wdg),
        2e-3,
        1e-4,
    );
    assert_close(
        &format!("{tag} relu dbeta accumulated"),
        &db2,
        &twice(&wdb),
        2e-3,
        1e-4,
    );
}

#[test]
fn fused_batchnorm_relu_scalar_planes() {
    check_fused(gpu(), (3, 5, 7, 9), 11);
}

#[test]
fn fused_batchnorm_relu_vec4_planes() {
    check_fused(gpu(), (2, 6, 4, 6), 12);
}

#[test]
fn fused_batchnorm_relu_planes_longer_than_a_chunk() {
    check_fused(gpu(), (2, 3, 40, 36), 13);
}

#[test]
fn fused_batchnorm_relu_under_a_tiny_binding_limit() {
    // Planes of 144 floats, 7 x 12 of them, in 4 KiB windows.
    check_fused(tiny_gpu(), (7, 12, 12, 12), 14);
}
