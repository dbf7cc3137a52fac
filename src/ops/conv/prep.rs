//! Operand preparation for the generated kernels (shaders/conv_prep.wgsl):
//! zero-padded input copies and weights re-laid as [summed][tap][produced].
use crate::error::Result;
use crate::gpu::{Gpu, Kernel, Tensor};
use crate::ops::{CONV_PREP, Params, kernel, launch, wgsl_params};

const PAD: Kernel = kernel(&CONV_PREP, "pad_input");
const PREP: Kernel = kernel(&CONV_PREP, "prep_weights");

wgsl_params! {
    /// The uniform of conv_prep.wgsl (r0, c0, rstep, cstep are i32 there:
    /// two's complement bits).
    struct PrepParams {
        total, a, b, c, src_base, src_nstride, src_cstride, src_h, src_w, r0, c0, rstep, cstep,
    }
}

/// Which planes of a source go into a padded copy, and where the copy's
/// (0, 0) lies in the source.
pub(crate) struct PadRegion {
    pub n0: usize,
    pub images: usize,
    pub c0: usize,
    pub planes: usize,
    /// Source row / column of padded element (0, 0) (negative: zero border).
    pub row0: isize,
    pub col0: isize,
    /// Padded plane size.
    pub rows: usize,
    pub cols: usize,
}

/// A new tensor [images, planes, rows, cols] holding the region of `src`
/// [N, C, H, W], zero outside the source.
pub(crate) fn pad_input(gpu: &Gpu, src: &Tensor, r: &PadRegion) -> Result<Tensor> {
    let (_, c, h, w) = src.nchw();
    let img = c * h * w;
    let dst = gpu.empty(&[r.images, r.planes, r.rows, r.cols])?;
    let span = (r.images - 1) * img + r.planes * h * w;
    let (sw, sb) = gpu.window(src, r.n0 * img + r.c0 * h * w, span);
    let (dw, _) = gpu.window(&dst, 0, dst.numel());
    let p = PrepParams {
        total: dst.numel() as u32,
        a: r.rows as u32,
        b: r.cols as u32,
        c: r.planes as u32,
        src_base: sb,
        src_nstride: img as u32,
        src_cstride: (h * w) as u32,
        src_h: h as u32,
        src_w: w as u32,
        r0: r.row0 as i32 as u32,
        c0: r.col0 as i32 as u32,
        ..Default::default()
    };
    launch(
        gpu,
        &PAD,
        &Params::of(&p),
        &[(1, &sw), (4, &dw)],
        dst.numel(),
    );
    Ok(dst)
}

/// How prepared tap (tp, tq) of summed channel s and produced channel o
/// is found in the original weight tensor: element
/// `o*prod_stride + s*sum_stride + (p0 + tp*pstep)*k + (q0 + tq*qstep)`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct WeightMap {
    pub prod_stride: usize,
    pub sum_stride: usize,
    /// Width of the original (square) kernel.
    pub k: usize,
    pub p0: isize,
    pub q0: isize,
    pub pstep: isize,
    pub qstep: isize,
    /// Prepared kernel size.
    pub kh: usize,
    pub kw: usize,
}

impl WeightMap {
    /// Elements of the original tensor a slice of `olen` produced and `slen`
    /// summed channels spans.
    pub fn span(&self, olen: usize, slen: usize) -> usize {
        (olen - 1) * self.prod_stride + (slen - 1) * self.sum_stride + self.k * self.k
    }
}

/// A new tensor [slen, kh*kw, opad] of weights for produced channels
/// `o0..o0+olen` (zeros up to `opad`) and summed channels `s0..s0+slen`.
pub(crate) fn prep_weights(
    gpu: &Gpu,
    w: &Tensor,
    m: &WeightMap,
    (o0, olen, opad): (usize, usize, usize),
    (s0, slen): (usize, usize),
) -> Result<Tensor> {
    let taps = m.kh * m.kw;
    let dst = gpu.empty(&[slen, taps, opad])?;
    let start = o0 * m.prod_stride + s0 * m.sum_stride;
    let (sw, sb) = gpu.window(w, start, m.span(olen, slen));
    let (dw, _) = gpu.window(&dst, 0, dst.numel());
    let p = PrepParams {
        total: dst.numel() as u32,
        a: opad as u32,
        b: taps as u32,
        c: m.kw as u32,
        src_base: sb,
        src_nstride: m.prod_stride as u32,
        src_cstride: m.sum_stride as u32,
        src_h: olen as u32,
        src_w: m.k as u32,
        r0: m.p0 as i32 as u32,
        c0: m.q0 as i32 as u32,
        rstep: m.pstep as i32 as u32,
        cstep: m.qstep as i32 as u32,
    };
    launch(
        gpu,
        &PREP,
        &Params::of(&p),
        &[(1, &sw), (4, &dw)],
        dst.numel(),
    );
    Ok(dst)
}
