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
    // 776 takes the vec4 form of the kernels, 777 the scalar one.
    add_and_add_relu_of(776);
    add_and_add_relu_of(777);
}

fn add_and_add_relu_of(len: usize) {
    let gpu = gpu();
    let (a, b) = (rand_vec(3, len), rand_vec(4, len));
    let (at, bt) = (up(gpu, &[len], &a), up(gpu, &[len], &b));
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
    let e = elementwise::add(gpu, &at, &up(gpu, &[len - 1], &a[..len - 1]))
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("add:")
            && e.contains(&format!("[{len}]"))
            && e.contains(&format!("[{}]", len - 1)),
        "{e}"
    );
}

#[test]
fn sigmoid_is_stable_for_large_logits() {
    let gpu = gpu();
    let mut z: Vec<f32> = rand_vec(5, 500).iter().map(|v| v * 8.0).collect();
    z.extend([-100.0, -50.0, -20.0, 0.0, 20.0, 50.0, 100.0, 1e30, -1e30]);
    // 509 values (scalar kernel), then 508 (vec4 form).
    for len in [z.len(), z.len() - 1] {
        let z = &z[z.len() - len..];
        let y = read(
            gpu,
            &elementwise::sigmoid(gpu, &up(gpu, &[len], z)).unwrap(),
        );
        let want: Vec<f64> = z.iter().map(|&v| cpu::sigmoid(v as f64)).collect();
        assert!(y.iter().all(|v| v.is_finite()));
        assert_close(&format!("sigmoid of {len}"), &y, &want, 1e-7, 1e-5);
    }
}

/// relu_backward then axpy, in one pass: the same bits, NaN in the ReLU's
/// output passing dy as relu_backward does.
#[test]
fn relu_backward_adds_into_a_gradient() {
    for len in [300, 301] {
        let gpu = gpu();
        let (mut y, dy, acc) = (rand_vec(8, len), rand_vec(9, len), rand_vec(10, len));
        y[7] = f32::NAN;
        let (yt, dyt) = (up(gpu, &[len], &y), up(gpu, &[len], &dy));
        let fused = up(gpu, &[len], &acc);
        elementwise::relu_backward_add(gpu, &yt, &dyt, &fused).unwrap();
        let apart = up(gpu, &[len], &acc);
        let masked = elementwise::relu_backward(gpu, &yt, &dyt).unwrap();
        elementwise::axpy(gpu, 1.0, &masked, &apart).unwrap();
        let got = read(gpu, &fused);
        assert_bits_eq("relu_backward_add", &got, &read(gpu, &apart));
        let want: Vec<f64> = (0..len)
            .map(|i| {
                acc[i] as f64
                    + if y[i] > 0.0 || y[i].is_nan() {
                        dy[i] as f64
                    } else {
                        0.0
                    }
            })
            .collect();
        assert_close("relu_backward_add", &got, &want, TOL, TOL);
        assert!(
            elementwise::relu_backward_add(gpu, &yt, &dyt, &dyt).is_err(),
            "aliasing is refused"
        );
    }
}

#[test]
fn axpy_accumulates() {
    axpy_of(300);
    axpy_of(301);
}

fn axpy_of(len: usize) {
    let gpu = gpu();
    let (a, y0) = (rand_vec(6, len), rand_vec(7, len));
    let yt = up(gpu, &[len], &y0);
    elementwise::axpy(gpu, 0.5, &up(gpu, &[len], &a), &yt).unwrap();
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
