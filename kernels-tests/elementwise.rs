use crate::common::*;
use engine::ops::elementwise::{self, cpu};

/// Elementwise results are single roundings: 1e-6 absolute/relative.
const TOL: f64 = 1e-6;

#[test]
fn relu_forward_backward() {
    let gpu = gpu();
    let x = rand_vec(1, 1000);
    let dy = rand_vec(2, 1000);
    let xt = up(gpu, &[10, 100], &x);
    let y = elementwise::relu(gpu, &xt).unwrap();
    let want: Vec<f64> = x.iter().map(|&v| (v as f64).max(0.0)).collect();
    assert_close("relu", &read(gpu, &y), &want, 0.0, 0.0);
    let dx = read(
        gpu,
        &elementwise::relu_backward(gpu, &y, &up(gpu, &[10, 100], &dy)).unwrap(),
    );
    let want: Vec<f64> = x
        .iter()
        .zip(&dy)
        .map(|(&v, &d)| if v > 0.0 { d as f64 } else { 0.0 })
        .collect();
    assert_close("relu backward", &dx, &want, 0.0, 0.0);
    // Finite differences away from the kink at 0.
    let (x64, dy64) = (to64(&x), to64(&dy));
    let loss = |xv: &[f64]| {
        dy64.iter()
            .zip(xv)
            .map(|(d, v)| d * v.max(0.0))
            .sum::<f64>()
    };
    assert_fd("relu dx", loss, &x64, &dx, 100, 1e-6);
}

#[test]
fn add_and_add_relu() {
    let gpu = gpu();
    let (a, b) = (rand_vec(3, 777), rand_vec(4, 777));
    let (at, bt) = (up(gpu, &[777], &a), up(gpu, &[777], &b));
    let want: Vec<f64> = a
        .iter()
        .zip(&b)
        .map(|(&p, &q)| p as f64 + q as f64)
        .collect();
    assert_close(
        "add",
        &read(gpu, &elementwise::add(gpu, &at, &bt).unwrap()),
        &want,
        TOL,
        TOL,
    );
    let want: Vec<f64> = want.iter().map(|v| v.max(0.0)).collect();
    assert_close(
        "add_relu",
        &read(gpu, &elementwise::add_relu(gpu, &at, &bt).unwrap()),
        &want,
        TOL,
        TOL,
    );
    let e = elementwise::add(gpu, &at, &up(gpu, &[776], &a[..776]))
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("add:") && e.contains("[777]") && e.contains("[776]"),
        "{e}"
    );
}

#[test]
fn sigmoid_is_stable_for_large_logits() {
    let gpu = gpu();
    let mut z: Vec<f32> = rand_vec(5, 500).iter().map(|v| v * 8.0).collect();
    z.extend([-100.0, -50.0, -20.0, 0.0, 20.0, 50.0, 100.0, 1e30, -1e30]);
    let y = read(
        gpu,
        &elementwise::sigmoid(gpu, &up(gpu, &[z.len()], &z)).unwrap(),
    );
    let want: Vec<f64> = z.iter().map(|&v| cpu::sigmoid(v as f64)).collect();
    assert!(y.iter().all(|v| v.is_finite()));
    assert_close("sigmoid", &y, &want, 1e-7, 1e-5);
}

#[test]
fn axpy_accumulates() {
    let gpu = gpu();
    let (a, y0) = (rand_vec(6, 300), rand_vec(7, 300));
    let yt = up(gpu, &[300], &y0);
    elementwise::axpy(gpu, 0.5, &up(gpu, &[300], &a), &yt).unwrap();
    let want: Vec<f64> = a
        .iter()
        .zip(&y0)
        .map(|(&p, &q)| q as f64 + 0.5 * p as f64)
        .collect();
    assert_close("axpy", &read(gpu, &yt), &want, TOL, TOL);
    assert!(
        elementwise::axpy(gpu, 1.0, &yt, &yt).is_err(),
        "aliasing is refused"
    );
}
