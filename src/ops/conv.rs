//! Convolution (3x3 with stride 1/2 and dilation 1/2, 1x1) and transpose
//! convolution (4x4, stride 1/2): forward, input gradient and weight
//! gradient. Three WGSL kernels cover all six passes (see conv2d.wgsl):
//! the input gradient of a conv is a transpose conv and vice versa.
use super::reduce::ReduceParams;
use super::{
    CONV2D, Params, REDUCE, check_rank, items_per_window, kernel, launch, runs, same_padding,
};
use crate::error::{Result, shape_err};
use crate::gpu::{Gpu, Kernel, LOOP_BUDGET, Tensor};

const FORWARD: Kernel = kernel(&CONV2D, "conv2d_forward");
const TRANSPOSE: Kernel = kernel(&CONV2D, "conv2d_transpose");
const WGRAD: Kernel = kernel(&CONV2D, "conv2d_wgrad");
const SUM_PARTIALS: Kernel = kernel(&REDUCE, "sum_partials");
/// Output columns and channels per invocation (TP, TO in conv2d.wgsl).
const TP: usize = 4;
const TO: usize = 8;
/// Invocations the weight-gradient pass aims for (row chunks x O x C).
const WGRAD_THREADS: usize = 16384;

/// Index geometry shared by every pass: `in*stride + p*dil - pad` rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geom {
    pub k: usize,
    pub stride: usize,
    pub dil: usize,
    pub pad_t: usize,
    pub pad_l: usize,
}

/// The uniform `Params` of conv2d.wgsl, field for field.
#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct ConvParams {
    n_count: u32,
    a_nstride: u32,
    y_nstride: u32,
    c_in: u32,
    c_out: u32,
    w_ostride: u32,
    in_h: u32,
    in_w: u32,
    out_h: u32,
    out_w: u32,
    k: u32,
    stride: u32,
    dil: u32,
    pad_t: u32,
    pad_l: u32,
    a_base: u32,
    w_base: u32,
    b_base: u32,
    y_base: u32,
    flags: u32,
    col_groups: u32,
    och_groups: u32,
    rows_per_chunk: u32,
    chunks: u32,
    x_nstride: u32,
}

impl ConvParams {
    /// The index geometry; everything else zero.
    fn geometry(g: Geom, (in_h, in_w): (usize, usize), (out_h, out_w): (usize, usize)) -> Self {
        ConvParams {
            in_h: in_h as u32,
            in_w: in_w as u32,
            out_h: out_h as u32,
            out_w: out_w as u32,
            k: g.k as u32,
            stride: g.stride as u32,
            dil: g.dil as u32,
            pad_t: g.pad_t as u32,
            pad_l: g.pad_l as u32,
            ..Default::default()
        }
    }
}

/// How the weight tensor is indexed by (produced channel o, summed channel c).
#[derive(Clone, Copy)]
enum WeightLayout {
    /// w[o, c, k, k] (conv forward; tconv input gradient).
    OutIn,
    /// w[c, o, k, k] (conv input gradient; tconv forward).
    InOut,
}

/// Output size and geometry of a SAME conv (MODEL.md).
pub fn conv_geom(h: usize, w: usize, k: usize, stride: usize, dil: usize) -> (usize, usize, Geom) {
    let (oh, pad_t) = same_padding(h, k, stride, dil);
    let (ow, pad_l) = same_padding(w, k, stride, dil);
    (
        oh,
        ow,
        Geom {
            k,
            stride,
            dil,
            pad_t,
            pad_l,
        },
    )
}

/// Geometry of MODEL.md's 4x4 transpose conv: output `in * stride`, and
/// output index `i*stride + p - 1`.
pub fn tconv_geom(stride: usize) -> Geom {
    Geom {
        k: 4,
        stride,
        dil: 1,
        pad_t: 1,
        pad_l: 1,
    }
}

fn check_conv_args(
    op: &'static str,
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    layout_in_first: bool,
) -> Result<()> {
    check_rank(op, "input", x, 4)?;
    check_rank(op, "weight", w, 4)?;
    let ws = w.shape();
    if ws[2] != ws[3] {
        return shape_err(op, format!("weight {ws:?} is not square"));
    }
    let (w_in, w_out) = if layout_in_first {
        (ws[0], ws[1])
    } else {
        (ws[1], ws[0])
    };
    if w_in != x.shape()[1] {
        return shape_err(
            op,
            format!(
                "input {:?} has {} channels but weight {ws:?} expects {w_in}",
                x.shape(),
                x.shape()[1]
            ),
        );
    }
    if let Some(b) = b
        && b.shape() != [w_out]
    {
        return shape_err(
            op,
            format!(
                "bias {:?} does not match weight {ws:?} ({w_out} outputs)",
                b.shape()
            ),
        );
    }
    Ok(())
}

/// Conv forward, SAME padding: x [N, C, H, W], w [O, C, k, k], b [O].
pub fn conv2d(
    gpu: &Gpu,
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    stride: usize,
    dil: usize,
) -> Result<Tensor> {
    const OP: &str = "conv2d";
    check_conv_args(OP, x, w, Some(b), false)?;
    if stride == 0 || dil == 0 {
        return shape_err(
            OP,
            format!("stride {stride} and dilation {dil} must be >= 1"),
        );
    }
    let (n, _, h, wd) = x.nchw();
    let (oh, ow, g) = conv_geom(h, wd, w.shape()[2], stride, dil);
    let y = gpu.empty(&[n, w.shape()[0], oh, ow])?;
    gather(
        gpu,
        OP,
        FORWARD,
        WeightLayout::OutIn,
        x,
        w,
        Some(b),
        &y,
        g,
        false,
    )?;
    Ok(y)
}

/// Input gradient of `conv2d`: dy [N, O, OH, OW] -> dx [N, C, H, W].
pub fn conv2d_backward_input(
    gpu: &Gpu,
    dy: &Tensor,
    w: &Tensor,
    input_hw: (usize, usize),
    stride: usize,
    dil: usize,
) -> Result<Tensor> {
    const OP: &str = "conv2d_backward_input";
    check_conv_args(OP, dy, w, None, true)?;
    let (n, _, dh, dw) = dy.nchw();
    let (oh, ow, g) = conv_geom(input_hw.0, input_hw.1, w.shape()[2], stride, dil);
    if (oh, ow) != (dh, dw) {
        return shape_err(
            OP,
            format!(
                "dy {:?} does not match the output of a conv on {input_hw:?}",
                dy.shape()
            ),
        );
    }
    let dx = gpu.empty(&[n, w.shape()[1], input_hw.0, input_hw.1])?;
    gather(
        gpu,
        OP,
        TRANSPOSE,
        WeightLayout::InOut,
        dy,
        w,
        None,
        &dx,
        g,
        false,
    )?;
    Ok(dx)
}

/// Weight gradient of `conv2d` into `dw` [O, C, k, k] (added to it when
/// `accumulate`): dw[o,c,p,q] = sum dy[n,o,i,j] x[n,c,i*s+p*d-pt, ...].
pub fn conv2d_backward_weight(
    gpu: &Gpu,
    dy: &Tensor,
    x: &Tensor,
    dw: &Tensor,
    stride: usize,
    dil: usize,
    accumulate: bool,
) -> Result<()> {
    const OP: &str = "conv2d_backward_weight";
    check_rank(OP, "dy", dy, 4)?;
    check_conv_args(OP, x, dw, None, false)?;
    let (n, _, h, w) = x.nchw();
    let (oh, ow, g) = conv_geom(h, w, dw.shape()[2], stride, dil);
    if dy.shape() != [n, dw.shape()[0], oh, ow] {
        return shape_err(
            OP,
            format!(
                "dy {:?} does not match x {:?} and weight {:?}",
                dy.shape(),
                x.shape(),
                dw.shape()
            ),
        );
    }
    wgrad(gpu, OP, dy, x, dw, g, accumulate)
}

/// Transpose conv forward (MODEL.md): x [N, C, H, W], w [C, O, 4, 4]
/// (PyTorch ConvTranspose2d layout), b [O] -> y [N, O, H*s, W*s].
pub fn tconv2d(gpu: &Gpu, x: &Tensor, w: &Tensor, b: &Tensor, stride: usize) -> Result<Tensor> {
    const OP: &str = "tconv2d";
    check_conv_args(OP, x, w, Some(b), true)?;
    if w.shape()[2] != 4 || stride == 0 {
        return shape_err(
            OP,
            format!("weight {:?} must be 4x4 and stride >= 1", w.shape()),
        );
    }
    let (n, _, h, wd) = x.nchw();
    let y = gpu.empty(&[n, w.shape()[1], h * stride, wd * stride])?;
    gather(
        gpu,
        OP,
        TRANSPOSE,
        WeightLayout::InOut,
        x,
        w,
        Some(b),
        &y,
        tconv_geom(stride),
        false,
    )?;
    Ok(y)
}

/// Input gradient of `tconv2d`: dy [N, O, H*s, W*s] -> dx [N, C, H, W].
pub fn tconv2d_backward_input(gpu: &Gpu, dy: &Tensor, w: &Tensor, stride: usize) -> Result<Tensor> {
    const OP: &str = "tconv2d_backward_input";
    check_conv_args(OP, dy, w, None, false)?;
    let (n, _, h, wd) = dy.nchw();
    if stride == 0 || h % stride != 0 || wd % stride != 0 {
        return shape_err(
            OP,
            format!("dy {:?} is not a multiple of stride {stride}", dy.shape()),
        );
    }
    let dx = gpu.empty(&[n, w.shape()[0], h / stride, wd / stride])?;
    gather(
        gpu,
        OP,
        FORWARD,
        WeightLayout::OutIn,
        dy,
        w,
        None,
        &dx,
        tconv_geom(stride),
        false,
    )?;
    Ok(dx)
}

/// Weight gradient of `tconv2d` into `dw` [C, O, 4, 4]:
/// dw[c,o,p,q] = sum x[n,c,i,j] dy[n,o,i*s+p-1, j*s+q-1].
pub fn tconv2d_backward_weight(
    gpu: &Gpu,
    dy: &Tensor,
    x: &Tensor,
    dw: &Tensor,
    stride: usize,
    accumulate: bool,
) -> Result<()> {
    const OP: &str = "tconv2d_backward_weight";
    check_rank(OP, "dy", dy, 4)?;
    check_conv_args(OP, x, dw, None, true)?;
    let (n, _, h, w) = x.nchw();
    if dy.shape() != [n, dw.shape()[1], h * stride, w * stride] {
        return shape_err(
            OP,
            format!(
                "dy {:?} does not match x {:?} and weight {:?}",
                dy.shape(),
                x.shape(),
                dw.shape()
            ),
        );
    }
    // The roles swap: x plays the gradient of the output, dy the input.
    wgrad(gpu, OP, x, dy, dw, tconv_geom(stride), accumulate)
}

/// Counted loop iterations per summed channel of conv2d_forward and
/// conv2d_transpose (loops over p, q, the TP columns and TO channels; see
/// `LOOP_BUDGET`).
fn gather_cost_per_channel(k: usize) -> usize {
    k * (2 + k * (2 + TP + 1 + TO + 1))
}

/// Elements a window must span for `imgs` images when each image holds
/// `img` elements and the window needs `len` planes of `plane` elements of
/// the last image: `(imgs - 1) * img + len * plane`.
fn span(imgs: usize, img: usize, len: usize, plane: usize) -> usize {
    (imgs - 1) * img + len * plane
}

/// Most images `k` with `span(k, ..) <= win` for every (img, len, plane).
fn images_per_window(n: usize, win: usize, parts: &[(usize, usize, usize)]) -> usize {
    parts
        .iter()
        .map(|&(img, len, plane)| 1 + (win - len * plane) / img)
        .min()
        .unwrap_or(1)
        .clamp(1, n)
}

/// The produced tensor y [N, Co, OH, OW] from src [N, Cs, IH, IW] and w,
/// split so that every binding fits the binding limit and every invocation
/// stays within the loop budget: groups of images, produced-channel groups,
/// and summed-channel groups that accumulate into y.
#[allow(clippy::too_many_arguments)]
fn gather(
    gpu: &Gpu,
    op: &'static str,
    k: Kernel,
    layout: WeightLayout,
    src: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    y: &Tensor,
    g: Geom,
    accumulate: bool,
) -> Result<()> {
    let (n, cs, ih, iw) = src.nchw();
    let (_, co, oh, ow) = y.nchw();
    let kk = g.k * g.k;
    let win = gpu.window_elems();
    let (in_img, out_img) = (cs * ih * iw, co * oh * ow);
    // Weight stride between rows of the outer weight index.
    let w_ostride = match layout {
        WeightLayout::OutIn => cs * kk,
        WeightLayout::InOut => co * kk,
    };
    let weight_span = |o_len: usize, c_len: usize| match layout {
        WeightLayout::OutIn => (o_len - 1) * w_ostride + c_len * kk,
        WeightLayout::InOut => (c_len - 1) * w_ostride + o_len * kk,
    };
    let mut cs_g = cs
        .min(items_per_window(gpu, op, ih * iw, "input plane")?)
        .min((LOOP_BUDGET / gather_cost_per_channel(g.k)).max(1));
    let mut co_g = co.min(items_per_window(gpu, op, oh * ow, "output plane")?);
    while cs_g > 1 && weight_span(1, cs_g) > win {
        cs_g = cs_g.div_ceil(2);
    }
    while co_g > 1 && weight_span(co_g, cs_g) > win {
        co_g = co_g.div_ceil(2);
    }
    items_per_window(gpu, op, weight_span(co_g, cs_g), "weight slice")?;
    let imgs = images_per_window(n, win, &[(in_img, cs_g, ih * iw), (out_img, co_g, oh * ow)]);
    let col_groups = ow.div_ceil(TP);
    for (n0, nb) in runs(n, imgs) {
        for (o0, olen) in runs(co, co_g) {
            for (c0, clen) in runs(cs, cs_g) {
                let first = c0 == 0;
                let (sw, sb) = gpu.window(
                    src,
                    n0 * in_img + c0 * ih * iw,
                    span(nb, in_img, clen, ih * iw),
                );
                let (yw, yb) = gpu.window(
                    y,
                    n0 * out_img + o0 * oh * ow,
                    span(nb, out_img, olen, oh * ow),
                );
                let w_start = match layout {
                    WeightLayout::OutIn => o0 * w_ostride + c0 * kk,
                    WeightLayout::InOut => c0 * w_ostride + o0 * kk,
                };
                let (ww, wb) = gpu.window(w, w_start, weight_span(olen, clen));
                let (bw, bb) = match bias {
                    Some(b) => gpu.window(b, o0, olen),
                    None => gpu.window(w, 0, 1),
                };
                let flags =
                    (accumulate || !first) as usize | (((bias.is_some() && first) as usize) << 1);
                let och_groups = olen.div_ceil(TO);
                let p = ConvParams {
                    n_count: nb as u32,
                    a_nstride: in_img as u32,
                    y_nstride: out_img as u32,
                    c_in: clen as u32,
                    c_out: olen as u32,
                    w_ostride: w_ostride as u32,
                    a_base: sb,
                    w_base: wb,
                    b_base: bb,
                    y_base: yb,
                    flags: flags as u32,
                    col_groups: col_groups as u32,
                    och_groups: och_groups as u32,
                    ..ConvParams::geometry(g, (ih, iw), (oh, ow))
                };
                let threads = nb * och_groups * oh * col_groups;
                launch(
                    gpu,
                    &k,
                    &Params::of(&p),
                    &[(1, &sw), (2, &ww), (3, &bw), (4, &yw)],
                    threads,
                );
            }
        }
    }
    Ok(())
}

/// dw[o, c] (o over channels of `gout` [N, O, OH, OW], c over channels of
/// `input` [N, C, IH, IW]) = sum_{n,i,j} gout[n,o,i,j] * input[n,c,i*s+p*d-pt, j*s+q*d-pl],
/// stored at o*C*kk + c*kk + tap. Row chunks give partial sums that a second
/// pass adds in a fixed order; dispatches over image and channel groups
/// accumulate.
fn wgrad(
    gpu: &Gpu,
    op: &'static str,
    gout: &Tensor,
    input: &Tensor,
    dw: &Tensor,
    g: Geom,
    accumulate: bool,
) -> Result<()> {
    let (n, o_tot, oh, ow) = gout.nchw();
    let (_, c_tot, ih, iw) = input.nchw();
    let kk = g.k * g.k;
    assert!(kk <= 16, "wgrad supports kernels up to 4x4");
    let win = gpu.window_elems();
    let (g_img, x_img) = (o_tot * oh * ow, c_tot * ih * iw);
    // Counted loop iterations per gradient row (loops over p, j, q).
    let row_cost = g.k * (2 + ow * (3 + g.k));
    if row_cost > LOOP_BUDGET {
        return Err(crate::error::EngineError::TooLarge {
            op,
            detail: format!(
                "rows of {ow} columns exceed the per-invocation loop budget; train on narrower crops"
            ),
        });
    }
    let max_rows = LOOP_BUDGET / row_cost;
    let og = o_tot
        .min(items_per_window(gpu, op, oh * ow, "gradient plane")?)
        .min((win / (c_tot * kk)).max(1));
    let mut cg = c_tot.min(items_per_window(gpu, op, ih * iw, "input plane")?);
    while cg > 1 && (og - 1) * c_tot * kk + cg * kk > win {
        cg = cg.div_ceil(2);
    }
    let imgs = images_per_window(n, win, &[(g_img, og, oh * ow), (x_img, cg, ih * iw)]);
    let mut first = true;
    for (n0, nb) in runs(n, imgs) {
        for (o0, olen) in runs(o_tot, og) {
            for (c0, clen) in runs(c_tot, cg) {
                let rows = nb * oh;
                let per = olen * clen * kk;
                let max_chunks = (win / per).clamp(1, LOOP_BUDGET / 4);
                let chunks_wanted = WGRAD_THREADS
                    .div_ceil(olen * clen)
                    .max(rows.div_ceil(max_rows))
                    .clamp(1, max_chunks)
                    .min(rows);
                let rows_per_chunk = rows.div_ceil(chunks_wanted);
                if rows_per_chunk > max_rows {
                    items_per_window(gpu, op, per * rows.div_ceil(max_rows), "partial-sum stack")?;
                }
                let chunks = rows.div_ceil(rows_per_chunk);
                let partials = gpu.empty(&[chunks * per])?;
                let (gw, gb) = gpu.window(
                    gout,
                    n0 * g_img + o0 * oh * ow,
                    span(nb, g_img, olen, oh * ow),
                );
                let (xw, xb) = gpu.window(
                    input,
                    n0 * x_img + c0 * ih * iw,
                    span(nb, x_img, clen, ih * iw),
                );
                let (pw, _) = gpu.window(&partials, 0, chunks * per);
                let p = ConvParams {
                    n_count: nb as u32,
                    a_nstride: g_img as u32,
                    c_in: clen as u32,
                    c_out: olen as u32,
                    a_base: gb,
                    w_base: xb,
                    rows_per_chunk: rows_per_chunk as u32,
                    chunks: chunks as u32,
                    x_nstride: x_img as u32,
                    ..ConvParams::geometry(g, (ih, iw), (oh, ow))
                };
                launch(
                    gpu,
                    &WGRAD,
                    &Params::of(&p),
                    &[(1, &gw), (2, &xw), (4, &pw)],
                    chunks * olen * clen,
                );
                let dw_start = o0 * c_tot * kk + c0 * kk;
                let dw_len = (olen - 1) * c_tot * kk + clen * kk;
                let (dww, dwb) = gpu.window(dw, dw_start, dw_len);
                let sp = ReduceParams {
                    chunks: chunks as u32,
                    out_base: dwb,
                    flags: (accumulate || !first) as u32,
                    scale: 1.0,
                    len: per as u32,
                    inner: (clen * kk) as u32,
                    out_ostride: (c_tot * kk) as u32,
                    ..Default::default()
                };
                launch(
                    gpu,
                    &SUM_PARTIALS,
                    &Params::of(&sp),
                    &[(1, &pw), (4, &dww)],
                    per,
                );
                first = false;
            }
        }
    }
    Ok(())
}

/// Plain f64 references, following MODEL.md's index rules literally. Each
/// pass is one visit of every (output, input, weight) index triple that the
/// rule connects, so the three passes of a conv (and the two of a tconv)
/// cannot disagree about the indexing.
pub mod cpu {
    use super::Geom;

    /// Calls `f(y_index, x_index, w_index)` for every term of MODEL.md's conv
    /// sum: y [n, o, oh, ow], x [n, c, h, w], w [o, c, k, k].
    #[allow(clippy::too_many_arguments)]
    fn conv_terms(
        (n, c, h, w): (usize, usize, usize, usize),
        o: usize,
        g: Geom,
        (oh, ow): (usize, usize),
        mut f: impl FnMut(usize, usize, usize),
    ) {
        let k = g.k;
        for ni in 0..n {
            for oi in 0..o {
                for i in 0..oh {
                    for j in 0..ow {
                        let yi = ((ni * o + oi) * oh + i) * ow + j;
                        for ci in 0..c {
                            for p in 0..k {
                                for q in 0..k {
                                    let hh = (i * g.stride + p * g.dil) as isize - g.pad_t as isize;
                                    let ww = (j * g.stride + q * g.dil) as isize - g.pad_l as isize;
                                    if hh < 0 || ww < 0 || hh >= h as isize || ww >= w as isize {
                                        continue;
                                    }
                                    let xi = ((ni * c + ci) * h + hh as usize) * w + ww as usize;
                                    f(yi, xi, ((oi * c + ci) * k + p) * k + q);
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// x [n, c, h, w] with w [o, c, k, k] -> y [n, o, oh, ow].
    #[allow(clippy::too_many_arguments)]
    pub fn conv2d(
        x: &[f64],
        (n, c, h, w): (usize, usize, usize, usize),
        wt: &[f64],
        b: &[f64],
        o: usize,
        g: Geom,
        (oh, ow): (usize, usize),
    ) -> Vec<f64> {
        let mut y: Vec<f64> = (0..n * o * oh * ow)
            .map(|i| b[(i / (oh * ow)) % o])
            .collect();
        conv_terms((n, c, h, w), o, g, (oh, ow), |yi, xi, wi| {
            y[yi] += wt[wi] * x[xi]
        });
        y
    }

    /// Adjoint of `conv2d` in x: dx [n, c, h, w].
    #[allow(clippy::too_many_arguments)]
    pub fn conv2d_backward_input(
        dy: &[f64],
        (n, o, oh, ow): (usize, usize, usize, usize),
        wt: &[f64],
        c: usize,
        g: Geom,
        (h, w): (usize, usize),
    ) -> Vec<f64> {
        let mut dx = vec![0.0; n * c * h * w];
        conv_terms((n, c, h, w), o, g, (oh, ow), |yi, xi, wi| {
            dx[xi] += dy[yi] * wt[wi]
        });
        dx
    }

    /// dw [o, c, k, k] of `conv2d`.
    pub fn conv2d_backward_weight(
        dy: &[f64],
        (n, o, oh, ow): (usize, usize, usize, usize),
        x: &[f64],
        (c, h, w): (usize, usize, usize),
        g: Geom,
    ) -> Vec<f64> {
        let mut dw = vec![0.0; o * c * g.k * g.k];
        conv_terms((n, c, h, w), o, g, (oh, ow), |yi, xi, wi| {
            dw[wi] += dy[yi] * x[xi]
        });
        dw
    }

    /// Calls `f(y_index, x_index, w_index)` for every term of MODEL.md's
    /// tconv scatter `y[n,o,i*s+p-1, j*s+q-1] += x[n,c,i,j] * w[c,o,p,q]`,
    /// keeping outputs inside [0, in*s).
    fn tconv_terms(
        (n, c, h, w): (usize, usize, usize, usize),
        o: usize,
        s: usize,
        mut f: impl FnMut(usize, usize, usize),
    ) {
        let (oh, ow) = (h * s, w * s);
        for ni in 0..n {
            for oi in 0..o {
                for ci in 0..c {
                    for i in 0..h {
                        for j in 0..w {
                            let xi = ((ni * c + ci) * h + i) * w + j;
                            for p in 0..4 {
                                for q in 0..4 {
                                    let yy = (i * s + p) as isize - 1;
                                    let yx = (j * s + q) as isize - 1;
                                    if yy < 0 || yx < 0 || yy >= oh as isize || yx >= ow as isize {
                                        continue;
                                    }
                                    let yi = ((ni * o + oi) * oh + yy as usize) * ow + yx as usize;
                                    f(yi, xi, ((ci * o + oi) * 4 + p) * 4 + q);
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// MODEL.md's tconv: x [n, c, h, w], w [c, o, 4, 4] -> y [n, o, h*s, w*s].
    pub fn tconv2d(
        x: &[f64],
        (n, c, h, w): (usize, usize, usize, usize),
        wt: &[f64],
        b: &[f64],
        o: usize,
        s: usize,
    ) -> Vec<f64> {
        let plane = h * s * w * s;
        let mut y: Vec<f64> = (0..n * o * plane).map(|i| b[(i / plane) % o]).collect();
        tconv_terms((n, c, h, w), o, s, |yi, xi, wi| y[yi] += x[xi] * wt[wi]);
        y
    }

    /// Adjoint of `tconv2d` in x and in w: (dx [n, c, h, w], dw [c, o, 4, 4]).
    pub fn tconv2d_backward(
        dy: &[f64],
        x: &[f64],
        (n, c, h, w): (usize, usize, usize, usize),
        wt: &[f64],
        o: usize,
        s: usize,
    ) -> (Vec<f64>, Vec<f64>) {
        let mut dx = vec![0.0; n * c * h * w];
        let mut dw = vec![0.0; c * o * 16];
        tconv_terms((n, c, h, w), o, s, |yi, xi, wi| {
            dx[xi] += dy[yi] * wt[wi];
            dw[wi] += dy[yi] * x[xi];
        });
        (dx, dw)
    }
}
