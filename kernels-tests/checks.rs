//! The numerical checks of the kernel tests, with no device in them: seeded
//! inputs, the element-wise comparison with the f64 references and the
//! finite-difference check. Shared by the native kernel tests and the
//! browser kernel tests (`web/tests/kernels.rs`), which include this file.
use approx::relative_eq;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub fn rand_vec(seed: u64, n: usize) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

pub fn to64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// The same f32 bits everywhere; reports the first element that differs.
#[track_caller]
pub fn assert_bits_eq(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let first = got
        .iter()
        .zip(want)
        .position(|(a, b)| a.to_bits() != b.to_bits());
    if let Some(i) = first {
        panic!("{what}: element {i} is {} against {}", got[i], want[i]);
    }
}

/// Every element within `atol + rtol * |want|`; reports the worst element.
#[track_caller]
pub fn assert_close(what: &str, got: &[f32], want: &[f64], atol: f64, rtol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let mut worst: Option<(usize, f64)> = None;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let ok = relative_eq!(g as f64, w, epsilon = atol, max_relative = rtol);
        if !ok {
            let err = (g as f64 - w).abs();
            if worst.is_none_or(|(_, e)| err > e) {
                worst = Some((i, err));
            }
        }
    }
    if let Some((i, err)) = worst {
        panic!(
            "{what}: element {i} got {} want {} (|err| {err:e}, atol {atol:e}, rtol {rtol:e})",
            got[i], want[i]
        );
    }
}

/// Checks `grad` (from the GPU backward) against central finite differences
/// of the f64 scalar function `f` at `x`, on up to `samples` indices.
#[track_caller]
pub fn assert_fd(
    what: &str,
    f: impl Fn(&[f64]) -> f64,
    x: &[f64],
    grad: &[f32],
    samples: usize,
    tol: f64,
) {
    let eps = 1e-4;
    let step = (x.len() / samples).max(1);
    let mut xp = x.to_vec();
    for i in (0..x.len()).step_by(step).chain([x.len() - 1]) {
        xp[i] = x[i] + eps;
        let fp = f(&xp);
        xp[i] = x[i] - eps;
        let fm = f(&xp);
        xp[i] = x[i];
        let fd = (fp - fm) / (2.0 * eps);
        let g = grad[i] as f64;
        assert!(
            (g - fd).abs() <= tol * (1.0 + fd.abs()),
            "{what}: d/dx[{i}] gpu {g} vs finite difference {fd}"
        );
    }
}

/// sum(r * y): the scalar whose gradient in y is r.
pub fn dot(r: &[f64], y: &[f64]) -> f64 {
    r.iter().zip(y).map(|(a, b)| a * b).sum()
}
