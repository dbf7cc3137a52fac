use crate::common::*;
use engine::ops::loss::{self, cpu};

#[test]
fn weighted_bce_forward_backward() {
    let gpu = gpu();
    let n = 4 * 17 * 19;
    let mut z: Vec<f32> = rand_vec(1, n).iter().map(|v| v * 6.0).collect();
    // Large logits of both signs, on both classes: must stay finite and exact.
    z[..8].copy_from_slice(&[-100.0, -40.0, 40.0, 100.0, -100.0, -40.0, 40.0, 100.0]);
    let t: Vec<f32> = (0..n)
        .map(|i| if i % 7 == 0 || i < 4 { 1.0 } else { 0.0 })
        .collect();
    let (z64, t64) = (to64(&z), to64(&t));
    let (zt, tt) = (up(gpu, &[4, 1, 17, 19], &z), up(gpu, &[4, 1, 17, 19], &t));
    for pw in [1.0f32, 15.0] {
        let l = read(gpu, &loss::bce_with_logits(gpu, &zt, &tt, pw).unwrap());
        let want = cpu::bce_with_logits(&z64, &t64, pw as f64);
        // A mean of O(1..100) per-pixel terms: 1e-5 relative.
        assert_close(&format!("bce pw {pw}"), &l, &[want], 1e-6, 1e-5);
        let dz = read(
            gpu,
            &loss::bce_with_logits_backward(gpu, &zt, &tt, pw).unwrap(),
        );
        assert!(dz.iter().all(|v| v.is_finite()));
        let want = cpu::bce_with_logits_backward(&z64, &t64, pw as f64);
        assert_close(&format!("bce grad pw {pw}"), &dz, &want, 1e-9, 1e-5);
        let f = |zv: &[f64]| cpu::bce_with_logits(zv, &t64, pw as f64);
        // Gradients are ~1/n: scale them up to compare with a relative tolerance.
        let scaled: Vec<f32> = dz.iter().map(|v| v * n as f32).collect();
        let fs = |zv: &[f64]| f(zv) * n as f64;
        assert_fd(&format!("bce pw {pw} dz"), fs, &z64, &scaled, 80, 1e-4);
        // Both in one pass: the same bits.
        let (fl, fdz) = loss::bce_with_logits_and_grad(gpu, &zt, &tt, pw).unwrap();
        assert_bits_eq(&format!("fused bce pw {pw}"), &read(gpu, &fl), &l);
        assert_bits_eq(&format!("fused bce grad pw {pw}"), &read(gpu, &fdz), &dz);
    }
}

#[test]
fn bce_hand_computed() {
    // z = 0, t = 1, pos_weight 15: 15 * ln 2; z = 0, t = 0: ln 2.
    let gpu = gpu();
    let zt = up(gpu, &[2], &[0.0, 0.0]);
    let tt = up(gpu, &[2], &[1.0, 0.0]);
    let l = read(gpu, &loss::bce_with_logits(gpu, &zt, &tt, 15.0).unwrap());
    assert_close(
        "hand",
        &l,
        &[16.0 * std::f64::consts::LN_2 / 2.0],
        1e-6,
        1e-6,
    );
}
