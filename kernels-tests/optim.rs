use crate::common::*;
use engine::ops::optim::{self, Adam, cpu};

/// Three Adam steps with L2 over `n` parameters, checked against the f64
/// reference; the GPU's parameters, m and v.
fn adam_three_steps(gpu: &engine::gpu::Gpu, n: usize) -> [Vec<f32>; 3] {
    let adam = Adam::default();
    let p0 = rand_vec(1, 1000)[..n].to_vec();
    let (pt, mt, vt) = (
        up(gpu, &[n], &p0),
        gpu.zeros(&[n]).unwrap(),
        gpu.zeros(&[n]).unwrap(),
    );
    let (mut p, mut m, mut v) = (to64(&p0), vec![0.0; n], vec![0.0; n]);
    for step in 1..=3u64 {
        let g = rand_vec(10 + step, 1000)[..n].to_vec();
        optim::adam_step(
            gpu,
            &adam,
            step,
            &pt,
            &up(gpu, &[n], &g),
            &mt,
            &vt,
            0.0025,
            0.5,
        )
        .unwrap();
        cpu::adam_step(&adam, step, &mut p, &to64(&g), &mut m, &mut v, 0.0025, 0.5);
    }
    let got = [read(gpu, &pt), read(gpu, &mt), read(gpu, &vt)];
    // Updates are lr-sized (1e-3): 1e-6 absolute is 0.1% of a step.
    assert_close("adam param", &got[0], &p, 1e-6, 1e-6);
    assert_close("adam m", &got[1], &m, 1e-6, 1e-5);
    assert_close("adam v", &got[2], &v, 1e-7, 1e-4);
    got
}

#[test]
fn adam_three_steps_with_l2() {
    let gpu = gpu();
    // 1000 runs the vec4 form, 999 the scalar one: the same operations per
    // component, so the shared 999 parameters agree bit for bit.
    let vec4 = adam_three_steps(gpu, 1000);
    let scalar = adam_three_steps(gpu, 999);
    for (a, b) in vec4.iter().zip(&scalar) {
        let bits = |x: &[f32]| x[..999].iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(a), bits(b), "vec4 and scalar Adam differ");
    }
}

#[test]
fn adam_first_step_moves_by_lr() {
    // With bias correction the first step is lr * sign(g) (|g| >> eps).
    let gpu = gpu();
    let pt = up(gpu, &[4], &[1.0, 1.0, 1.0, 1.0]);
    let g = up(gpu, &[4], &[0.5, -2.0, 1e-3, -1e-3]);
    let (m, v) = (gpu.zeros(&[4]).unwrap(), gpu.zeros(&[4]).unwrap());
    optim::adam_step(gpu, &Adam::default(), 1, &pt, &g, &m, &v, 0.0, 1.0).unwrap();
    assert_close(
        "first step",
        &read(gpu, &pt),
        &[0.999, 1.001, 0.999, 1.001],
        1e-6,
        0.0,
    );
}
