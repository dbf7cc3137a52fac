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

#[test]
fn adam_with_squares_updates_alike_and_writes_each_squared_gradient_in_place() {
    // Two parameters side by side in one squares buffer (the training
    // step's gradient norm), the vec4 and the scalar form, on the full
    // device and on one whose 4 KiB bindings split every run into windows.
    for gpu in [gpu(), tiny_gpu()] {
        let adam = Adam::default();
        let (lens, offsets) = ([1000, 999], [0, 1024]);
        let sq = gpu.zeros(&[1024 + 999 + 64]).unwrap();
        for (i, (&n, &offset)) in lens.iter().zip(&offsets).enumerate() {
            let p0 = rand_vec(60 + i as u64, n);
            let g = rand_vec(70 + i as u64, n);
            let (gt, zeros) = (up(gpu, &[n], &g), vec![0.0; n]);
            let with = [
                up(gpu, &[n], &p0),
                up(gpu, &[n], &zeros),
                up(gpu, &[n], &zeros),
            ];
            let without = [
                up(gpu, &[n], &p0),
                up(gpu, &[n], &zeros),
                up(gpu, &[n], &zeros),
            ];
            let [p, m, v] = &with;
            let scales = (0.0025, 0.5);
            optim::adam_step_sq(gpu, &adam, 2, p, &gt, m, v, scales, (&sq, offset)).unwrap();
            let [p, m, v] = &without;
            optim::adam_step(gpu, &adam, 2, p, &gt, m, v, 0.0025, 0.5).unwrap();
            for (a, b) in with.iter().zip(&without) {
                let bits = |t| read(gpu, t).iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                assert_eq!(
                    bits(a),
                    bits(b),
                    "n {n}: Adam with squares updates differently"
                );
            }
            let got = read(gpu, &sq);
            for (j, &gj) in g.iter().enumerate() {
                assert_eq!(
                    got[offset + j].to_bits(),
                    (gj * gj).to_bits(),
                    "n {n}: square {j}"
                );
            }
        }
        // What lies between and after the parameters stays as it was.
        let got = read(gpu, &sq);
        let gaps = got[1000..1024].iter().chain(&got[1024 + 999..]);
        assert!(gaps.into_iter().all(|&v| v == 0.0), "a gap was written");
        let t = up(gpu, &[8], &[1.0; 8]);
        let err = optim::adam_step_sq(gpu, &adam, 1, &t, &t, &t, &t, (0.0, 1.0), (&sq, 32));
        assert!(err.is_err(), "an unaligned offset was accepted");
    }
}
