//! The kernels on WebGPU in a browser, against the same f64 CPU references
//! and finite differences as the native kernel tests (`kernels-tests/`):
//! every op family forward and backward, every convolution variant, and
//! work split under a 4 KiB binding limit. Built for wasm32 and run in
//! headless Chromium by wasm-bindgen-test-runner (`web/webdriver.json` holds
//! Chromium's WebGPU flags); `tests/browser.rs` runs them from `cargo test`.
#![cfg(target_arch = "wasm32")]

#[path = "../../kernels-tests/checks.rs"]
mod checks;

use checks::*;
use engine_core::gpu::{Gpu, Tensor};
use engine_core::ops::batchnorm::{self, BnParams, Then};
use engine_core::ops::conv::{self, ConvVariant, WgradVariant, conv_geom, cpu as ccpu};
use engine_core::ops::elementwise::{self, cpu as ecpu};
use engine_core::ops::loss::{self, cpu as lcpu};
use engine_core::ops::optim::{self, Adam, cpu as ocpu};
use engine_core::ops::pool::{self, cpu as pcpu, pool_geom};
use engine_core::ops::resize::{self, Mode, cpu as rcpu};
use engine_core::ops::{fold, reduce};
use wasm_bindgen_test::{wasm_bindgen_test, wasm_bindgen_test_configure};

wasm_bindgen_test_configure!(run_in_browser);

/// The tolerances of the native kernel tests, op by op.
const ATOL: f64 = 1e-4;
const RTOL: f64 = 1e-4;

async fn gpu() -> Gpu {
    Gpu::request().await.expect("a WebGPU adapter")
}

fn up(gpu: &Gpu, shape: &[usize], data: &[f32]) -> Tensor {
    gpu.upload(shape, data).unwrap()
}

/// A buffer full of NaN: a pass that does not accumulate must overwrite it.
fn stale(gpu: &Gpu, shape: &[usize]) -> Tensor {
    up(gpu, shape, &vec![f32::NAN; shape.iter().product()])
}

async fn read(gpu: &Gpu, t: &Tensor) -> Vec<f32> {
    gpu.read_async(t).await.unwrap()
}

/// One convolution shape: (n, c, o, h, w, k, stride, dilation).
type ConvCase = (usize, usize, usize, usize, usize, usize, usize, usize);

/// Forward (with and without the fused ReLU), input gradient and weight
/// gradient of one convolution, with the given variants, against the
/// reference; finite differences when `fd`.
async fn check_conv(
    gpu: &Gpu,
    (n, c, o, h, w, k, s, d): ConvCase,
    variant: Option<ConvVariant>,
    wgrad: Option<WgradVariant>,
    fd: bool,
) {
    let names = (variant.map(|v| v.name()), wgrad.map(|v| v.name()));
    let tag = format!("conv n{n} c{c} o{o} {h}x{w} k{k} s{s} d{d} variants {names:?}");
    let (oh, ow, g) = conv_geom(h, w, k, s, d);
    let seed = (n + c + o + h + w + k + s + d) as u64;
    let x = rand_vec(seed, n * c * h * w);
    let wt = rand_vec(seed + 1, o * c * k * k);
    let b = rand_vec(seed + 2, o);
    let dy = rand_vec(seed + 3, n * o * oh * ow);
    let (x64, w64, b64, dy64) = (to64(&x), to64(&wt), to64(&b), to64(&dy));
    let (xt, wtt, bt) = (
        up(gpu, &[n, c, h, w], &x),
        up(gpu, &[o, c, k, k], &wt),
        up(gpu, &[o], &b),
    );
    let forward = |xv: &[f64], wv: &[f64]| ccpu::conv2d(xv, (n, c, h, w), wv, &b64, o, g, (oh, ow));
    let want = forward(&x64, &w64);
    for relu in [false, true] {
        let y = conv::conv2d_with(gpu, &xt, &wtt, Some(&bt), s, d, relu, variant).unwrap();
        let want: Vec<f64> = want
            .iter()
            .map(|&v| if relu { v.max(0.0) } else { v })
            .collect();
        assert_close(
            &format!("{tag} relu {relu}"),
            &read(gpu, &y).await,
            &want,
            ATOL,
            RTOL,
        );
    }

    let dyt = up(gpu, &[n, o, oh, ow], &dy);
    let dxt = conv::conv2d_backward_input_with(gpu, &dyt, &wtt, (h, w), s, d, variant).unwrap();
    let dx = read(gpu, &dxt).await;
    let want = ccpu::conv2d_backward_input(&dy64, (n, o, oh, ow), &w64, c, g, (h, w));
    assert_close(&format!("{tag} dx"), &dx, &want, ATOL, RTOL);

    let dwt = stale(gpu, &[o, c, k, k]);
    conv::conv2d_backward_weight_with(gpu, &dyt, &xt, &dwt, s, d, false, wgrad).unwrap();
    let dw = read(gpu, &dwt).await;
    let want = ccpu::conv2d_backward_weight(&dy64, (n, o, oh, ow), &x64, (c, h, w), g);
    assert_close(&format!("{tag} dw"), &dw, &want, 5e-4, RTOL);
    if fd {
        let loss_x = |xv: &[f64]| dot(&dy64, &forward(xv, &w64));
        assert_fd(&format!("{tag} dx"), loss_x, &x64, &dx, 30, 1e-3);
        let loss_w = |wv: &[f64]| dot(&dy64, &forward(&x64, wv));
        assert_fd(&format!("{tag} dw"), loss_w, &w64, &dw, 30, 1e-3);
    }
}

#[wasm_bindgen_test]
async fn conv_every_variant_forward_and_backward() {
    let gpu = gpu().await;
    let case = (2, 3, 5, 9, 11, 3, 1, 1);
    for v in ConvVariant::candidates(&gpu) {
        check_conv(&gpu, case, Some(v), None, false).await;
    }
    for v in WgradVariant::candidates(&gpu, 9) {
        check_conv(&gpu, case, None, Some(v), false).await;
    }
}

#[wasm_bindgen_test]
async fn conv_network_geometries_with_finite_differences() {
    let gpu = gpu().await;
    // 3x3, stride 2 (the encoder's downsampling), dilation 2 and 1x1.
    for case in [
        (2, 3, 5, 9, 11, 3, 1, 1),
        (2, 1, 8, 17, 13, 3, 2, 1),
        (1, 4, 6, 11, 9, 3, 1, 2),
        (2, 6, 4, 7, 10, 1, 1, 1),
    ] {
        check_conv(&gpu, case, None, None, true).await;
    }
}

#[wasm_bindgen_test]
async fn tconv_forward_and_backward() {
    let gpu = gpu().await;
    let (n, c, o, h, w, s) = (2, 3, 5, 5, 6, 2);
    let x = rand_vec(70, n * c * h * w);
    let wt = rand_vec(71, c * o * 16);
    let b = rand_vec(72, o);
    let dy = rand_vec(73, n * o * h * s * w * s);
    let (x64, w64, b64, dy64) = (to64(&x), to64(&wt), to64(&b), to64(&dy));
    let (xt, wtt, bt) = (
        up(&gpu, &[n, c, h, w], &x),
        up(&gpu, &[c, o, 4, 4], &wt),
        up(&gpu, &[o], &b),
    );
    let forward = |xv: &[f64], wv: &[f64]| ccpu::tconv2d(xv, (n, c, h, w), wv, &b64, o, s);
    let y = conv::tconv2d(&gpu, &xt, &wtt, &bt, s).unwrap();
    let got = read(&gpu, &y).await;
    assert_close("tconv forward", &got, &forward(&x64, &w64), ATOL, RTOL);

    let dyt = up(&gpu, &[n, o, h * s, w * s], &dy);
    let (want_dx, want_dw) = ccpu::tconv2d_backward(&dy64, &x64, (n, c, h, w), &w64, o, s);
    let dx = read(
        &gpu,
        &conv::tconv2d_backward_input(&gpu, &dyt, &wtt, s).unwrap(),
    )
    .await;
    assert_close("tconv dx", &dx, &want_dx, ATOL, RTOL);
    assert_fd(
        "tconv dx",
        |xv| dot(&dy64, &forward(xv, &w64)),
        &x64,
        &dx,
        30,
        1e-3,
    );
    let dwt = stale(&gpu, &[c, o, 4, 4]);
    conv::tconv2d_backward_weight(&gpu, &dyt, &xt, &dwt, s, false).unwrap();
    let dw = read(&gpu, &dwt).await;
    assert_close("tconv dw", &dw, &want_dw, 5e-4, RTOL);
    assert_fd(
        "tconv dw",
        |wv| dot(&dy64, &forward(&x64, wv)),
        &w64,
        &dw,
        30,
        1e-3,
    );
}

/// Batch norm in training (forward, backward), in inference, and folded
/// into a convolution, on `gpu` (which may have a tiny binding limit).
async fn check_batchnorm(gpu: &Gpu, (n, c, h, w): (usize, usize, usize, usize)) {
    let tag = format!("batchnorm n{n} c{c} {h}x{w}");
    let hw = h * w;
    let x: Vec<f32> = rand_vec(1, n * c * hw)
        .iter()
        .enumerate()
        .map(|(i, v)| v * (1.0 + ((i / hw) % c) as f32) + 0.5 * ((i / hw) % c) as f32)
        .collect();
    let gamma: Vec<f32> = rand_vec(2, c).iter().map(|v| 1.0 + 0.5 * v).collect();
    let beta = rand_vec(3, c);
    let (x64, g64, b64) = (to64(&x), to64(&gamma), to64(&beta));
    let xt = up(gpu, &[n, c, h, w], &x);
    let (gt, bt) = (up(gpu, &[c], &gamma), up(gpu, &[c], &beta));
    let (rmt, rvt) = (gpu.zeros(&[c]).unwrap(), up(gpu, &[c], &vec![1.0; c]));
    let p = BnParams {
        gamma: &gt,
        beta: &bt,
        running_mean: &rmt,
        running_var: &rvt,
    };
    let (y, stats) = batchnorm::batchnorm_train(gpu, &xt, &p, Some(1.0)).unwrap();
    let forward = |xv: &[f64], gv: &[f64], bv: &[f64]| {
        batchnorm::cpu::batchnorm_train(xv, (n, c, hw), gv, bv)
    };
    let (want, mean, _) = forward(&x64, &g64, &b64);
    assert_close(
        &format!("{tag} forward"),
        &read(gpu, &y).await,
        &want,
        1e-4,
        1e-4,
    );
    assert_close(
        &format!("{tag} running mean"),
        &read(gpu, &rmt).await,
        &mean,
        1e-5,
        1e-5,
    );

    let dy = rand_vec(4, n * c * hw);
    let dy64 = to64(&dy);
    let dyt = up(gpu, &[n, c, h, w], &dy);
    let (dgt, dbt) = (gpu.empty(&[c]).unwrap(), gpu.empty(&[c]).unwrap());
    let dxt = batchnorm::batchnorm_backward(gpu, &xt, &dyt, None, &gt, &stats, &dgt, &dbt, false);
    let dx = read(gpu, &dxt.unwrap()).await;
    let (wdx, wdg, wdb) = batchnorm::cpu::batchnorm_backward(&x64, &dy64, (n, c, hw), &g64);
    assert_close(&format!("{tag} dx"), &dx, &wdx, 1e-4, 1e-3);
    let dg = read(gpu, &dgt).await;
    assert_close(&format!("{tag} dgamma"), &dg, &wdg, 1e-3, 1e-4);
    assert_close(
        &format!("{tag} dbeta"),
        &read(gpu, &dbt).await,
        &wdb,
        1e-3,
        1e-4,
    );
    let fx = |xv: &[f64]| dot(&dy64, &forward(xv, &g64, &b64).0);
    assert_fd(&format!("{tag} dx"), fx, &x64, &dx, 30, 2e-3);
    let fg = |gv: &[f64]| dot(&dy64, &forward(&x64, gv, &b64).0);
    assert_fd(&format!("{tag} dgamma"), fg, &g64, &dg, 30, 1e-3);

    // Inference with the running statistics, and the same folded into a
    // 1x1 convolution with identity weights.
    let yi = read(gpu, &batchnorm::batchnorm_infer(gpu, &xt, &p).unwrap()).await;
    let (rm, rv) = (to64(&read(gpu, &rmt).await), to64(&read(gpu, &rvt).await));
    let want_i = batchnorm::cpu::batchnorm_infer(&x64, (c, hw), (&g64, &b64), (&rm, &rv));
    assert_close(&format!("{tag} inference"), &yi, &want_i, 1e-4, 1e-4);
    let eye: Vec<f32> = (0..c * c).map(|i| f32::from(i % (c + 1) == 0)).collect();
    let (wf, bf) = fold::fold_bn(
        gpu,
        &up(gpu, &[c, c, 1, 1], &eye),
        &gpu.zeros(&[c]).unwrap(),
        &p,
    )
    .unwrap();
    let folded = read(gpu, &conv::conv2d(gpu, &xt, &wf, &bf, 1, 1).unwrap()).await;
    assert_close(&format!("{tag} folded"), &folded, &want_i, 1e-4, 1e-4);
}

/// Batch norm with the ReLU and the residual add in the same pass, and
/// the fused backward, against the f64 references and finite differences.
async fn check_fused_batchnorm(gpu: &Gpu, (n, c, h, w): (usize, usize, usize, usize)) {
    let tag = format!("fused batchnorm n{n} c{c} {h}x{w}");
    let (hw, shape) = (h * w, [n, c, h, w]);
    let (x, skip, dy) = (
        rand_vec(5, n * c * hw),
        rand_vec(6, n * c * hw),
        rand_vec(7, n * c * hw),
    );
    let gamma: Vec<f32> = rand_vec(8, c).iter().map(|v| 1.0 + 0.5 * v).collect();
    let beta = rand_vec(9, c);
    let (x64, s64, dy64, g64, b64) = (to64(&x), to64(&skip), to64(&dy), to64(&gamma), to64(&beta));
    let (xt, st, dyt) = (
        up(gpu, &shape, &x),
        up(gpu, &shape, &skip),
        up(gpu, &shape, &dy),
    );
    let (gt, bt) = (up(gpu, &[c], &gamma), up(gpu, &[c], &beta));
    let (rmt, rvt) = (gpu.zeros(&[c]).unwrap(), up(gpu, &[c], &vec![1.0; c]));
    let p = BnParams {
        gamma: &gt,
        beta: &bt,
        running_mean: &rmt,
        running_var: &rvt,
    };
    let dims = (n, c, hw);
    let fused = |xv: &[f64], sv| batchnorm::cpu::batchnorm_relu_train(xv, dims, (&g64, &b64), sv);
    let train = |then| batchnorm::batchnorm_train_then(gpu, &xt, &p, None, then).unwrap();
    let relu = train(Then::Relu);
    let want = fused(&x64, None);
    assert_close(
        &format!("{tag} relu"),
        &read(gpu, &relu.y).await,
        &want,
        1e-4,
        1e-4,
    );
    let join = train(Then::AddRelu(&st));
    let want_join = fused(&x64, Some(&s64));
    assert_close(
        &format!("{tag} add+relu"),
        &read(gpu, &join.y).await,
        &want_join,
        1e-4,
        1e-4,
    );
    let keep = train(Then::ReluKeep);
    assert_close(
        &format!("{tag} keep: relu"),
        &read(gpu, &keep.y).await,
        &want,
        1e-4,
        1e-4,
    );
    let bn = batchnorm::cpu::batchnorm_train(&x64, dims, &g64, &b64).0;
    let pre = read(gpu, keep.pre.as_ref().unwrap()).await;
    assert_close(&format!("{tag} keep: bn"), &pre, &bn, 1e-4, 1e-4);

    let (dgt, dbt) = (stale(gpu, &[c]), stale(gpu, &[c]));
    let dxt = batchnorm::batchnorm_backward(
        gpu,
        &xt,
        &dyt,
        Some(&relu.y),
        &gt,
        &relu.stats,
        &dgt,
        &dbt,
        false,
    );
    let dx = read(gpu, &dxt.unwrap()).await;
    let (wdx, wdg, wdb) = batchnorm::cpu::batchnorm_relu_backward(&x64, &dy64, dims, (&g64, &b64));
    assert_close(&format!("{tag} relu dx"), &dx, &wdx, 1e-4, 1e-3);
    assert_close(
        &format!("{tag} relu dgamma"),
        &read(gpu, &dgt).await,
        &wdg,
        1e-3,
        1e-4,
    );
    assert_close(
        &format!("{tag} relu dbeta"),
        &read(gpu, &dbt).await,
        &wdb,
        1e-3,
        1e-4,
    );
    let fx = |xv: &[f64]| dot(&dy64, &fused(xv, None));
    assert_fd(&format!("{tag} relu dx"), fx, &x64, &dx, 30, 2e-3);
}

#[wasm_bindgen_test]
async fn batchnorm_relu_and_add_fused_forward_and_backward() {
    let gpu = gpu().await;
    check_fused_batchnorm(&gpu, (3, 5, 7, 9)).await;
    check_fused_batchnorm(&gpu, (2, 6, 4, 6)).await;
}

#[wasm_bindgen_test]
async fn batchnorm_train_backward_inference_and_fold() {
    let gpu = gpu().await;
    check_batchnorm(&gpu, (3, 5, 7, 9)).await;
    check_batchnorm(&gpu, (2, 6, 4, 6)).await;
}

#[wasm_bindgen_test]
async fn elementwise_forward_and_backward() {
    let gpu = gpu().await;
    // 776 takes the vec4 form of the kernels, 777 the scalar one.
    for len in [776, 777] {
        let (a, b) = (rand_vec(3, len), rand_vec(4, len));
        let (a64, b64) = (to64(&a), to64(&b));
        let (at, bt) = (up(&gpu, &[len], &a), up(&gpu, &[len], &b));
        let relu = read(&gpu, &elementwise::relu(&gpu, &at).unwrap()).await;
        let want: Vec<f64> = a64.iter().map(|v| v.max(0.0)).collect();
        assert_close("relu", &relu, &want, 0.0, 0.0);
        let yt = up(&gpu, &[len], &relu);
        let dx = read(&gpu, &elementwise::relu_backward(&gpu, &yt, &bt).unwrap()).await;
        let want: Vec<f64> = a64
            .iter()
            .zip(&b64)
            .map(|(v, d)| if *v > 0.0 { *d } else { 0.0 })
            .collect();
        assert_close("relu backward", &dx, &want, 0.0, 0.0);
        let loss = |xv: &[f64]| b64.iter().zip(xv).map(|(d, v)| d * v.max(0.0)).sum::<f64>();
        assert_fd("relu dx", loss, &a64, &dx, 50, 1e-6);

        let sum: Vec<f64> = a64.iter().zip(&b64).map(|(p, q)| p + q).collect();
        let add = read(&gpu, &elementwise::add(&gpu, &at, &bt).unwrap()).await;
        assert_close("add", &add, &sum, 1e-6, 1e-6);
        let add_relu = read(&gpu, &elementwise::add_relu(&gpu, &at, &bt).unwrap()).await;
        let want: Vec<f64> = sum.iter().map(|v| v.max(0.0)).collect();
        assert_close("add_relu", &add_relu, &want, 1e-6, 1e-6);
        let z: Vec<f32> = a.iter().map(|v| v * 40.0).collect();
        let sig = read(
            &gpu,
            &elementwise::sigmoid(&gpu, &up(&gpu, &[len], &z)).unwrap(),
        )
        .await;
        let want: Vec<f64> = z.iter().map(|&v| ecpu::sigmoid(v as f64)).collect();
        assert_close("sigmoid", &sig, &want, 1e-7, 1e-5);
        elementwise::axpy(&gpu, 0.5, &at, &bt).unwrap();
        let want: Vec<f64> = a64.iter().zip(&b64).map(|(p, q)| q + 0.5 * p).collect();
        assert_close("axpy", &read(&gpu, &bt).await, &want, 1e-6, 1e-6);
    }
}

#[wasm_bindgen_test]
async fn maxpool_forward_and_backward() {
    let gpu = gpu().await;
    let (n, c, h, w, k, s) = (2, 3, 9, 11, 3, 2);
    // A shuffled ramp: distinct values, so max has no kinks for the FD check.
    let r = rand_vec(1, n * c * h * w);
    let mut order: Vec<usize> = (0..r.len()).collect();
    order.sort_by(|&p, &q| r[p].total_cmp(&r[q]));
    let x: Vec<f32> = order.iter().map(|&i| i as f32 * 0.01).collect();
    let x64 = to64(&x);
    let (oh, ow, _, _) = pool_geom(h, w, k, s);
    let xt = up(&gpu, &[n, c, h, w], &x);
    let y = read(&gpu, &pool::maxpool2d(&gpu, &xt, k, s).unwrap()).await;
    assert_close(
        "maxpool",
        &y,
        &pcpu::maxpool2d(&x64, (n, c, h, w), k, s).0,
        0.0,
        0.0,
    );
    let dy = rand_vec(2, n * c * oh * ow);
    let dy64 = to64(&dy);
    let dyt = up(&gpu, &[n, c, oh, ow], &dy);
    let dx = read(
        &gpu,
        &pool::maxpool2d_backward(&gpu, &xt, &dyt, k, s).unwrap(),
    )
    .await;
    let want = pcpu::maxpool2d_backward(&x64, &dy64, (n, c, h, w), k, s);
    assert_close("maxpool dx", &dx, &want, 1e-6, 1e-6);
    let loss = |xv: &[f64]| dot(&dy64, &pcpu::maxpool2d(xv, (n, c, h, w), k, s).0);
    assert_fd("maxpool dx", loss, &x64, &dx, 40, 1e-3);
}

#[wasm_bindgen_test]
async fn resize_forward_and_backward() {
    let gpu = gpu().await;
    for (mode, (h, w), (oh, ow)) in [
        (Mode::Bilinear, (20, 20), (80, 80)),
        (Mode::Bilinear, (13, 9), (6, 4)),
        (Mode::Nearest, (5, 7), (11, 13)),
    ] {
        let tag = format!("resize {} {h}x{w} -> {oh}x{ow}", mode.name());
        let nc = 3;
        let x = rand_vec(5, nc * h * w);
        let x64 = to64(&x);
        let xt = up(&gpu, &[1, nc, h, w], &x);
        let y = read(&gpu, &resize::resize(&gpu, &xt, oh, ow, mode).unwrap()).await;
        let forward = |xv: &[f64]| rcpu::resize(xv, nc, (h, w), (oh, ow), mode);
        assert_close(&tag, &y, &forward(&x64), 1e-5, 1e-5);
        let dy = rand_vec(6, nc * oh * ow);
        let dy64 = to64(&dy);
        let dyt = up(&gpu, &[1, nc, oh, ow], &dy);
        let dx = read(
            &gpu,
            &resize::resize_backward(&gpu, &dyt, h, w, mode).unwrap(),
        )
        .await;
        let want = rcpu::resize_backward(&dy64, nc, (h, w), (oh, ow), mode);
        assert_close(&format!("{tag} dx"), &dx, &want, 1e-4, 1e-5);
        assert_fd(
            &format!("{tag} dx"),
            |xv| dot(&dy64, &forward(xv)),
            &x64,
            &dx,
            30,
            1e-3,
        );
        // The upscale kernels (the x4 case takes them) against the general
        // ones: the same bits.
        let general = resize::Kernels::General;
        let y0 = resize::resize_with(&gpu, &xt, (oh, ow), mode, general).unwrap();
        assert_bits_eq(&format!("{tag} general"), &y, &read(&gpu, &y0).await);
        let dx0 = resize::resize_backward_with(&gpu, &dyt, (h, w), mode, general).unwrap();
        assert_bits_eq(&format!("{tag} dx general"), &dx, &read(&gpu, &dx0).await);
    }
}

#[wasm_bindgen_test]
async fn weighted_bce_forward_and_backward() {
    let gpu = gpu().await;
    let n = 4 * 17 * 19;
    let z: Vec<f32> = rand_vec(1, n).iter().map(|v| v * 6.0).collect();
    let t: Vec<f32> = (0..n).map(|i| f32::from(i % 7 == 0)).collect();
    let (z64, t64) = (to64(&z), to64(&t));
    let (zt, tt) = (up(&gpu, &[4, 1, 17, 19], &z), up(&gpu, &[4, 1, 17, 19], &t));
    for pw in [1.0f32, 15.0] {
        let l = read(&gpu, &loss::bce_with_logits(&gpu, &zt, &tt, pw).unwrap()).await;
        let want = lcpu::bce_with_logits(&z64, &t64, pw as f64);
        assert_close(&format!("bce pw {pw}"), &l, &[want], 1e-6, 1e-5);
        let dz = read(
            &gpu,
            &loss::bce_with_logits_backward(&gpu, &zt, &tt, pw).unwrap(),
        )
        .await;
        let want = lcpu::bce_with_logits_backward(&z64, &t64, pw as f64);
        assert_close(&format!("bce grad pw {pw}"), &dz, &want, 1e-9, 1e-5);
        // Gradients are ~1/n: scaled up to compare with a relative tolerance.
        let scaled: Vec<f32> = dz.iter().map(|v| v * n as f32).collect();
        let f = |zv: &[f64]| lcpu::bce_with_logits(zv, &t64, pw as f64) * n as f64;
        assert_fd(&format!("bce pw {pw} dz"), f, &z64, &scaled, 50, 1e-4);
    }
}

#[wasm_bindgen_test]
async fn sums_and_channel_sums() {
    let gpu = gpu().await;
    for n in [7usize, 1025, 300_000] {
        let x = rand_vec(n as u64, n);
        let xt = up(&gpu, &[n], &x);
        let s = read(&gpu, &reduce::sum(&gpu, &xt, false, 1.0).unwrap()).await;
        let want: f64 = x.iter().map(|&v| v as f64).sum();
        assert_close(
            &format!("sum {n}"),
            &s,
            &[want],
            1e-3 * (n as f64 / 1e5).max(1.0),
            1e-5,
        );
        let s2 = read(&gpu, &reduce::sum(&gpu, &xt, true, 0.5).unwrap()).await;
        let want2 = x.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() * 0.5;
        assert_close(&format!("sum of squares {n}"), &s2, &[want2], 1e-3, 1e-5);
    }
    let (n, c, hw) = (3, 5, 2000);
    let x = rand_vec(3, n * c * hw);
    let xt = up(&gpu, &[n, c, 40, 50], &x);
    let out = gpu.empty(&[c]).unwrap();
    reduce::channel_sum(&gpu, &xt, &out, false).unwrap();
    let want = reduce::cpu::channel_sum(&to64(&x), (n, c, hw));
    assert_close("channel sum", &read(&gpu, &out).await, &want, 1e-3, 1e-5);
}

#[wasm_bindgen_test]
async fn adam_three_steps_with_l2() {
    let gpu = gpu().await;
    let n = 1000;
    let adam = Adam::default();
    let p0 = rand_vec(1, n);
    let (pt, mt, vt) = (
        up(&gpu, &[n], &p0),
        gpu.zeros(&[n]).unwrap(),
        gpu.zeros(&[n]).unwrap(),
    );
    let (mut p, mut m, mut v) = (to64(&p0), vec![0.0; n], vec![0.0; n]);
    for step in 1..=3u64 {
        let g = rand_vec(10 + step, n);
        let gt = up(&gpu, &[n], &g);
        optim::adam_step(&gpu, &adam, step, &pt, &gt, &mt, &vt, 0.0025, 0.5).unwrap();
        ocpu::adam_step(&adam, step, &mut p, &to64(&g), &mut m, &mut v, 0.0025, 0.5);
    }
    assert_close("adam param", &read(&gpu, &pt).await, &p, 1e-6, 1e-6);
    assert_close("adam m", &read(&gpu, &mt).await, &m, 1e-6, 1e-5);
    assert_close("adam v", &read(&gpu, &vt).await, &v, 1e-7, 1e-4);
}

#[wasm_bindgen_test]
async fn work_is_split_under_a_4_kib_binding_limit() {
    // Every op must cut its work into windows of 1024 floats; the results
    // must not change.
    let gpu = gpu().await;
    gpu.set_binding_limit(4096);
    check_conv(&gpu, (2, 6, 8, 17, 13, 3, 1, 1), None, None, false).await;
    check_conv(&gpu, (2, 5, 7, 15, 12, 3, 2, 1), None, None, false).await;
    check_batchnorm(&gpu, (4, 3, 20, 30)).await;
    check_fused_batchnorm(&gpu, (7, 12, 12, 12)).await;
}
