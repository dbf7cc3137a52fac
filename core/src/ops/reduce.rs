//! Deterministic reductions (no float atomics): per-(plane, chunk) partial
//! sums in a fixed order, then one invocation per channel adds them in a
//! fixed order. Used for bias gradients, batch-norm statistics, the mean
//! loss and the L2 term.
use super::{
    Params, REDUCE, check_nonempty, items_per_window, kernel, launch, launch_lanes, runs,
    vec4_lanes,
};
use crate::error::{Result, shape_err};
use crate::gpu::{Gpu, Kernel, Tensor};

/// Partial sums one invocation may combine (a quarter of the adapter's
/// loop budget: each combine step costs several counted iterations).
fn max_combine(gpu: &Gpu) -> usize {
    gpu.loop_budget() / 4
}

/// A plane-sum kernel and the source bindings its entry point reads (a
/// bind group may hold no others): 5 `va`, 3 `stats`, 6 `vb`, 7 `vc`.
struct SumKernel {
    kernel: Kernel,
    reads: &'static [u32],
}

const PLANE_SUMS: SumKernel = SumKernel {
    kernel: kernel(&REDUCE, "plane_sums"),
    reads: &[5, 3],
};
const BN_GRAD_SUMS: SumKernel = SumKernel {
    kernel: kernel(&REDUCE, "bn_grad_sums"),
    reads: &[5, 3, 6, 7],
};
const BN_STAT_SUMS: SumKernel = SumKernel {
    kernel: kernel(&REDUCE, "bn_stat_sums"),
    reads: &[5],
};
const COMBINE: Kernel = kernel(&REDUCE, "combine_channels");
const COMBINE_BN_GRADS: Kernel = kernel(&REDUCE, "combine_bn_grads");
const BN_MERGE_STATS: Kernel = kernel(&REDUCE, "bn_merge_stats");
/// Elements one invocation sums before the combine pass, at least.
const CHUNK: usize = 1024;

/// The uniform `Params` of reduce.wgsl, field for field.
#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct ReduceParams {
    pub planes: u32,
    pub plane_len: u32,
    pub chunks: u32,
    pub chunk_len: u32,
    pub mode: u32,
    pub c_total: u32,
    pub c_first: u32,
    pub a_base: u32,
    pub b_base: u32,
    pub stat_base: u32,
    pub out_base: u32,
    pub flags: u32,
    pub scale: f32,
    pub len: u32,
    pub inner: u32,
    pub out_ostride: u32,
    pub valid: u32,
    pub c_base: u32,
}

/// What `plane_sums` adds up (mode numbers of reduce.wgsl).
#[derive(Clone, Copy)]
pub enum SumOf {
    /// a
    A = 0,
    /// (a - mean[c])^2
    SqDev = 1,
    /// a * a
    Sq = 2,
}

/// Partial sums of every (plane, chunk) of `a` viewed as `planes` planes of
/// `plane_len` (the last one may be cut short at `total` elements) with
/// `c_total` channels cycling over the planes; `images` planes per channel
/// are combined later, so the chunk count keeps images * chunks within the
/// loop budget. Returns the partials [planes * chunks] and `chunks`.
#[allow(clippy::too_many_arguments)]
pub fn plane_partials(
    gpu: &Gpu,
    op: &'static str,
    mode: SumOf,
    a: &Tensor,
    stats: Option<&Tensor>,
    shape: (usize, usize, usize),
    total: usize,
) -> Result<(Tensor, usize)> {
    let sources = Sources {
        a,
        b: None,
        c: None,
        stats,
    };
    let plan = SumPlan::new(gpu, op, shape, total)?;
    let partials = gpu.empty(&[shape.0 * plan.chunks])?;
    plan.dispatch(
        gpu,
        op,
        &PLANE_SUMS,
        &sources,
        (mode as u32, 0),
        &[&partials],
    )?;
    Ok((partials, plan.chunks))
}

/// Batch norm's two backward sums of `dy` over the planes of `x` [N, C, H,
/// W] in one pass (`bn_grad_sums`): partials of d and of d * xhat, where d
/// is dy, or dy where the ReLU output `relu_out` is positive. Returns both
/// and the chunk count.
pub(crate) fn bn_grad_partials(
    gpu: &Gpu,
    op: &'static str,
    dy: &Tensor,
    relu_out: Option<&Tensor>,
    x: &Tensor,
    stats: &Tensor,
) -> Result<(Tensor, Tensor, usize)> {
    let (n, c, h, w) = x.nchw();
    let sources = Sources {
        a: dy,
        b: relu_out,
        c: Some(x),
        stats: Some(stats),
    };
    let plan = SumPlan::new(gpu, op, (n * c, h * w, c), x.numel())?;
    let sums = gpu.empty(&[n * c * plan.chunks])?;
    let sums_xhat = gpu.empty(&[n * c * plan.chunks])?;
    let flags = (relu_out.is_some() as u32) << 1;
    plan.dispatch(
        gpu,
        op,
        &BN_GRAD_SUMS,
        &sources,
        (0, flags),
        &[&sums, &sums_xhat],
    )?;
    Ok((sums, sums_xhat, plan.chunks))
}

/// What a plane-sum pass reads: a, b and c element by element, the
/// per-channel statistics whole.
struct Sources<'a> {
    a: &'a Tensor,
    b: Option<&'a Tensor>,
    c: Option<&'a Tensor>,
    stats: Option<&'a Tensor>,
}

/// How a plane-sum pass splits its planes into chunks and windows.
struct SumPlan {
    planes: usize,
    plane_len: usize,
    c_total: usize,
    total: usize,
    chunks: usize,
    /// 4 when every plane, window and chunk is a run of whole vec4s.
    lanes: usize,
}

impl SumPlan {
    fn new(
        gpu: &Gpu,
        op: &'static str,
        (planes, plane_len, c_total): (usize, usize, usize),
        total: usize,
    ) -> Result<SumPlan> {
        let images = planes / c_total;
        // Few chunks when there are many images, so the combine stays one level.
        let chunks = plane_len
            .div_ceil(CHUNK)
            .clamp(1, (max_combine(gpu) / images.max(1)).max(1));
        if plane_len.div_ceil(chunks) > max_combine(gpu) {
            return Err(crate::error::EngineError::TooLarge {
                op,
                detail: format!(
                    "{images} planes of {plane_len} values exceed the per-invocation loop budget"
                ),
            });
        }
        let lanes = match total.is_multiple_of(4) {
            true => vec4_lanes(gpu, plane_len),
            false => 1,
        };
        Ok(SumPlan {
            planes,
            plane_len,
            c_total,
            total,
            chunks,
            lanes,
        })
    }

    /// Items (of `lanes` elements) per chunk; the last may hold fewer.
    fn chunk_len(&self) -> usize {
        (self.plane_len / self.lanes).div_ceil(self.chunks)
    }

    /// Dispatches `k` over every (plane, chunk) in windows, writing each
    /// output's partials [planes * chunks] (bindings 4 and 8).
    fn dispatch(
        &self,
        gpu: &Gpu,
        op: &'static str,
        k: &SumKernel,
        src: &Sources,
        (mode, flags): (u32, u32),
        outs: &[&Tensor],
    ) -> Result<()> {
        let (plane_len, chunks, lanes) = (self.plane_len, self.chunks, self.lanes);
        let chunk_len = self.chunk_len();
        let per_window = items_per_window(gpu, op, plane_len, "plane")?.min(items_per_window(
            gpu,
            op,
            chunks,
            "partial row",
        )?);
        for (p0, np) in runs(self.planes, per_window) {
            let valid = (self.total - p0 * plane_len).min(np * plane_len);
            let (aw, ab) = gpu.window(src.a, p0 * plane_len, valid);
            let (bw, bb) = gpu.window(src.b.unwrap_or(src.a), p0 * plane_len, valid);
            let (cw, cb) = gpu.window(src.c.unwrap_or(src.a), p0 * plane_len, valid);
            let (sw, sb) = match src.stats {
                Some(s) => gpu.window(s, 0, s.numel()),
                None => gpu.window(src.a, 0, 1),
            };
            let out: Vec<_> = outs
                .iter()
                .map(|t| gpu.window(t, p0 * chunks, np * chunks))
                .collect();
            let p = ReduceParams {
                planes: np as u32,
                plane_len: (plane_len / lanes) as u32,
                chunks: chunks as u32,
                chunk_len: chunk_len as u32,
                mode,
                flags,
                c_total: self.c_total as u32,
                c_first: (p0 % self.c_total) as u32,
                a_base: ab / lanes as u32,
                b_base: bb / lanes as u32,
                c_base: cb / lanes as u32,
                stat_base: sb,
                out_base: out[0].1,
                valid: (valid / lanes) as u32,
                ..Default::default()
            };
            let source = |b: u32| match b {
                3 => &sw,
                6 => &bw,
                7 => &cw,
                _ => &aw,
            };
            let mut binds: Vec<_> = k.reads.iter().map(|&b| (b, source(b))).collect();
            binds.push((4, &out[0].0));
            if let Some((w2, base2)) = out.get(1) {
                // Same offset in same-sized tensors: the same base.
                debug_assert_eq!(*base2, out[0].1);
                binds.push((8, w2));
            }
            let elems = np * chunks * lanes;
            launch_lanes(gpu, &k.kernel, &Params::of(&p), &binds, elems, lanes);
        }
        Ok(())
    }
}

/// out[offset + c] (+)= scale * sum over images and chunks of the partials
/// (laid out [image][channel][chunk]). More images than one invocation may
/// add are first combined in groups (a level of partials of partials).
#[allow(clippy::too_many_arguments)]
pub fn combine(
    gpu: &Gpu,
    partials: &Tensor,
    (images, c_total, chunks): (usize, usize, usize),
    scale: f32,
    out: &Tensor,
    offset: usize,
    accumulate: bool,
) -> Result<()> {
    if images * chunks <= max_combine(gpu) {
        combine_once(
            gpu,
            partials,
            0,
            (images, c_total, chunks),
            scale,
            out,
            offset,
            accumulate,
        );
        return Ok(());
    }
    let group = (max_combine(gpu) / chunks).max(1);
    let groups = images.div_ceil(group);
    let level = gpu.empty(&[groups * c_total])?;
    for (g, (i0, len)) in runs(images, group).enumerate() {
        let start = i0 * c_total * chunks;
        combine_once(
            gpu,
            partials,
            start,
            (len, c_total, chunks),
            1.0,
            &level,
            g * c_total,
            false,
        );
    }
    combine(
        gpu,
        &level,
        (groups, c_total, 1),
        scale,
        out,
        offset,
        accumulate,
    )
}

/// A batch norm's batch statistics of `x` [N, C, H, W] in one pass over x
/// (`bn_stat_sums`, then `bn_merge_stats`): `stats` [2, C] gets the mean
/// and the biased variance. False (nothing recorded) where one merge
/// cannot take every partial: the caller then takes the two passes.
pub(crate) fn bn_batch_stats(
    gpu: &Gpu,
    op: &'static str,
    x: &Tensor,
    stats: &Tensor,
) -> Result<bool> {
    let (n, c, h, w) = x.nchw();
    let plan = SumPlan::new(gpu, op, (n * c, h * w, c), x.numel())?;
    let len = n * c * plan.chunks;
    if n * plan.chunks > max_combine(gpu) || len.max(2 * c) > gpu.window_elems() {
        return Ok(false);
    }
    let (sums, devs) = (gpu.empty(&[len])?, gpu.empty(&[len])?);
    let sources = Sources {
        a: x,
        b: None,
        c: None,
        stats: None,
    };
    plan.dispatch(gpu, op, &BN_STAT_SUMS, &sources, (0, 0), &[&sums, &devs])?;
    let (sw, _) = gpu.window(&sums, 0, len);
    let (dw, _) = gpu.window(&devs, 0, len);
    let (ow, _) = gpu.window(stats, 0, 2 * c);
    let p = ReduceParams {
        planes: n as u32,
        plane_len: (h * w / plan.lanes) as u32,
        chunks: plan.chunks as u32,
        chunk_len: plan.chunk_len() as u32,
        c_total: c as u32,
        inner: plan.lanes as u32,
        ..Default::default()
    };
    let binds = [(1, &sw), (2, &dw), (4, &ow)];
    launch(gpu, &BN_MERGE_STATS, &Params::of(&p), &binds, c);
    Ok(true)
}

/// A batch norm's backward sums in one dispatch: from the partials `pg`
/// (of sum d * xhat) and `pb` (of sum d), [images, c, chunks] each, writes
/// `sums` = [sum d * xhat, sum d] and adds them to (or, not `accumulate`,
/// writes them into) `dgamma`, `dbeta`: what four `combine` calls do, the
/// same sums in the same order, in one dispatch instead of four. False
/// (nothing recorded) where one pass cannot hold them: the caller then
/// combines one by one.
pub fn combine_bn_grads(
    gpu: &Gpu,
    (pg, pb): (&Tensor, &Tensor),
    (images, c, chunks): (usize, usize, usize),
    sums: &Tensor,
    (dgamma, dbeta): (&Tensor, &Tensor),
    accumulate: bool,
) -> bool {
    let len = images * c * chunks;
    if images * chunks > max_combine(gpu) || len.max(2 * c) > gpu.window_elems() {
        return false;
    }
    let (gw, _) = gpu.window(pg, 0, len);
    let (bw, _) = gpu.window(pb, 0, len);
    let (sw, _) = gpu.window(sums, 0, 2 * c);
    let (dgw, _) = gpu.window(dgamma, 0, c);
    let (dbw, _) = gpu.window(dbeta, 0, c);
    let p = ReduceParams {
        planes: images as u32,
        chunks: chunks as u32,
        c_total: c as u32,
        flags: accumulate as u32,
        scale: 1.0,
        ..Default::default()
    };
    let binds = [(1, &gw), (2, &bw), (4, &sw), (8, &dgw), (9, &dbw)];
    launch(gpu, &COMBINE_BN_GRADS, &Params::of(&p), &binds, c);
    true
}

#[allow(clippy::too_many_arguments)]
fn combine_once(
    gpu: &Gpu,
    partials: &Tensor,
    start: usize,
    (images, c_total, chunks): (usize, usize, usize),
    scale: f32,
    out: &Tensor,
    offset: usize,
    accumulate: bool,
) {
    let (pw, pb) = gpu.window(partials, start, images * c_total * chunks);
    let (ow, ob) = gpu.window(out, offset, c_total);
    let p = ReduceParams {
        planes: images as u32,
        chunks: chunks as u32,
        c_total: c_total as u32,
        a_base: pb,
        out_base: ob,
        flags: accumulate as u32,
        scale,
        ..Default::default()
    };
    launch(
        gpu,
        &COMBINE,
        &Params::of(&p),
        &[(1, &pw), (4, &ow)],
        c_total,
    );
}

/// Per-channel sums over (N, H, W) of x [N, C, H, W]: partials and their
/// combination into `out[offset..offset + C]`.
pub(crate) fn channel_sums(
    gpu: &Gpu,
    op: &'static str,
    mode: SumOf,
    x: &Tensor,
    stats: Option<&Tensor>,
) -> Result<(Tensor, usize)> {
    let (n, c, h, w) = x.nchw();
    plane_partials(gpu, op, mode, x, stats, (n * c, h * w, c), x.numel())
}

/// Per-channel sum over (N, H, W) of x [N, C, H, W] into `out` [C] (added to
/// it when `accumulate`): the bias gradient of a conv.
pub fn channel_sum(gpu: &Gpu, x: &Tensor, out: &Tensor, accumulate: bool) -> Result<()> {
    const OP: &str = "channel_sum";
    super::check_rank(OP, "input", x, 4)?;
    let (n, c, _, _) = x.nchw();
    if out.shape() != [c] {
        return shape_err(
            OP,
            format!(
                "output {:?} must be [{c}] for input {:?}",
                out.shape(),
                x.shape()
            ),
        );
    }
    let (partials, chunks) = channel_sums(gpu, OP, SumOf::A, x, None)?;
    combine(gpu, &partials, (n, c, chunks), 1.0, out, 0, accumulate)
}

/// scale * sum of all elements (or of their squares) of x, as a [1] tensor.
/// Flat sums reduce in levels (partials of partials) until one combine
/// invocation can add what is left.
pub fn sum(gpu: &Gpu, x: &Tensor, squares: bool, scale: f32) -> Result<Tensor> {
    const OP: &str = "sum";
    check_nonempty(OP, "input", x)?;
    let mut mode = if squares { SumOf::Sq } else { SumOf::A };
    let mut level = x.clone();
    loop {
        let len = level.numel();
        let plane_len = len.min(64 * CHUNK).min(gpu.window_elems());
        let planes = len.div_ceil(plane_len);
        let (partials, chunks) =
            plane_partials(gpu, OP, mode, &level, None, (planes, plane_len, 1), len)?;
        if planes * chunks <= max_combine(gpu) {
            let out = gpu.empty(&[1])?;
            combine(gpu, &partials, (planes, 1, chunks), scale, &out, 0, false)?;
            return Ok(out);
        }
        level = partials;
        mode = SumOf::A;
    }
}

/// The f64 CPU reference (the `reference` feature; the tests enable it).
#[cfg(any(test, feature = "reference"))]
pub mod cpu {
    /// Per-channel sums of x [n, c, hw].
    pub fn channel_sum(x: &[f64], (n, c, hw): (usize, usize, usize)) -> Vec<f64> {
        let mut s = vec![0.0; c];
        for ni in 0..n {
            for (ci, sc) in s.iter_mut().enumerate() {
                *sc += x[(ni * c + ci) * hw..(ni * c + ci + 1) * hw]
                    .iter()
                    .sum::<f64>();
            }
        }
        s
    }
}
