//! Tensors larger than one storage binding: the engine is told the binding
//! limit is tiny (4 KiB = 1024 floats, minus alignment), and every op must
//! still give the CPU reference's numbers by splitting its work.
use crate::common::*;
use engine::ops::batchnorm::{self, BnParams};
use engine::ops::conv::{self, conv_geom, cpu};
use engine::ops::{elementwise, loss, optim, pool, reduce, resize};

#[test]
fn conv_splits_by_image_and_channel() {
    let gpu = tiny_gpu();
    // One image (12 x 12 x 12 = 1728 floats) and the weights (10*12*9 = 1080)
    // exceed a window, so the work splits into channel groups.
    for (n, c, o, h, w, s, d) in [
        (3, 12, 10, 12, 12, 1, 1),
        (2, 12, 20, 12, 11, 2, 1),
        (2, 3, 4, 9, 9, 1, 2),
    ] {
        let tag = format!("tiny conv n{n} c{c} o{o} {h}x{w} s{s} d{d}");
        let (oh, ow, g) = conv_geom(h, w, 3, s, d);
        let x = rand_vec(1, n * c * h * w);
        let wt = rand_vec(2, o * c * 9);
        let b = rand_vec(3, o);
        let dy = rand_vec(4, n * o * oh * ow);
        let (x64, w64, b64, dy64) = (to64(&x), to64(&wt), to64(&b), to64(&dy));
        let (xt, wtt, bt) = (
            up(gpu, &[n, c, h, w], &x),
            up(gpu, &[o, c, 3, 3], &wt),
            up(gpu, &[o], &b),
        );
        let y = read(gpu, &conv::conv2d(gpu, &xt, &wtt, &bt, s, d).unwrap());
        assert_close(
            &tag,
            &y,
            &cpu::conv2d(&x64, (n, c, h, w), &w64, &b64, o, g, (oh, ow)),
            1e-4,
            1e-4,
        );
        let dyt = up(gpu, &[n, o, oh, ow], &dy);
        let dx = read(
            gpu,
            &conv::conv2d_backward_input(gpu, &dyt, &wtt, (h, w), s, d).unwrap(),
        );
        let want = cpu::conv2d_backward_input(&dy64, (n, o, oh, ow), &w64, c, g, (h, w));
        assert_close(&format!("{tag} dx"), &dx, &want, 1e-4, 1e-4);
        let dwt = stale(gpu, &[o, c, 3, 3]);
        conv::conv2d_backward_weight(gpu, &dyt, &xt, &dwt, s, d, false).unwrap();
        let want = cpu::conv2d_backward_weight(&dy64, (n, o, oh, ow), &x64, (c, h, w), g);
        assert_close(&format!("{tag} dw"), &read(gpu, &dwt), &want, 5e-4, 1e-4);
    }
}

#[test]
fn tconv_splits() {
    let gpu = tiny_gpu();
    let (n, c, o, h, w, s) = (2, 20, 6, 6, 6, 2);
    let x = rand_vec(5, n * c * h * w);
    let wt = rand_vec(6, c * o * 16);
    let b = rand_vec(7, o);
    let dy = rand_vec(8, n * o * h * s * w * s);
    let (x64, w64, b64, dy64) = (to64(&x), to64(&wt), to64(&b), to64(&dy));
    let (xt, wtt, bt) = (
        up(gpu, &[n, c, h, w], &x),
        up(gpu, &[c, o, 4, 4], &wt),
        up(gpu, &[o], &b),
    );
    let y = read(gpu, &conv::tconv2d(gpu, &xt, &wtt, &bt, s).unwrap());
    assert_close(
        "tiny tconv",
        &y,
        &cpu::tconv2d(&x64, (n, c, h, w), &w64, &b64, o, s),
        1e-4,
        1e-4,
    );
    let dyt = up(gpu, &[n, o, h * s, w * s], &dy);
    let (wdx, wdw) = cpu::tconv2d_backward(&dy64, &x64, (n, c, h, w), &w64, o, s);
    let dx = read(
        gpu,
        &conv::tconv2d_backward_input(gpu, &dyt, &wtt, s).unwrap(),
    );
    assert_close("tiny tconv dx", &dx, &wdx, 1e-4, 1e-4);
    let dwt = stale(gpu, &[c, o, 4, 4]);
    conv::tconv2d_backward_weight(gpu, &dyt, &xt, &dwt, s, false).unwrap();
    assert_close("tiny tconv dw", &read(gpu, &dwt), &wdw, 5e-4, 1e-4);
}

#[test]
fn pool_resize_bn_elementwise_loss_adam_split() {
    let gpu = tiny_gpu();
    let (n, c, h, w) = (3, 6, 16, 20);
    let len = n * c * h * w; // 5760 floats, ~6 windows
    let x = rand_vec(9, len);
    let x64 = to64(&x);
    let xt = up(gpu, &[n, c, h, w], &x);

    let y = read(gpu, &pool::maxpool2d(gpu, &xt, 3, 2).unwrap());
    assert_close(
        "tiny maxpool",
        &y,
        &pool::cpu::maxpool2d(&x64, (n, c, h, w), 3, 2).0,
        0.0,
        0.0,
    );
    let (oh, ow, _, _) = pool::pool_geom(h, w, 3, 2);
    let dy = rand_vec(10, n * c * oh * ow);
    let dx = read(
        gpu,
        &pool::maxpool2d_backward(gpu, &xt, &up(gpu, &[n, c, oh, ow], &dy), 3, 2).unwrap(),
    );
    assert_close(
        "tiny maxpool dx",
        &dx,
        &pool::cpu::maxpool2d_backward(&x64, &to64(&dy), (n, c, h, w), 3, 2),
        1e-6,
        1e-6,
    );
    let (ya, arg) = pool::maxpool2d_with_argmax(gpu, &xt, 3, 2).unwrap();
    assert_bits_eq("tiny maxpool with argmax", &read(gpu, &ya), &y);
    let dyt = up(gpu, &[n, c, oh, ow], &dy);
    let dxa = pool::maxpool2d_backward_from(gpu, &[n, c, h, w], (&arg, &dyt), 3, 2).unwrap();
    assert_bits_eq("tiny maxpool dx from argmax", &read(gpu, &dxa), &dx);

    let r = read(
        gpu,
        &resize::resize(gpu, &xt, 24, 30, resize::Mode::Bilinear).unwrap(),
    );
    let want = resize::cpu::resize(&x64, n * c, (h, w), (24, 30), resize::Mode::Bilinear);
    assert_close("tiny resize", &r, &want, 1e-5, 1e-5);
    // An upscale x2 from rows of 8: the forward and backward passes in
    // quads, 18 planes over ~5 windows.
    let small = rand_vec(11, n * c * 8 * 8);
    let st = up(gpu, &[n, c, 8, 8], &small);
    let bilinear = resize::Mode::Bilinear;
    let r = read(gpu, &resize::resize(gpu, &st, 16, 16, bilinear).unwrap());
    let want = resize::cpu::resize(&to64(&small), n * c, (8, 8), (16, 16), bilinear);
    assert_close("tiny resize x2", &r, &want, 1e-5, 1e-5);
    let dy = rand_vec(12, n * c * 16 * 16);
    let dyt = up(gpu, &[n, c, 16, 16], &dy);
    let dx = read(
        gpu,
        &resize::resize_backward(gpu, &dyt, 8, 8, bilinear).unwrap(),
    );
    let want = resize::cpu::resize_backward(&to64(&dy), n * c, (8, 8), (16, 16), bilinear);
    assert_close("tiny resize x2 dx", &dx, &want, 1e-4, 1e-5);

    let one = up(gpu, &[c], &[1.0; 6]);
    let zero = up(gpu, &[c], &[0.0; 6]);
    let rv = up(gpu, &[c], &[1.0; 6]);
    let p = BnParams {
        gamma: &one,
        beta: &zero,
        running_mean: &zero,
        running_var: &rv,
    };
    let (bn, _) = batchnorm::batchnorm_train(gpu, &xt, &p, None).unwrap();
    let want = batchnorm::cpu::batchnorm_train(&x64, (n, c, h * w), &[1.0; 6], &[0.0; 6]).0;
    assert_close("tiny batchnorm", &read(gpu, &bn), &want, 1e-4, 1e-4);

    let a = read(gpu, &elementwise::add_relu(gpu, &xt, &xt).unwrap());
    let want: Vec<f64> = x64.iter().map(|v| (2.0 * v).max(0.0)).collect();
    assert_close("tiny add_relu", &a, &want, 1e-6, 1e-6);

    let t: Vec<f32> = (0..len).map(|i| (i % 5 == 0) as u8 as f32).collect();
    let tt = up(gpu, &[n, c, h, w], &t);
    let l = read(gpu, &loss::bce_with_logits(gpu, &xt, &tt, 15.0).unwrap());
    assert_close(
        "tiny bce",
        &l,
        &[loss::cpu::bce_with_logits(&x64, &to64(&t), 15.0)],
        1e-6,
        1e-5,
    );
    let (fl, fdz) = loss::bce_with_logits_and_grad(gpu, &xt, &tt, 15.0).unwrap();
    assert_bits_eq("tiny fused bce", &read(gpu, &fl), &l);
    let dz = loss::bce_with_logits_backward(gpu, &xt, &tt, 15.0).unwrap();
    assert_bits_eq("tiny fused bce grad", &read(gpu, &fdz), &read(gpu, &dz));

    let s = read(gpu, &reduce::sum(gpu, &xt, false, 1.0).unwrap());
    assert_close("tiny sum", &s, &[x64.iter().sum()], 1e-3, 1e-5);

    let g = rand_vec(11, len);
    let (m, v) = (gpu.zeros(&[len]).unwrap(), gpu.zeros(&[len]).unwrap());
    let pt = up(gpu, &[len], &x);
    optim::adam_step(
        gpu,
        &optim::Adam::default(),
        1,
        &pt,
        &up(gpu, &[len], &g),
        &m,
        &v,
        0.0,
        1.0,
    )
    .unwrap();
    let (mut pc, mut mc, mut vc) = (x64.clone(), vec![0.0; len], vec![0.0; len]);
    optim::cpu::adam_step(
        &optim::Adam::default(),
        1,
        &mut pc,
        &to64(&g),
        &mut mc,
        &mut vc,
        0.0,
        1.0,
    );
    assert_close("tiny adam", &read(gpu, &pt), &pc, 1e-6, 1e-6);
}

#[test]
fn a_plane_larger_than_a_binding_is_a_clear_error() {
    let gpu = tiny_gpu();
    let x = gpu.zeros(&[1, 1, 40, 40]).unwrap(); // 1600 floats > 1024
    let e = pool::maxpool2d(gpu, &x, 2, 2).unwrap_err().to_string();
    assert!(
        e.starts_with("maxpool2d:") && e.contains("storage binding limit"),
        "{e}"
    );
    let w = gpu.zeros(&[2, 1, 3, 3]).unwrap();
    let b = gpu.zeros(&[2]).unwrap();
    let e = conv::conv2d(gpu, &x, &w, &b, 1, 1).unwrap_err().to_string();
    assert!(
        e.starts_with("conv2d:") && e.contains("storage binding limit"),
        "{e}"
    );
}
