//! The first convolution kernels (shaders/conv2d.wgsl), kept as the
//! `gather` variant: one static WGSL source with every shape value at run
//! time, border checks per element and runtime-indexed accumulators. The
//! generated kernels (`direct`, `wgrad`) replace them by default; these stay
//! as the fallback for geometries the generated planners do not cover
//! (e.g. a transpose pass with a residue class that no tap reaches) and as
//! the baseline that `engine bench` measures against.
use super::wgrad::{DwSlice, add_partials};
use super::{Geom, WeightLayout};
use crate::error::Result;
use crate::gpu::{Gpu, Kernel, Tensor};
use crate::ops::{CONV2D, Params, items_per_window, kernel, launch, runs};

pub(super) const FORWARD: Kernel = kernel(&CONV2D, "conv2d_forward");
pub(super) const TRANSPOSE: Kernel = kernel(&CONV2D, "conv2d_transpose");
const WGRAD: Kernel = kernel(&CONV2D, "conv2d_wgrad");
/// Output columns and channels per invocation (TP, TO in conv2d.wgsl).
const TP: usize = 4;
const TO: usize = 8;
/// Invocations the weight-gradient pass aims for (row chunks x O x C).
const WGRAD_THREADS: usize = 16384;

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
pub(super) fn gather(
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
        .min((gpu.loop_budget() / gather_cost_per_channel(g.k)).max(1));
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
pub(super) fn wgrad(
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
    if row_cost > gpu.loop_budget() {
        return Err(crate::error::EngineError::TooLarge {
            op,
            detail: format!(
                "rows of {ow} columns exceed the per-invocation loop budget; train on narrower crops"
            ),
        });
    }
    let max_rows = gpu.loop_budget() / row_cost;
    let og = o_tot
        .min(items_per_window(gpu, op, oh * ow, "gradient plane")?)
        .min((win / (c_tot * kk)).max(1));
    let mut cg = c_tot.min(items_per_window(gpu, op, ih * iw, "input plane")?);
    while cg > 1 && (og - 1) * c_tot * kk + cg * kk > win {
        cg = cg.div_ceil(2);
    }
    let imgs = images_per_window(n, win, &[(g_img, og, oh * ow), (x_img, cg, ih * iw)]);
    for (n0, nb) in runs(n, imgs) {
        // Each (o, c) slice of dw is written by the first image group and
        // added to by the later ones.
        let first = n0 == 0;
        for (o0, olen) in runs(o_tot, og) {
            for (c0, clen) in runs(c_tot, cg) {
                let rows = nb * oh;
                let per = olen * clen * kk;
                let max_chunks = (win / per).clamp(1, gpu.loop_budget() / 4);
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
                let slice = DwSlice {
                    o0,
                    olen,
                    c0,
                    clen,
                    c_tot,
                    kk,
                };
                add_partials(gpu, &pw, chunks, dw, slice, accumulate || !first);
            }
        }
    }
    Ok(())
}
