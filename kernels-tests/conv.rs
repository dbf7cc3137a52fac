use crate::common::*;
use engine::Gpu;
use engine::ops::conv::{self, conv_geom, cpu, tconv_geom};
use engine::ops::reduce::{self, cpu as rcpu};

/// Tolerances: f32 sums of up to C*k*k products of values in [-1, 1];
/// absolute 1e-4 covers the rounding of ~600-term sums with margin.
const ATOL: f64 = 1e-4;
const RTOL: f64 = 1e-4;

struct Case {
    n: usize,
    c: usize,
    o: usize,
    h: usize,
    w: usize,
    k: usize,
    s: usize,
    d: usize,
}

fn check_conv(case: Case, seed: u64) {
    check_conv_on(gpu(), case, seed);
}

fn check_conv_on(gpu: &Gpu, case: Case, seed: u64) {
    let Case {
        n,
        c,
        o,
        h,
        w,
        k,
        s,
        d,
    } = case;
    let tag = format!("conv n{n} c{c} o{o} {h}x{w} k{k} s{s} d{d}");
    let (oh, ow, g) = conv_geom(h, w, k, s, d);
    let x = rand_vec(seed, n * c * h * w);
    let wt = rand_vec(seed + 1, o * c * k * k);
    let b = rand_vec(seed + 2, o);
    let dy = rand_vec(seed + 3, n * o * oh * ow);
    let (x64, w64, b64, dy64) = (to64(&x), to64(&wt), to64(&b), to64(&dy));

    let xt = up(gpu, &[n, c, h, w], &x);
    let wtt = up(gpu, &[o, c, k, k], &wt);
    let bt = up(gpu, &[o], &b);
    let y = conv::conv2d(gpu, &xt, &wtt, &bt, s, d).unwrap();
    assert_eq!(y.shape(), [n, o, oh, ow]);
    let want = cpu::conv2d(&x64, (n, c, h, w), &w64, &b64, o, g, (oh, ow));
    assert_close(&format!("{tag} forward"), &read(gpu, &y), &want, ATOL, RTOL);

    let dyt = up(gpu, &[n, o, oh, ow], &dy);
    let dx = read(
        gpu,
        &conv::conv2d_backward_input(gpu, &dyt, &wtt, (h, w), s, d).unwrap(),
    );
    let want = cpu::conv2d_backward_input(&dy64, (n, o, oh, ow), &w64, c, g, (h, w));
    assert_close(&format!("{tag} dx"), &dx, &want, ATOL, RTOL);
    let loss_x = |xv: &[f64]| {
        dot(
            &dy64,
            &cpu::conv2d(xv, (n, c, h, w), &w64, &b64, o, g, (oh, ow)),
        )
    };
    assert_fd(&format!("{tag} dx"), loss_x, &x64, &dx, 40, 1e-3);

    let dwt = stale(gpu, &[o, c, k, k]);
    conv::conv2d_backward_weight(gpu, &dyt, &xt, &dwt, s, d, false).unwrap();
    let dw = read(gpu, &dwt);
    let want = cpu::conv2d_backward_weight(&dy64, (n, o, oh, ow), &x64, (c, h, w), g);
    // dw sums n*oh*ow products: allow for the longer sums.
    assert_close(&format!("{tag} dw"), &dw, &want, 5e-4, RTOL);
    let loss_w = |wv: &[f64]| {
        dot(
            &dy64,
            &cpu::conv2d(&x64, (n, c, h, w), wv, &b64, o, g, (oh, ow)),
        )
    };
    assert_fd(&format!("{tag} dw"), loss_w, &w64, &dw, 40, 1e-3);

    // Accumulation adds a second gradient onto the first.
    conv::conv2d_backward_weight(gpu, &dyt, &xt, &dwt, s, d, true).unwrap();
    let twice: Vec<f64> = want.iter().map(|v| 2.0 * v).collect();
    assert_close(
        &format!("{tag} dw accumulated"),
        &read(gpu, &dwt),
        &twice,
        1e-3,
        RTOL,
    );

    let dbt = gpu.empty(&[o]).unwrap();
    reduce::channel_sum(gpu, &dyt, &dbt, false).unwrap();
    let db = read(gpu, &dbt);
    assert_close(
        &format!("{tag} db"),
        &db,
        &rcpu::channel_sum(&dy64, (n, o, oh * ow)),
        5e-4,
        RTOL,
    );
    let loss_b = |bv: &[f64]| {
        dot(
            &dy64,
            &cpu::conv2d(&x64, (n, c, h, w), &w64, bv, o, g, (oh, ow)),
        )
    };
    assert_fd(&format!("{tag} db"), loss_b, &b64, &db, 40, 1e-3);
}

#[test]
fn conv3x3_stride2_one_input_channel_odd_size() {
    check_conv(
        Case {
            n: 2,
            c: 1,
            o: 32,
            h: 17,
            w: 13,
            k: 3,
            s: 2,
            d: 1,
        },
        10,
    );
}

#[test]
fn conv3x3_stride2_even_size_pads_bottom_right() {
    let (_, _, g) = conv_geom(8, 8, 3, 2, 1);
    assert_eq!(
        (g.pad_t, g.pad_l),
        (0, 0),
        "docs/MODEL.md: 3x3/s2 on an even input pads 0 top/left"
    );
    check_conv(
        Case {
            n: 2,
            c: 3,
            o: 9,
            h: 8,
            w: 10,
            k: 3,
            s: 2,
            d: 1,
        },
        20,
    );
}

#[test]
fn conv3x3_48_channels() {
    check_conv(
        Case {
            n: 1,
            c: 48,
            o: 48,
            h: 10,
            w: 9,
            k: 3,
            s: 1,
            d: 1,
        },
        30,
    );
}

#[test]
fn conv3x3_dilation2() {
    let (_, _, g) = conv_geom(9, 9, 3, 1, 2);
    assert_eq!(
        (g.pad_t, g.pad_l),
        (2, 2),
        "docs/MODEL.md: dilation 2 pads 2 on each side"
    );
    check_conv(
        Case {
            n: 2,
            c: 5,
            o: 11,
            h: 9,
            w: 10,
            k: 3,
            s: 1,
            d: 2,
        },
        40,
    );
}

#[test]
fn rows_of_whole_vec4s_read_with_borders() {
    // In a long run, rows of whole vec4s read from storage: the direct
    // kernels read the source itself and select zeros outside it (no
    // padded copy), with the window's first column 3 (pad 1, 2 with
    // dilation) into a vec4 and rows above and below; odd heights, a
    // partly masked last tile; the 4x4 transposed passes' phases start
    // at other columns.
    let gpu = Gpu::new(None).expect("a GPU adapter");
    gpu.variants().set_long_run(true);
    gpu.set_texel_operands(false);
    check_tconv_on(&gpu, (2, 3, 5, 5, 8, 2), 130);
    check_tconv_on(&gpu, (1, 4, 3, 6, 12, 1), 140);
    for (i, (s, d)) in [(1, 1), (2, 1), (1, 2)].into_iter().enumerate() {
        let case = Case {
            n: 2,
            c: 3,
            o: 5,
            h: 7,
            w: 12,
            k: 3,
            s,
            d,
        };
        check_conv_on(&gpu, case, 90 + 10 * i as u64);
    }
}

#[test]
fn weight_gradients_read_the_source_with_borders() {
    // Where the weight gradient reads storage as vec4s over rows laid out
    // as rows (32 columns or more, or stride 2), it reads the source
    // itself with zeros selected outside it: pads of 1 and 2 (first
    // columns 3 and 2 into a vec4), none (stride 2 on an even size, 1x1),
    // odd heights, and the 4x4 transposed passes (pad 1 of a 2x and a 1x
    // upscale), against the reference and finite differences.
    let cases = [
        (1, 1, 3, 32, 5),
        (2, 1, 3, 64, 7),
        (1, 2, 3, 36, 5),
        (1, 1, 1, 32, 3),
    ];
    for (i, (s, d, k, w, h)) in cases.into_iter().enumerate() {
        let case = Case {
            n: 2,
            c: 3,
            o: 5,
            h,
            w,
            k,
            s,
            d,
        };
        let gpu = bordered_wgrad_gpu(&format!("conv k{k} s{s} d{d} {h}x{w}"), &|gpu| {
            let (oh, ow, _) = conv_geom(h, w, k, s, d);
            let xt = up(gpu, &[2, 3, h, w], &vec![0.0; 6 * h * w]);
            let dyt = up(gpu, &[2, 5, oh, ow], &vec![0.0; 10 * oh * ow]);
            let dwt = stale(gpu, &[5, 3, k, k]);
            conv::conv2d_backward_weight(gpu, &dyt, &xt, &dwt, s, d, false)
        });
        check_conv_on(&gpu, case, 200 + 10 * i as u64);
    }
    for (s, w) in [(2, 8), (1, 32)] {
        let gpu = bordered_wgrad_gpu(&format!("tconv s{s} width {w}"), &|gpu| {
            let xt = up(gpu, &[1, 4, 3, w], &vec![0.0; 12 * w]);
            let dyt = up(gpu, &[1, 6, 3 * s, w * s], &vec![0.0; 18 * s * s * w]);
            let dwt = stale(gpu, &[4, 6, 4, 4]);
            conv::tconv2d_backward_weight(gpu, &dyt, &xt, &dwt, s, false)
        });
        check_tconv_on(&gpu, (1, 4, 3, 6, w, s), 260 + w as u64);
    }
}

/// A device reading storage (no texels) whose weight-gradient kernels for
/// `pass` (dry run) include a bordered one.
fn bordered_wgrad_gpu(tag: &str, pass: &dyn Fn(&Gpu) -> engine::Result<()>) -> Gpu {
    let gpu = Gpu::new(None).expect("a GPU adapter");
    gpu.set_texel_operands(false);
    let (done, kernels) = gpu.dry_run(|| pass(&gpu));
    done.unwrap();
    let keys: Vec<&String> = kernels.iter().map(|k| &k.key).collect();
    assert!(
        keys.iter()
            .any(|k| k.starts_with("wgrad") && k.contains(" e")),
        "{tag}: no bordered weight-gradient kernel among {keys:?}"
    );
    gpu
}

#[test]
fn conv1x1_batch3() {
    check_conv(
        Case {
            n: 3,
            c: 7,
            o: 3,
            h: 6,
            w: 7,
            k: 1,
            s: 1,
            d: 1,
        },
        50,
    );
}

#[test]
fn conv3x3_many_input_channels_split_for_the_loop_budget() {
    // 320 summed channels x 150 loop iterations each exceed the budget, so
    // the summed channels go in accumulating groups (as for conv5: 512).
    check_conv(
        Case {
            n: 1,
            c: 320,
            o: 9,
            h: 5,
            w: 6,
            k: 3,
            s: 1,
            d: 2,
        },
        65,
    );
}

#[test]
fn conv_wide_rows_split_weight_gradient_chunks() {
    check_conv(
        Case {
            n: 2,
            c: 2,
            o: 3,
            h: 9,
            w: 210,
            k: 3,
            s: 1,
            d: 1,
        },
        66,
    );
}

#[test]
fn conv3x3_weight_gradient_over_several_slabs_per_dispatch() {
    // 16 gradient channels of 64 columns: 16 rows per 64 KiB slab, 112
    // rows in 7 slabs, read 4 per dispatch on CPU adapters (a dispatch of
    // 4, then one of 3 whose fourth binding runs no row).
    check_conv(
        Case {
            n: 2,
            c: 5,
            o: 16,
            h: 56,
            w: 64,
            k: 3,
            s: 1,
            d: 1,
        },
        67,
    );
}

#[test]
fn conv3x3_larger_than_a_workgroup() {
    check_conv(
        Case {
            n: 2,
            c: 4,
            o: 12,
            h: 23,
            w: 29,
            k: 3,
            s: 1,
            d: 1,
        },
        60,
    );
}

fn check_tconv(n: usize, c: usize, o: usize, h: usize, w: usize, s: usize, seed: u64) {
    check_tconv_on(gpu(), (n, c, o, h, w, s), seed);
}

fn check_tconv_on(
    gpu: &Gpu,
    (n, c, o, h, w, s): (usize, usize, usize, usize, usize, usize),
    seed: u64,
) {
    let tag = format!("tconv n{n} c{c} o{o} {h}x{w} s{s}");
    let x = rand_vec(seed, n * c * h * w);
    let wt = rand_vec(seed + 1, c * o * 16);
    let b = rand_vec(seed + 2, o);
    let dy = rand_vec(seed + 3, n * o * h * s * w * s);
    let (x64, w64, b64, dy64) = (to64(&x), to64(&wt), to64(&b), to64(&dy));
    let xt = up(gpu, &[n, c, h, w], &x);
    let wtt = up(gpu, &[c, o, 4, 4], &wt);
    let bt = up(gpu, &[o], &b);
    let y = conv::tconv2d(gpu, &xt, &wtt, &bt, s).unwrap();
    assert_eq!(y.shape(), [n, o, h * s, w * s]);
    let want = cpu::tconv2d(&x64, (n, c, h, w), &w64, &b64, o, s);
    assert_close(&format!("{tag} forward"), &read(gpu, &y), &want, ATOL, RTOL);

    let dyt = up(gpu, &[n, o, h * s, w * s], &dy);
    let (want_dx, want_dw) = cpu::tconv2d_backward(&dy64, &x64, (n, c, h, w), &w64, o, s);
    let dx = read(
        gpu,
        &conv::tconv2d_backward_input(gpu, &dyt, &wtt, s).unwrap(),
    );
    assert_close(&format!("{tag} dx"), &dx, &want_dx, ATOL, RTOL);
    let loss_x = |xv: &[f64]| dot(&dy64, &cpu::tconv2d(xv, (n, c, h, w), &w64, &b64, o, s));
    assert_fd(&format!("{tag} dx"), loss_x, &x64, &dx, 40, 1e-3);

    let dwt = stale(gpu, &[c, o, 4, 4]);
    conv::tconv2d_backward_weight(gpu, &dyt, &xt, &dwt, s, false).unwrap();
    let dw = read(gpu, &dwt);
    assert_close(&format!("{tag} dw"), &dw, &want_dw, 5e-4, RTOL);
    let loss_w = |wv: &[f64]| dot(&dy64, &cpu::tconv2d(&x64, (n, c, h, w), wv, &b64, o, s));
    assert_fd(&format!("{tag} dw"), loss_w, &w64, &dw, 40, 1e-3);
}

#[test]
fn tconv4x4_stride2() {
    assert_eq!(tconv_geom(2).pad_t, 1);
    check_tconv(2, 3, 5, 5, 6, 2, 70);
}

#[test]
fn tconv4x4_stride1() {
    check_tconv(1, 4, 9, 7, 5, 1, 80);
}

#[test]
fn tconv4x4_stride2_many_channels() {
    check_tconv(1, 16, 12, 6, 6, 2, 90);
}

#[test]
fn conv_shape_errors_name_the_op() {
    let gpu = gpu();
    let x = up(gpu, &[1, 3, 8, 8], &rand_vec(1, 192));
    let w = up(gpu, &[4, 2, 3, 3], &rand_vec(2, 72));
    let b = up(gpu, &[4], &rand_vec(3, 4));
    let e = conv::conv2d(gpu, &x, &w, &b, 1, 1).unwrap_err().to_string();
    assert!(e.starts_with("conv2d:") && e.contains("3 channels"), "{e}");
    let w = up(gpu, &[4, 3, 3, 3], &rand_vec(2, 108));
    let b5 = up(gpu, &[5], &rand_vec(3, 5));
    let e = conv::conv2d(gpu, &x, &w, &b5, 1, 1)
        .unwrap_err()
        .to_string();
    assert!(e.contains("bias [5]"), "{e}");
    let empty = gpu.empty(&[1, 3, 0, 8]).unwrap();
    let e = conv::conv2d(gpu, &empty, &w, &b, 1, 1)
        .unwrap_err()
        .to_string();
    assert!(e.contains("empty"), "{e}");
    let flat = up(gpu, &[3, 64], &rand_vec(1, 192));
    let e = conv::conv2d(gpu, &flat, &w, &b, 1, 1)
        .unwrap_err()
        .to_string();
    assert!(e.contains("4 dimensions"), "{e}");
    let dy = up(gpu, &[1, 4, 5, 5], &rand_vec(4, 100));
    let e = conv::conv2d_backward_input(gpu, &dy, &w, (8, 8), 1, 1)
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("conv2d_backward_input:"), "{e}");
}

#[test]
fn conv_is_deterministic() {
    let gpu = gpu();
    let (n, c, o, h, w) = (2, 16, 16, 20, 20);
    let xt = up(gpu, &[n, c, h, w], &rand_vec(5, n * c * h * w));
    let wt = up(gpu, &[o, c, 3, 3], &rand_vec(6, o * c * 9));
    let bt = up(gpu, &[o], &rand_vec(7, o));
    let dy = up(gpu, &[n, o, h, w], &rand_vec(8, n * o * h * w));
    let run = || {
        let y = read(gpu, &conv::conv2d(gpu, &xt, &wt, &bt, 1, 1).unwrap());
        let dw = gpu.empty(&[o, c, 3, 3]).unwrap();
        conv::conv2d_backward_weight(gpu, &dy, &xt, &dw, 1, 1, false).unwrap();
        let db = gpu.empty(&[o]).unwrap();
        reduce::channel_sum(gpu, &dy, &db, false).unwrap();
        (y, read(gpu, &dw), read(gpu, &db))
    };
    let a = run();
    let b = run();
    assert!(
        a.0.iter()
            .zip(&b.0)
            .all(|(p, q)| p.to_bits() == q.to_bits())
    );
    assert!(
        a.1.iter()
            .zip(&b.1)
            .all(|(p, q)| p.to_bits() == q.to_bits())
    );
    assert!(
        a.2.iter()
            .zip(&b.2)
            .all(|(p, q)| p.to_bits() == q.to_bits())
    );
}

/// The residual join `relu(conv(x) + skip)`, added in the convolution's
/// store and as a separate pass, against the f64 reference on odd shapes
/// (dilation 2 as in the network's last block), natively and under the
/// 4 KiB binding limit (where the store join accumulates over channel
/// groups, in another order), NaN in the skip included; without channel
/// groups the two joins must be bit-identical.
#[test]
fn conv_add_relu_joins_agree_with_the_reference() {
    use conv::Join;
    for (gpu, same_order) in [(gpu(), true), (tiny_gpu(), false)] {
        for (n, c, o, h, w, d) in [(2, 5, 7, 9, 37, 1), (1, 19, 17, 11, 13, 2)] {
            let tag = format!("join n{n} c{c} o{o} {h}x{w} d{d}");
            let (oh, ow, g) = conv_geom(h, w, 3, 1, d);
            let (x, wt, b) = (
                rand_vec(11, n * c * h * w),
                rand_vec(12, o * c * 9),
                rand_vec(13, o),
            );
            let mut skip = rand_vec(14, n * o * oh * ow);
            skip[3] = f32::NAN;
            let conv_ref = cpu::conv2d(
                &to64(&x),
                (n, c, h, w),
                &to64(&wt),
                &to64(&b),
                o,
                g,
                (oh, ow),
            );
            let want: Vec<f64> = conv_ref
                .iter()
                .zip(&skip)
                .map(|(v, s)| (v + *s as f64).max(0.0))
                .collect();
            let (xt, wtt, bt) = (
                up(gpu, &[n, c, h, w], &x),
                up(gpu, &[o, c, 3, 3], &wt),
                up(gpu, &[o], &b),
            );
            let run = |join| {
                let st = up(gpu, &[n, o, oh, ow], &skip);
                read(
                    gpu,
                    &conv::conv2d_add_relu_with(gpu, &xt, &wtt, &bt, st, 1, d, join).unwrap(),
                )
            };
            let (fused, separate) = (run(Join::InStore), run(Join::Separate));
            assert!(fused[3].is_nan() && separate[3].is_nan(), "{tag}: NaN skip");
            let finite = |v: &[f32]| -> Vec<f32> {
                v.iter()
                    .map(|x| if x.is_nan() { 0.0 } else { *x })
                    .collect()
            };
            let mut want = want;
            want[3] = 0.0;
            assert_close(
                &format!("{tag} in store"),
                &finite(&fused),
                &want,
                ATOL,
                RTOL,
            );
            assert_close(
                &format!("{tag} separate"),
                &finite(&separate),
                &want,
                ATOL,
                RTOL,
            );
            assert!(
                !same_order
                    || fused
                        .iter()
                        .zip(&separate)
                        .all(|(p, q)| p.to_bits() == q.to_bits()),
                "{tag}: the joins differ"
            );
        }
    }
}
