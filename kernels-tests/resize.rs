use crate::common::*;
use engine::ops::resize::{self, Kernels, Mode, cpu};

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
fn bilinear_power_of_two_upscales_on_odd_sizes() {
    check(1, 2, (5, 7), (10, 28), Mode::Bilinear, 9); // rows x2, columns x4
    check(2, 1, (3, 5), (6, 10), Mode::Bilinear, 10); // rows of 10: no quads
    check(1, 2, (1, 3), (8, 24), Mode::Bilinear, 11); // one input row, x8
    check(1, 1, (6, 4), (3, 8), Mode::Bilinear, 12); // rows down, columns x2
    check(1, 3, (3, 8), (12, 32), Mode::Bilinear, 13); // quads, x4
    check(2, 1, (2, 4), (4, 32), Mode::Bilinear, 14); // quads: columns x8
    check(1, 3, (5, 12), (7, 20), Mode::Bilinear, 15); // row quads, columns not x2
}

/// The upscale and quad kernels (`resize_forward_quads`, the tight
/// backward ranges, the backward passes in quads where the input's rows are
/// whole vec4s) against the general ones: the same taps and sums in the
/// same order, so the same bits.
#[test]
fn upscale_kernels_match_the_general_ones_bit_for_bit() {
    let gpu = gpu();
    let (bilinear, nearest) = (Mode::Bilinear, Mode::Nearest);
    let cases = [
        (2, 3, (10, 10), (40, 40), bilinear),
        (1, 2, (40, 40), (80, 80), bilinear), // quads, x2
        (1, 2, (5, 7), (10, 28), bilinear),
        (2, 1, (3, 5), (6, 10), bilinear),
        (1, 1, (1, 3), (8, 24), bilinear),
        (1, 1, (6, 4), (3, 8), bilinear), // quads: rows down, columns x2
        (1, 3, (3, 8), (12, 32), bilinear), // quads, x4
        (2, 1, (2, 4), (4, 32), bilinear), // quads: columns x8
        (1, 3, (5, 12), (7, 20), bilinear), // row quads, columns not x2
        (1, 2, (3, 8), (6, 16), nearest), // row quads, nearest
    ];
    for (i, (n, c, (h, w), (oh, ow), mode)) in cases.into_iter().enumerate() {
        let tag = format!("{} {h}x{w} -> {oh}x{ow}", mode.name());
        let x = up(gpu, &[n, c, h, w], &rand_vec(20 + i as u64, n * c * h * w));
        let dy = up(
            gpu,
            &[n, c, oh, ow],
            &rand_vec(40 + i as u64, n * c * oh * ow),
        );
        let run = |k: Kernels| {
            let y = resize::resize_with(gpu, &x, (oh, ow), mode, k).unwrap();
            let dx = resize::resize_backward_with(gpu, &dy, (h, w), mode, k).unwrap();
            (read(gpu, &y), read(gpu, &dx))
        };
        let (fast, general) = (run(Kernels::Fast), run(Kernels::General));
        assert_bits_eq(&format!("{tag} forward"), &fast.0, &general.0);
        assert_bits_eq(&format!("{tag} dx"), &fast.1, &general.1);
    }
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
