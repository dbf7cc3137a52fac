use crate::common::*;
use engine::ops::reduce;

#[test]
fn sums_over_everything() {
    let gpu = gpu();
    // 70_001 is prime; 12_000_001 needs two levels of partial sums.
    for n in [1usize, 7, 1024, 1025, 70_001, 300_000, 12_000_001] {
        let x = rand_vec(n as u64, n);
        let xt = up(gpu, &[n], &x);
        let s = read(gpu, &reduce::sum(gpu, &xt, false, 1.0).unwrap());
        let want: f64 = x.iter().map(|&v| v as f64).sum();
        // f32 sums in chunks of ~1024: error grows like sqrt(n) * 1e-7.
        assert_close(
            &format!("sum {n}"),
            &s,
            &[want],
            1e-3 * (n as f64 / 1e5).max(1.0),
            1e-5,
        );
        let s2 = read(gpu, &reduce::sum(gpu, &xt, true, 0.5).unwrap());
        let want2: f64 = x.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() * 0.5;
        assert_close(&format!("sum of squares {n}"), &s2, &[want2], 1e-3, 1e-5);
        // Exactly representable: a sum of ones must be exact at any length.
        if n > 1000 {
            let ones = up(gpu, &[n], &vec![1.0; n]);
            let s = read(gpu, &reduce::sum(gpu, &ones, false, 1.0).unwrap());
            assert_eq!(s[0], n as f32, "sum of {n} ones");
        }
    }
}

#[test]
fn channel_sum_matches_and_accumulates() {
    let gpu = gpu();
    let (n, c, hw) = (3, 5, 2000);
    let x = rand_vec(3, n * c * hw);
    let xt = up(gpu, &[n, c, 40, 50], &x);
    let out = gpu.empty(&[c]).unwrap();
    reduce::channel_sum(gpu, &xt, &out, false).unwrap();
    let want = reduce::cpu::channel_sum(&to64(&x), (n, c, hw));
    assert_close("channel sum", &read(gpu, &out), &want, 1e-3, 1e-5);
    reduce::channel_sum(gpu, &xt, &out, true).unwrap();
    let want2: Vec<f64> = want.iter().map(|v| 2.0 * v).collect();
    assert_close(
        "channel sum accumulated",
        &read(gpu, &out),
        &want2,
        2e-3,
        1e-5,
    );
}

#[test]
fn channel_sum_of_many_images_stays_within_the_loop_budget() {
    // 40000 images of one 1x1 plane: one combine invocation would loop
    // 40000 times, past lavapipe's 65535-iteration loop limit counted with
    // exits; the planner must keep it correct.
    let gpu = gpu();
    let n = 40_000;
    let xt = up(gpu, &[n, 1, 1, 1], &vec![1.0; n]);
    let out = gpu.empty(&[1]).unwrap();
    reduce::channel_sum(gpu, &xt, &out, false).unwrap();
    assert_eq!(read(gpu, &out)[0], n as f32);
}

#[test]
fn batch_norm_grad_sums_in_one_pass_match_four_combines_bit_for_bit() {
    // combine_bn_grads replaces four `combine` calls of a batch norm's
    // backward: the sums, then dgamma and dbeta written or accumulated.
    let gpu = gpu();
    let (n, c, chunks) = (3, 37, 5);
    let pg = up(gpu, &[n * c * chunks], &rand_vec(81, n * c * chunks));
    let pb = up(gpu, &[n * c * chunks], &rand_vec(82, n * c * chunks));
    let (g0, b0) = (rand_vec(83, c), rand_vec(84, c));
    let bits = |t: &engine::Tensor| read(gpu, t).iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    for accumulate in [false, true] {
        let (sums, dg, db) = (stale(gpu, &[2 * c]), up(gpu, &[c], &g0), up(gpu, &[c], &b0));
        let fused = reduce::combine_bn_grads(
            gpu,
            (&pg, &pb),
            (n, c, chunks),
            &sums,
            (&dg, &db),
            accumulate,
        );
        assert!(fused, "a small batch norm's sums fit one pass");
        let (sums4, dg4, db4) = (stale(gpu, &[2 * c]), up(gpu, &[c], &g0), up(gpu, &[c], &b0));
        for (part, offset, grad) in [(&pg, 0, &dg4), (&pb, c, &db4)] {
            reduce::combine(gpu, part, (n, c, chunks), 1.0, &sums4, offset, false).unwrap();
            reduce::combine(gpu, part, (n, c, chunks), 1.0, grad, 0, accumulate).unwrap();
        }
        assert_eq!(bits(&sums), bits(&sums4), "sums, accumulate {accumulate}");
        assert_eq!(bits(&dg), bits(&dg4), "dgamma, accumulate {accumulate}");
        assert_eq!(bits(&db), bits(&db4), "dbeta, accumulate {accumulate}");
        // And against the f64 sums of the partials.
        let (pg64, pb64) = (to64(&read(gpu, &pg)), to64(&read(gpu, &pb)));
        let total = |p: &[f64], ch: usize| -> f64 {
            (0..n)
                .map(|i| p[(i * c + ch) * chunks..][..chunks].iter().sum::<f64>())
                .sum()
        };
        let want: Vec<f64> = (0..c)
            .map(|ch| total(&pg64, ch))
            .chain((0..c).map(|ch| total(&pb64, ch)))
            .collect();
        assert_close("bn grad sums", &read(gpu, &sums), &want, 1e-5, 1e-5);
    }
    // A device whose bindings cannot hold the partials: nothing recorded.
    let tiny = tiny_gpu();
    let big = up(tiny, &[4 * 300 * 2], &vec![1.0; 4 * 300 * 2]);
    let (s, g, b) = (
        tiny.zeros(&[600]).unwrap(),
        tiny.zeros(&[300]).unwrap(),
        tiny.zeros(&[300]).unwrap(),
    );
    assert!(!reduce::combine_bn_grads(
        tiny,
        (&big, &big),
        (4, 300, 2),
        &s,
        (&g, &b),
        false
    ));
}
