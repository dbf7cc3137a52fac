//! The whole network: gradients against finite differences on a tiny
//! configuration, and checkpoints that round-trip.
mod support;
use engine::graph::{Graph, ParamRef};
use engine::model::{Meta, Model, ModelConfig};
use engine::ops::loss;
use engine::ops::resize::Mode;
use rand::{Rng, SeedableRng};
use support::gpu;

const POS_WEIGHT: f32 = 15.0;

fn batch(n: usize, s: usize, seed: u64) -> (Vec<f32>, Vec<f32>) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let x: Vec<f32> = (0..n * s * s)
        .map(|_| rng.random_range(-0.5..0.5))
        .collect();
    // A bright square lesion in each image, marked in the mask.
    let mut t = vec![0.0; n * s * s];
    for b in 0..n {
        for i in s / 4..s / 2 {
            for j in s / 3..s / 2 + 2 {
                t[(b * s + i) * s + j] = 1.0;
            }
        }
    }
    (x, t)
}

/// Mean loss of the model in training mode (batch statistics).
fn loss_of(model: &Model, x: &[f32], t: &[f32], n: usize, s: usize) -> f64 {
    let gpu = gpu();
    let mut g = Graph::new(gpu, true);
    let xv = g.input(gpu.upload(&[n, 1, s, s], x).unwrap());
    let out = model.forward(&mut g, xv).unwrap();
    let tt = gpu.upload(&[n, 1, s, s], t).unwrap();
    let l = loss::bce_with_logits(gpu, g.value(out), &tt, POS_WEIGHT).unwrap();
    gpu.read(&l).unwrap()[0] as f64
}

#[test]
fn network_gradients_match_finite_differences() {
    let gpu = gpu();
    let (n, s) = (2, 64);
    let cfg = ModelConfig {
        width: 0.125,
        resize: Mode::Bilinear,
    };
    let model = Model::new(gpu, cfg, 7).unwrap();
    let (x, t) = batch(n, s, 1);
    let tt = gpu.upload(&[n, 1, s, s], &t).unwrap();

    model.zero_grads(gpu);
    let mut g = Graph::new(gpu, true);
    g.input_grad = true;
    let xv = g.input(gpu.upload(&[n, 1, s, s], &x).unwrap());
    let out = model.forward(&mut g, xv).unwrap();
    let dz = loss::bce_with_logits_backward(gpu, g.value(out), &tt, POS_WEIGHT).unwrap();
    let dx = gpu
        .read(&g.backward(out, dz).unwrap().expect("input gradient"))
        .unwrap();

    // f32 finite differences through 28 layers with batch norm, relus and
    // max-pools: a step crosses relu kinks and max-pool switches, which
    // moves the difference quotient (measured: up to 35% at a step of 1e-2,
    // 3-15% at 3e-4..1e-3, in either direction, converging on backprop as
    // the step shrinks until f32 noise takes over). So each gradient is
    // compared with central differences at steps 1e-3, 3e-4, 1e-4 and 3e-5 and
    // must be within 10% (+ 2e-3 absolute) of at least one. A wrong backward
    // pass (sign, factor, missing term) matches none.
    let check = |what: String, analytic: f64, loss_at: &dyn Fn(f32) -> f64| {
        let mut fds = Vec::new();
        for eps in [1e-3f32, 3e-4, 1e-4, 3e-5] {
            let fd = (loss_at(eps) - loss_at(-eps)) / (2.0 * eps as f64);
            if (analytic - fd).abs() <= 0.1 * fd.abs().max(analytic.abs()) + 2e-3 {
                return;
            }
            fds.push(fd);
        }
        panic!("{what}: backprop {analytic:e} vs finite differences {fds:?}");
    };
    let mut checked = 0;
    for name in [
        "logits.weight",
        "logits.bias",
        "up_conv9.bn.weight",
        "upsample_5.weight",
        "upsample_4.bias",
        "up_conv6.weight",
        "fc_1.weight",
        "conv5_3.bn.bias",
        "conv5_3.bias",
        "conv4_0.weight",
        "conv2_3.weight",
        "pool0_1.bn.weight",
        "conv0_1.weight",
        "up_conv2.bias",
    ] {
        let p = model.get(name).unwrap();
        let grad = gpu.read(&p.train.as_ref().unwrap().grad).unwrap();
        let orig = gpu.read(&p.value).unwrap();
        // The element with the largest gradient: well above f32 noise.
        let (i, _) = grad
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.abs().total_cmp(&b.1.abs()))
            .unwrap();
        let loss_at = |step: f32| {
            let mut v = orig.clone();
            v[i] += step;
            gpu.write(&p.value, &v);
            loss_of(&model, &x, &t, n, s)
        };
        check(format!("{name}[{i}]"), grad[i] as f64, &loss_at);
        gpu.write(&p.value, &orig);
        checked += 1;
    }
    // The input gradient at the pixels where it is largest.
    let mut order: Vec<usize> = (0..dx.len()).collect();
    order.sort_by(|&a, &b| dx[b].abs().total_cmp(&dx[a].abs()));
    for &i in &order[..3] {
        let loss_at = |step: f32| {
            let mut xp = x.clone();
            xp[i] += step;
            loss_of(&model, &xp, &t, n, s)
        };
        check(format!("input[{i}]"), dx[i] as f64, &loss_at);
        checked += 1;
    }
    assert_eq!(checked, 17);

    // A bias just before batch norm moves nothing the loss sees (batch
    // norm subtracts each channel's batch mean): its gradient is exactly 0,
    // which the finite differences above confirm for two. The others are
    // not.
    let bias_grad = |layer: &str| {
        let p = model.get(&format!("{layer}.bias")).unwrap();
        gpu.read(&p.train.as_ref().unwrap().grad).unwrap()
    };
    for name in ["conv0_1", "conv2_3", "conv5_0", "fc_1", "up_conv9"] {
        let db = bias_grad(name);
        assert!(db.iter().all(|&v| v == 0.0), "{name}.bias: {db:?}");
    }
    for name in ["upsample_4", "upsample_5", "logits"] {
        let db = bias_grad(name);
        assert!(db.iter().any(|&v| v != 0.0), "{name}.bias: {db:?}");
    }
}

#[test]
fn network_shapes_for_odd_sizes_and_parameter_count() {
    let gpu = gpu();
    let full = Model::new(gpu, ModelConfig::default(), 1).unwrap();
    // docs/MODEL.md: about 11.5 M parameters at width 1.
    let count = full.parameter_count();
    assert!(
        (11_000_000..12_000_000).contains(&count),
        "{count} parameters"
    );
    let model = Model::new(
        gpu,
        ModelConfig {
            width: 0.125,
            resize: Mode::Nearest,
        },
        1,
    )
    .unwrap();
    for (h, w) in [(37, 45), (64, 64), (33, 96)] {
        let mut g = Graph::new(gpu, false);
        let xv = g.input(gpu.zeros(&[1, 1, h, w]).unwrap());
        let out = model.forward(&mut g, xv).unwrap();
        assert_eq!(g.value(out).shape(), [1, 1, h, w]);
    }
}

#[test]
fn checkpoint_round_trips() {
    let gpu = gpu();
    let cfg = ModelConfig {
        width: 0.125,
        resize: Mode::Bilinear,
    };
    let model = Model::new(gpu, cfg, 3).unwrap();
    let dir = std::env::temp_dir().join(format!("engine-ckpt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("model.safetensors");
    let meta = Meta {
        pos_weight: 15.0,
        step: 42,
        epoch: 3,
        ..Default::default()
    };
    model.save(gpu, &path, &meta, true).unwrap();
    let (loaded, lmeta) = Model::load(gpu, &path).unwrap();
    assert_eq!(lmeta, meta);
    assert_eq!(loaded.cfg, cfg);
    let (x, _) = batch(1, 48, 5);
    let infer = |m: &Model| {
        let mut g = Graph::new(gpu, false);
        let xv = g.input(gpu.upload(&[1, 1, 48, 48], &x).unwrap());
        let out = m.forward(&mut g, xv).unwrap();
        gpu.read(g.value(out)).unwrap()
    };
    let (a, b) = (infer(&model), infer(&loaded));
    assert!(
        a.iter().zip(&b).all(|(p, q)| p.to_bits() == q.to_bits()),
        "same outputs after load"
    );
    // A corrupt file is a clear error naming it.
    std::fs::write(dir.join("bad.safetensors"), b"not a checkpoint").unwrap();
    let e = Model::load(gpu, &dir.join("bad.safetensors"))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("bad.safetensors"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn folded_inference_matches_the_tape_in_eval_mode() {
    // Batch norm folded into the convs, ReLU and the residual add fused
    // into their stores: the same logits as the unfused tape (running
    // statistics), up to f32 rounding. Non-trivial statistics so that the
    // fold matters.
    let gpu = gpu();
    let cfg = ModelConfig {
        width: 0.25,
        resize: Mode::Bilinear,
    };
    let model = Model::new(gpu, cfg, 5).unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
    for p in &model.params {
        let n = p.value.numel();
        let vals: Option<Vec<f32>> = if p.name.ends_with("running_var") {
            Some((0..n).map(|_| rng.random_range(0.5..2.0)).collect())
        } else if p.name.ends_with("running_mean") || p.name.ends_with("bn.bias") {
            Some((0..n).map(|_| rng.random_range(-0.3..0.3)).collect())
        } else if p.name.ends_with("bn.weight") {
            Some((0..n).map(|_| rng.random_range(0.5..1.5)).collect())
        } else {
            None
        };
        if let Some(v) = vals {
            gpu.write(&p.value, &v);
        }
    }
    let (x, _) = batch(2, 64, 3);
    let mut g = Graph::new(gpu, false);
    let xv = g.input(gpu.upload(&[2, 1, 64, 64], &x).unwrap());
    let out = model.forward(&mut g, xv).unwrap();
    let want = gpu.read(g.value(out)).unwrap();
    let xt = gpu.upload(&[2, 1, 64, 64], &x).unwrap();
    let got = gpu.read(&model.forward_folded(gpu, xt).unwrap()).unwrap();
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    let worst = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(
        scale > 0.1,
        "logits should not be trivial (max |logit| {scale})"
    );
    assert!(
        worst <= 1e-4 * scale.max(1.0),
        "folded vs tape: max |diff| {worst} (scale {scale})"
    );
    // Folded once at load time (`freeze`, as `engine infer` does): the same
    // bits, and the frozen model refuses training.
    let mut model = model;
    model.freeze(gpu).unwrap();
    let xt = gpu.upload(&[2, 1, 64, 64], &x).unwrap();
    let frozen = gpu.read(&model.forward_folded(gpu, xt).unwrap()).unwrap();
    assert_eq!(frozen, got, "frozen and per-call folding differ");
    let mut g = Graph::new(gpu, true);
    let xv = g.input(gpu.upload(&[2, 1, 64, 64], &x).unwrap());
    let e = model.forward(&mut g, xv).unwrap_err().to_string();
    assert!(e.contains("frozen"), "{e}");
}

#[test]
fn a_frozen_model_relays_its_weights_once_per_shape() {
    // A convolution re-lays its weights before each run; a frozen model's
    // are frozen tensors, so the re-laid copies are kept and reused. Its
    // own device, so that the dispatch counts are this test's alone.
    let gpu = &engine::gpu::Gpu::new(None).unwrap();
    let cfg = ModelConfig {
        width: 0.125,
        resize: Mode::Bilinear,
    };
    let mut model = Model::new(gpu, cfg, 3).unwrap();
    // Widths of two size classes: other tiles, the same bits.
    let sizes = [(64, 64), (40, 24)];
    let run = |m: &Model, (h, w): (usize, usize)| {
        let x: Vec<f32> = (0..h * w)
            .map(|i| ((i * 37) % 101) as f32 / 50.0 - 1.0)
            .collect();
        let before = gpu.counters().0;
        let xt = gpu.upload(&[1, 1, h, w], &x).unwrap();
        let out = gpu.read(&m.forward_folded(gpu, xt).unwrap()).unwrap();
        (out, gpu.counters().0 - before)
    };
    let per_call: Vec<_> = sizes.iter().map(|&s| run(&model, s)).collect();
    model.freeze(gpu).unwrap();
    for (&size, (want, per_call_dispatches)) in sizes.iter().zip(&per_call) {
        let (first, first_dispatches) = run(&model, size);
        let (again, again_dispatches) = run(&model, size);
        assert_eq!(&first, want, "{size:?}: frozen and per-call weights differ");
        assert_eq!(&again, want, "{size:?}: kept weights differ");
        assert!(
            first_dispatches < *per_call_dispatches,
            "{size:?}: the fold still ran per call ({first_dispatches} >= {per_call_dispatches})"
        );
        // The first size re-lays every weight once; the second needs new
        // copies only where its tiles take other channel groups.
        let kept = if size == sizes[0] {
            again_dispatches < first_dispatches
        } else {
            again_dispatches <= first_dispatches
        };
        assert!(
            kept,
            "{size:?}: weights re-laid again ({again_dispatches} vs {first_dispatches})"
        );
    }
    // Back to the first size: its copies are still kept.
    let (back, back_dispatches) = run(&model, sizes[0]);
    assert_eq!(back, per_call[0].0);
    assert_eq!(back_dispatches, run(&model, sizes[0]).1);
}

#[test]
fn the_graph_frees_each_value_after_its_last_use() {
    let gpu = gpu();
    let cfg = ModelConfig {
        width: 0.125,
        resize: Mode::Bilinear,
    };
    let model = Model::new(gpu, cfg, 1).unwrap();
    // Inference: after the forward only the output holds a tensor (the
    // input too is freed once conv0_1 has read it).
    let mut g = Graph::new(gpu, false);
    let xv = g.input(gpu.zeros(&[1, 1, 64, 64]).unwrap());
    let out = model.forward(&mut g, xv).unwrap();
    assert_eq!(g.live(), 1);
    assert_eq!(g.try_value(out).unwrap().shape(), [1, 1, 64, 64]);
    let e = g.try_value(xv).err().unwrap().to_string();
    assert!(e.contains("freed"), "{e}");

    // A value read by one op more than announced is an error, both when it
    // is gone (inference) and when backward still keeps it (training).
    let x: Vec<f32> = (0..16).map(|i| i as f32).collect();
    let mut g = Graph::new(gpu, false);
    let a = g.input(gpu.upload(&[1, 1, 4, 4], &x).unwrap());
    g.share(a).unwrap();
    g.maxpool(a, 2, 2).unwrap();
    g.maxpool(a, 2, 2).unwrap();
    assert_eq!(g.live(), 2, "a is freed after its second read");
    let e = g.maxpool(a, 2, 2).err().unwrap().to_string();
    assert!(e.contains("freed"), "{e}");
    // A conv keeps its input for its weight gradient.
    let (w, b) = (gpu.zeros(&[1, 1, 3, 3]).unwrap(), gpu.zeros(&[1]).unwrap());
    let (dw, db) = (gpu.zeros(&[1, 1, 3, 3]).unwrap(), gpu.zeros(&[1]).unwrap());
    let w = ParamRef {
        value: &w,
        grad: &dw,
    };
    let b = ParamRef {
        value: &b,
        grad: &db,
    };
    let mut g = Graph::new(gpu, true);
    let a = g.input(gpu.upload(&[1, 1, 4, 4], &x).unwrap());
    g.conv(a, &w, &b, 1, 1).unwrap();
    let e = g.maxpool(a, 2, 2).err().unwrap().to_string();
    assert!(e.contains("more ops than announced"), "{e}");
}

#[test]
fn the_input_gets_a_gradient_only_when_asked() {
    let gpu = gpu();
    let x: Vec<f32> = (0..16).map(|i| i as f32).collect();
    for input_grad in [false, true] {
        let mut g = Graph::new(gpu, true);
        g.input_grad = input_grad;
        let a = g.input(gpu.upload(&[1, 1, 4, 4], &x).unwrap());
        let y = g.maxpool(a, 2, 2).unwrap();
        let dy = gpu.upload(&[1, 1, 2, 2], &[1.0, 2.0, 3.0, 4.0]).unwrap();
        let dx = g.backward(y, dy).unwrap();
        match (input_grad, dx) {
            (false, None) => {}
            (true, Some(dx)) => {
                // Each 2x2 window's maximum is its bottom-right element.
                let mut want = vec![0.0; 16];
                (want[5], want[7], want[13], want[15]) = (1.0, 2.0, 3.0, 4.0);
                assert_eq!(gpu.read(&dx).unwrap(), want);
            }
            (_, dx) => panic!("input_grad {input_grad}: gradient {:?}", dx.is_some()),
        }
    }
}

#[test]
fn a_tensor_name_the_model_lacks_is_an_error_naming_it() {
    let gpu = gpu();
    let cfg = ModelConfig {
        width: 0.125,
        resize: Mode::Bilinear,
    };
    let model = Model::new(gpu, cfg, 1).unwrap();
    assert_eq!(
        model.get("fc_1.weight").unwrap().value.shape(),
        [32, 64, 1, 1]
    );
    let e = model.get("fc_2.weight").err().unwrap().to_string();
    assert!(e.contains("'fc_2.weight'"), "{e}");
}

#[test]
fn a_dry_run_lists_the_kernels_a_forward_needs_and_computes_nothing() {
    // A device of its own: its pipeline cache starts empty.
    let gpu = &engine::Gpu::new(None).unwrap();
    let cfg = ModelConfig {
        width: 0.125,
        resize: Mode::Bilinear,
    };
    let model = Model::new(gpu, cfg, 3).unwrap();
    let (h, w) = (64, 96);
    let listed = engine_core::infer::kernels_for(gpu, &model, &[(h, w)]).unwrap();
    assert!(listed.len() >= 5, "{} kernels", listed.len());
    let mut keys: Vec<_> = listed.iter().map(|k| k.key.clone()).collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), listed.len(), "a kernel listed twice");
    assert!(
        listed
            .iter()
            .all(|k| !k.params.is_empty() && k.wgsl.contains(&k.entry))
    );
    // Nothing was dispatched: a tensor an in-place op would change is
    // unchanged after its dry run.
    let y = gpu.upload(&[5], &[7.0; 5]).unwrap();
    let a = gpu.upload(&[5], &[1.0; 5]).unwrap();
    let (done, _) = gpu.dry_run(|| engine::ops::elementwise::axpy(gpu, 2.0, &a, &y));
    done.unwrap();
    assert_eq!(gpu.read(&y).unwrap(), vec![7.0; 5]);
    // The real forward creates no kernel the dry run missed, and gives the
    // maps of a device that never ran a dry run.
    let x: Vec<f32> = (0..h * w)
        .map(|i| ((i * 7919) % 255) as f32 / 255.0 - 0.5)
        .collect();
    let got = engine::infer::predict(gpu, &model, &x, 1, h, w).unwrap();
    assert!(
        engine_core::infer::kernels_for(gpu, &model, &[(h, w)])
            .unwrap()
            .is_empty()
    );
    let other = support::gpu();
    let model2 = Model::new(other, cfg, 3).unwrap();
    let want = engine::infer::predict(other, &model2, &x, 1, h, w).unwrap();
    assert_eq!(got, want);
}
