use crate::common::*;
use engine::ops::pool::{self, cpu, pool_geom};

/// Max-pool selects values: exact equality is expected.
fn check(n: usize, c: usize, h: usize, w: usize, k: usize, s: usize, data: Vec<f32>) {
    let gpu = gpu();
    let tag = format!("maxpool n{n} c{c} {h}x{w} k{k} s{s}");
    let (oh, ow, _, _) = pool_geom(h, w, k, s);
    let x64 = to64(&data);
    let xt = up(gpu, &[n, c, h, w], &data);
    let y = pool::maxpool2d(gpu, &xt, k, s).unwrap();
    assert_eq!(y.shape(), [n, c, oh, ow]);
    let (want, _) = cpu::maxpool2d(&x64, (n, c, h, w), k, s);
    assert_close(&format!("{tag} forward"), &read(gpu, &y), &want, 0.0, 0.0);

    let dy = rand_vec(99, n * c * oh * ow);
    let dy64 = to64(&dy);
    let dyt = up(gpu, &[n, c, oh, ow], &dy);
    let dx = read(
        gpu,
        &pool::maxpool2d_backward(gpu, &xt, &dyt, k, s).unwrap(),
    );
    let want = cpu::maxpool2d_backward(&x64, &dy64, (n, c, h, w), k, s);
    assert_close(&format!("{tag} dx"), &dx, &want, 1e-6, 1e-6);
    // Training's forward keeps each output's argmax for the backward pass:
    // the same y, the reference's argmax, the same dx.
    let (ya, arg) = pool::maxpool2d_with_argmax(gpu, &xt, k, s).unwrap();
    assert_bits_eq(
        &format!("{tag} forward with argmax"),
        &read(gpu, &ya),
        &read(gpu, &y),
    );
    let got: Vec<u32> = bytemuck::cast_slice(&read(gpu, &arg)).to_vec();
    let (_, want_arg) = cpu::maxpool2d(&x64, (n, c, h, w), k, s);
    let same = got.iter().zip(&want_arg).all(|(&a, &b)| a as usize == b);
    assert!(same, "{tag} argmax: {got:?} against {want_arg:?}");
    let dxa = pool::maxpool2d_backward_from(gpu, &[n, c, h, w], (&arg, &dyt), k, s).unwrap();
    assert_bits_eq(&format!("{tag} dx from argmax"), &read(gpu, &dxa), &dx);
    // Finite differences only where no tie or near-tie makes max kinked.
    let distinct = {
        let mut v = data.clone();
        v.sort_by(f32::total_cmp);
        v.windows(2).all(|p| p[1] - p[0] > 1e-3)
    };
    if distinct {
        let loss = |xv: &[f64]| dot(&dy64, &cpu::maxpool2d(xv, (n, c, h, w), k, s).0);
        assert_fd(&format!("{tag} dx"), loss, &x64, &dx, 60, 1e-3);
    }
}

fn distinct_values(n: usize, seed: u64) -> Vec<f32> {
    // A shuffled ramp: all values distinct and well separated.
    let mut v: Vec<f32> = (0..n).map(|i| i as f32 * 0.01).collect();
    let r = rand_vec(seed, n);
    let mut idx: Vec<usize> = (0..n).collect();
    idx.sort_by(|&a, &b| r[a].total_cmp(&r[b]));
    v = idx.iter().map(|&i| v[i]).collect();
    v
}

#[test]
fn maxpool3x3_stride2_odd_and_even() {
    check(2, 3, 9, 11, 3, 2, distinct_values(2 * 3 * 99, 1));
    check(1, 2, 10, 8, 3, 2, distinct_values(160, 2));
    // One output row and column: one of the four scatter classes runs.
    check(1, 3, 2, 1, 3, 2, distinct_values(6, 5));
    // A 3x3 window at stride 1: nine classes, up to nine outputs an input.
    check(1, 2, 7, 6, 3, 1, distinct_values(84, 6));
}

#[test]
fn maxpool2x2_stride2() {
    check(2, 4, 8, 8, 2, 2, distinct_values(512, 3));
    check(1, 1, 7, 9, 2, 2, distinct_values(63, 4));
}

#[test]
fn maxpool_ties_go_to_the_first_maximum() {
    // Small integers: many ties inside each window.
    let data: Vec<f32> = rand_vec(5, 3 * 12 * 12)
        .iter()
        .map(|v| (v * 2.0).round())
        .collect();
    check(1, 3, 12, 12, 3, 2, data.clone());
    check(1, 3, 12, 12, 2, 2, data);
    // All equal: every window's gradient goes to its top-left input.
    let gpu = gpu();
    let x = up(gpu, &[1, 1, 4, 4], &[1.0; 16]);
    let dy = up(gpu, &[1, 1, 2, 2], &[1.0, 2.0, 3.0, 4.0]);
    let dx = read(gpu, &pool::maxpool2d_backward(gpu, &x, &dy, 2, 2).unwrap());
    let mut want = vec![0.0; 16];
    want[0] = 1.0;
    want[2] = 2.0;
    want[8] = 3.0;
    want[10] = 4.0;
    assert_close("all-equal ties", &dx, &want, 0.0, 0.0);
}
