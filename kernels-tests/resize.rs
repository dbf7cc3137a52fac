use crate::common::*;
use engine::ops::resize::{self, Mode, cpu};

/// Weighted sums of 4 values: 1e-5 absolute.
fn check(
    n: usize,
    c: usize,
    (h, w): (usize, usize),
    (oh, ow): (usize, usize),
    mode: Mode,
    seed: u64,
) {
    let gpu = gpu();
    let tag = format!("resize {} {h}x{w} -> {oh}x{ow}", mode.name());
    let x = rand_vec(seed, n * c * h * w);
    let x64 = to64(&x);
    let xt = up(gpu, &[n, c, h, w], &x);
    let y = resize::resize(gpu, &xt, oh, ow, mode).unwrap();
    let want = cpu::resize(&x64, n * c, (h, w), (oh, ow), mode);
    assert_close(&format!("{tag} forward"), &read(gpu, &y), &want, 1e-5, 1e-5);

    let dy = rand_vec(seed + 1, n * c * oh * ow);
    let dy64 = to64(&dy);
    let dyt = up(gpu, &[n, c, oh, ow], &dy);
    let dx = read(
        gpu,
        &resize::resize_backward(gpu, &dyt, h, w, mode).unwrap(),
    );
    let want = cpu::resize_backward(&dy64, n * c, (h, w), (oh, ow), mode);
    assert_close(&format!("{tag} dx"), &dx, &want, 1e-4, 1e-5);
    let loss = |xv: &[f64]| dot(&dy64, &cpu::resize(xv, n * c, (h, w), (oh, ow), mode));
    assert_fd(&format!("{tag} dx"), loss, &x64, &dx, 50, 1e-3);
}

#[test]
fn bilinear_network_factors() {
    check(2, 3, (20, 20), (80, 80), Mode::Bilinear, 1); // resize_1: x4
    check(1, 2, (40, 40), (80, 80), Mode::Bilinear, 2); // resize_2: x2
}

#[test]
fn bilinear_odd_sizes_up_and_down() {
    check(1, 2, (5, 7), (11, 13), Mode::Bilinear, 3);
    check(2, 1, (13, 9), (6, 4), Mode::Bilinear, 4);
    check(1, 1, (1, 3), (4, 5), Mode::Bilinear, 5);
}

#[test]
fn nearest_up_and_down() {
    check(1, 3, (8, 8), (16, 16), Mode::Nearest, 6);
    check(1, 2, (5, 7), (11, 13), Mode::Nearest, 7);
    check(1, 2, (13, 9), (6, 4), Mode::Nearest, 8);
}

#[test]
fn bilinear_matches_hand_computed_pytorch_values() {
    // torch.nn.functional.interpolate([[0, 1]], size=4, mode='bilinear',
    // align_corners=False) on a 1x2 row gives [0, 0.25, 0.75, 1].
    let gpu = gpu();
    let x = up(gpu, &[1, 1, 1, 2], &[0.0, 1.0]);
    let y = read(gpu, &resize::resize(gpu, &x, 1, 4, Mode::Bilinear).unwrap());
    assert_close("1x2 -> 1x4", &y, &[0.0, 0.25, 0.75, 1.0], 1e-7, 0.0);
    let y = read(gpu, &resize::resize(gpu, &x, 1, 4, Mode::Nearest).unwrap());
    assert_close("nearest 1x2 -> 1x4", &y, &[0.0, 0.0, 1.0, 1.0], 0.0, 0.0);
}
