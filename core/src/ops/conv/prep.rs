//! Operand preparation for the generated kernels (shaders/conv_prep.wgsl):
//! zero-padded input copies and weights re-laid as [summed][tap][produced]
//! (a tap map, first tap and step per axis, steps may be negative, selects
//! flipped kernels and the sub-kernels of the transposed passes).
use crate::error::Result;
use crate::gpu::{Gpu, Kernel, Operands, TEXEL_STORE_FN, Tensor, Window};
use crate::ops::{CONV_PREP, Params, kernel, launch, runs, wgsl_params};

const PAD: Kernel = kernel(&CONV_PREP, "pad_input");

wgsl_params! {
    /// The uniform of conv_prep.wgsl's `pad_input` (r0, c0 are i32 there:
    /// two's complement bits).
    struct PadParams {
        total, a, b, c, src_base, src_nstride, src_cstride, src_h, src_w, r0, c0,
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

wgsl_params! {
    /// The uniform of the generated row-copy kernel: source offsets and
    /// widths in vec4s for `Source::Quads`, in elements for
    /// `Source::Scalars` (`src_cols`, `col0`).
    struct PadRowsParams {
        total_rows, quads, rows, planes,
        src_base, src_nstride, src_cstride, src_h, src_cols, r0, col0,
    }
}

/// How a row copy reads its source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source {
    /// vec4s, the padded row starting `shift` (0-3, baked in) elements
    /// into a source quad: sources of whole-quad rows.
    Quads(usize),
    /// Four scalar loads per stored quad: rows of other widths (the 10x10
    /// planes at the bottom of the network). Per row, not per element, so
    /// the row's plane and image cost their divisions once: lavapipe
    /// divides by a run-time value lane by lane (a per-element copy of
    /// 4x26x14x16 floats took ~0.5 ms, mostly its five divisions).
    Scalars,
}

/// A row copy that stores vec4s: one invocation walks one padded row
/// (for quads keeping the previous source quad in registers, so each quad
/// costs one vec4 load and one vec4 store; the per-element kernel costs
/// four scalar loads and stores plus index arithmetic; on lavapipe every
/// per-lane memory access is a loop over the SIMD lanes). `texels`: the
/// copy goes straight into the texel texture (`TEXEL_STORE_FN`) that the
/// consumer reads, instead of a buffer the engine would then copy there.
fn pad_rows_source(source: Source, texels: bool) -> String {
    let (src, fetch, first, quad) = match source {
        Source::Quads(shift) => (
            "array<vec4<f32>>",
            "fn fetch(row: u32, row_ok: bool, b: i32) -> vec4<f32> {\n\
             \x20   let v = src[row + u32(clamp(b, 0, i32(P.src_cols) - 1))];\n\
             \x20   return select(vec4<f32>(0.0), v, row_ok && b >= 0 && b < i32(P.src_cols));\n\
             }\n",
            "    var cur = fetch(row, row_ok, i32(P.col0));\n",
            match shift {
                0 => "let q = cur;\n",
                1 => "let q = vec4<f32>(cur.yzw, next.x);\n",
                2 => "let q = vec4<f32>(cur.zw, next.xy);\n",
                _ => "let q = vec4<f32>(cur.w, next.xyz);\n",
            }
            .to_string(),
        ),
        Source::Scalars => (
            "array<f32>",
            "fn fetch(row: u32, row_ok: bool, c: i32) -> f32 {\n\
             \x20   let v = src[row + u32(clamp(c, 0, i32(P.src_cols) - 1))];\n\
             \x20   return select(0.0, v, row_ok && c >= 0 && c < i32(P.src_cols));\n\
             }\n",
            "",
            "let c = i32(P.col0) + 4 * i32(k);\n\
             \x20       let q = vec4<f32>(fetch(row, row_ok, c), fetch(row, row_ok, c + 1), \
             fetch(row, row_ok, c + 2), fetch(row, row_ok, c + 3));\n"
                .to_string(),
        ),
    };
    let advance = match source {
        Source::Quads(_) => (
            "        let next = fetch(row, row_ok, i32(P.col0) + i32(k) + 1);\n",
            "        cur = next;\n",
        ),
        Source::Scalars => ("", ""),
    };
    format!(
        "{params}\
         @group(0) @binding(0) var<uniform> P: Params;\n\
         @group(0) @binding(1) var<storage, read> src: {src};\n\
         {dst}\
         {fetch}\
         @compute @workgroup_size(64)\n\
         fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {{\n\
         \x20   let e = gid.x + (gid.y + gid.z * nwg.y) * nwg.x * 64u;\n\
         \x20   if (e >= P.total_rows) {{ return; }}\n\
         \x20   let plane = e / P.rows;\n\
         \x20   let sr = i32(e % P.rows) + i32(P.r0);\n\
         \x20   let row_ok = sr >= 0 && sr < i32(P.src_h);\n\
         \x20   let row = P.src_base + (plane / P.planes) * P.src_nstride + (plane % P.planes) * P.src_cstride\n\
         \x20       + u32(clamp(sr, 0, i32(P.src_h) - 1)) * P.src_cols;\n\
         \x20   let d0 = e * P.quads;\n\
         {first}\
         \x20   for (var k = 0u; k < P.quads; k++) {{\n\
         {next}\
         \x20       {quad}\
         \x20       store(d0 + k, q);\n\
         {shift_on}\
         \x20   }}\n\
         }}\n",
        params = PadRowsParams::WGSL,
        next = advance.0,
        shift_on = advance.1,
        dst = match texels {
            true => format!(
                "@group(0) @binding(4) var XO: texture_storage_2d<rgba32float, write>;\n\
                 {TEXEL_STORE_FN}\
                 fn store(i: u32, v: vec4<f32>) {{ texel_store(i, v); }}\n"
            ),
            false => "@group(0) @binding(4) var<storage, read_write> dst: array<vec4<f32>>;\n\
                      fn store(i: u32, v: vec4<f32>) { dst[i] = v; }\n"
                .into(),
        },
    )
}

/// A padded copy of a region: a tensor [images, planes, rows, cols], or,
/// for a kernel that reads texels, this thread's texel texture holding the
/// same elements from texel 0 on.
pub(crate) enum Padded {
    Buffer(Tensor),
    Texels(wgpu::TextureView),
}

/// The region of `src` [N, C, H, W] padded with zeros outside the source:
/// straight into the texel texture when `texels` and the rows are whole
/// vec4s (no buffer, no copy), else into a new tensor.
pub(crate) fn pad(
    gpu: &Gpu,
    op: &'static str,
    src: &Tensor,
    r: &PadRegion,
    texels: bool,
) -> Result<Padded> {
    if texels {
        let (sw, sb) = source_window(gpu, src, r);
        if let Some(copy) = RowCopy::of(gpu, src, r, sb) {
            let view = gpu.texel_target(op, r.images * r.planes * r.rows * r.cols)?;
            copy.dispatch(gpu, &sw, (&[], &[(4, &view)]));
            return Ok(Padded::Texels(view));
        }
    }
    pad_input(gpu, src, r).map(Padded::Buffer)
}

/// A new tensor [images, planes, rows, cols] holding the region of `src`
/// [N, C, H, W], zero outside the source.
pub(crate) fn pad_input(gpu: &Gpu, src: &Tensor, r: &PadRegion) -> Result<Tensor> {
    let (_, c, h, w) = src.nchw();
    let dst = gpu.empty(&[r.images, r.planes, r.rows, r.cols])?;
    let (sw, sb) = source_window(gpu, src, r);
    let (dw, _) = gpu.window(&dst, 0, dst.numel());
    if let Some(copy) = RowCopy::of(gpu, src, r, sb) {
        copy.dispatch(gpu, &sw, (&[(4, &dw)], &[]));
        return Ok(dst);
    }
    let p = PadParams {
        total: dst.numel() as u32,
        a: r.rows as u32,
        b: r.cols as u32,
        c: r.planes as u32,
        src_base: sb,
        src_nstride: (c * h * w) as u32,
        src_cstride: (h * w) as u32,
        src_h: h as u32,
        src_w: w as u32,
        r0: r.row0 as i32 as u32,
        c0: r.col0 as i32 as u32,
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

/// The window of `src` the region's planes lie in, and its base.
fn source_window<'a>(gpu: &Gpu, src: &'a Tensor, r: &PadRegion) -> (Window<'a>, u32) {
    let (_, c, h, w) = src.nchw();
    let img = c * h * w;
    let span = (r.images - 1) * img + r.planes * h * w;
    gpu.window(src, r.n0 * img + r.c0 * h * w, span)
}

/// The vec4-storing row copy of a region (`pad_rows_source`).
struct RowCopy {
    p: PadRowsParams,
    source: Source,
}

impl RowCopy {
    /// When the padded rows are whole quads and windows keep vec4
    /// alignment; the source is read as quads where its rows and window
    /// base (`sb`) are whole quads too, else as scalars.
    fn of(gpu: &Gpu, src: &Tensor, r: &PadRegion, sb: u32) -> Option<RowCopy> {
        let (_, c, h, w) = src.nchw();
        if !(gpu.vec4_windows() && r.cols.is_multiple_of(4)) {
            return None;
        }
        let quads = w.is_multiple_of(4) && sb.is_multiple_of(4);
        // Source offsets and widths in the unit the kernel reads.
        let unit = if quads { 4 } else { 1 };
        let p = PadRowsParams {
            total_rows: (r.images * r.planes * r.rows) as u32,
            quads: (r.cols / 4) as u32,
            rows: r.rows as u32,
            planes: r.planes as u32,
            src_base: sb / unit as u32,
            src_nstride: (c * h * w / unit) as u32,
            src_cstride: (h * w / unit) as u32,
            src_h: h as u32,
            src_cols: (w / unit) as u32,
            r0: r.row0 as i32 as u32,
            col0: r.col0.div_euclid(unit as isize) as i32 as u32,
        };
        let source = match quads {
            true => Source::Quads(r.col0.rem_euclid(4) as usize),
            false => Source::Scalars,
        };
        Some(RowCopy { p, source })
    }

    /// Records the copy from `src` into the destination bound at 4.
    fn dispatch(&self, gpu: &Gpu, src: &Window, (windows, texels): Operands) {
        let (source, texel) = (self.source, !texels.is_empty());
        let key = format!("pad_rows {source:?}{}", if texel { " texels" } else { "" });
        let pipeline = gpu.pipeline_for(key, || pad_rows_source(source, texel), "main");
        let mut bound = vec![(1, src)];
        bound.extend_from_slice(windows);
        gpu.dispatch_grid(
            &pipeline,
            "pad_input",
            bytemuck::cast_slice(bytemuck::bytes_of(&self.p)),
            (&bound, texels),
            (self.p.total_rows as u64).div_ceil(64),
            1,
        );
    }
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

/// How a pass splits its channels into blocks: runs of `c_group` of the
/// `cs` summed channels times runs of `o_group` of the `co` produced ones,
/// each block's produced channels padded to a multiple of `to`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BlockGrid {
    pub cs: usize,
    pub c_group: usize,
    pub co: usize,
    pub o_group: usize,
    pub to: usize,
}

impl BlockGrid {
    fn o_runs(&self) -> usize {
        self.co.div_ceil(self.o_group)
    }

    fn blocks(&self) -> usize {
        self.cs.div_ceil(self.c_group) * self.o_runs()
    }

    /// Elements of the largest block.
    fn block_len(&self, taps: usize) -> usize {
        self.c_group * taps * self.o_group.next_multiple_of(self.to)
    }

    /// Elements between blocks: the largest block, rounded up to 256
    /// bytes (every adapter's largest binding offset alignment), so each
    /// block's window starts at its own first element.
    fn stride(&self, taps: usize) -> usize {
        self.block_len(taps).next_multiple_of(64)
    }

    /// Elements from the first block's start to the last one's end.
    fn span(&self, taps: usize, stride: usize) -> usize {
        (self.blocks() - 1) * stride + self.block_len(taps)
    }
}

/// Every block of one pass's weights re-laid in one tensor: block
/// (ci, oi), summed channels `ci * c_group..` and produced `oi * o_group..`,
/// holds [slen, kh*kw, opad] (produced channels zero from olen up to
/// opad, a multiple of `to`) at element `(ci * o_runs + oi) * stride`.
pub(crate) struct WeightBlocks {
    t: Tensor,
    stride: usize,
    o_runs: usize,
    /// Elements a block's window spans (a uniform binding must span its
    /// whole declared array).
    window: usize,
}

impl WeightBlocks {
    /// Block (ci, oi)'s window.
    pub fn window(&self, gpu: &Gpu, ci: usize, oi: usize) -> Window<'_> {
        gpu.window(&self.t, (ci * self.o_runs + oi) * self.stride, self.window)
            .0
    }
}

/// The pass's weights re-laid (`WeightBlocks`): new, or for frozen weights
/// (an inference model's) the ones made at the first call with the same
/// arguments. One dispatch for every block where the weights and the
/// result fit a window, else one per block.
pub(crate) fn prep_weights(
    gpu: &Gpu,
    w: &Tensor,
    m: &WeightMap,
    grid: &BlockGrid,
    min_elems: usize,
) -> Result<WeightBlocks> {
    let taps = m.kh * m.kw;
    let stride = grid.stride(taps);
    let window = grid.block_len(taps).max(min_elems);
    let key = || format!("prep_weights {m:?} {grid:?} min{min_elems}");
    let make = || {
        let dst = gpu.empty(&[(grid.blocks() - 1) * stride + window])?;
        relay(gpu, w, m, grid, stride, &dst);
        Ok(dst)
    };
    let t = w.derived(gpu.in_dry_run(), key, make)?;
    Ok(WeightBlocks {
        t,
        stride,
        o_runs: grid.o_runs(),
        window,
    })
}

wgsl_params! {
    /// The uniform of the generated weight re-laying kernel (r0, c0,
    /// rstep, cstep are i32 there: two's complement bits; strides in
    /// elements, `stride4` in vec4s).
    struct PrepWeightsParams {
        summed, taps, kw, c_group, o_group, co, to, o_runs, y_per_block, stride4,
        src_base, prod_stride, sum_stride, k, r0, c0, rstep, cstep,
    }
}

/// Invocations per workgroup of the weight re-laying kernel.
const PREP_WG: usize = 8;

/// One workgroup per summed channel, block column and group of 8 produced
/// vec4s, looping over the taps: the divisions and tap arithmetic are the
/// same in the whole workgroup, each invocation loads 4 produced channels
/// and stores one vec4 per tap. (One invocation per element, dividing its
/// index three times, took 6.6% of a width-1 training step on lavapipe,
/// which divides lane by lane; one dispatch per block, 1522 per width-1
/// step, cost more in dispatches than in re-laying; one workgroup per
/// (channel, tap) pair, 73728 of 8 lanes per width-1 pass, 1.8x as long
/// as the tap loop.)
fn prep_weights_source() -> String {
    format!(
        "{params}\
         @group(0) @binding(0) var<uniform> P: Params;\n\
         @group(0) @binding(1) var<storage, read> src: array<f32>;\n\
         @group(0) @binding(4) var<storage, read_write> dst: array<vec4<f32>>;\n\
         fn weight(at: u32, o: u32, olen: u32) -> f32 {{\n\
         \x20   if (o >= olen) {{ return 0.0; }}\n\
         \x20   return src[at + o * P.prod_stride];\n\
         }}\n\
         @compute @workgroup_size({PREP_WG})\n\
         fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32, @builtin(num_workgroups) nwg: vec3<u32>) {{\n\
         \x20   let s = wid.x + wid.z * nwg.x;\n\
         \x20   let oi = wid.y / P.y_per_block;\n\
         \x20   let o4 = (wid.y - oi * P.y_per_block) * {PREP_WG}u + lid;\n\
         \x20   let o_first = oi * P.o_group;\n\
         \x20   let olen = min(P.o_group, P.co - o_first);\n\
         \x20   let o4s = (olen + P.to - 1u) / P.to * (P.to / 4u);\n\
         \x20   if (s >= P.summed || o4 >= o4s) {{ return; }}\n\
         \x20   let ci = s / P.c_group;\n\
         \x20   let base = (ci * P.o_runs + oi) * P.stride4 + (s - ci * P.c_group) * P.taps * o4s + o4;\n\
         \x20   let o = o4 * 4u;\n\
         \x20   for (var tap = 0u; tap < P.taps; tap++) {{\n\
         \x20       let p = i32(P.r0) + i32(tap / P.kw) * i32(P.rstep);\n\
         \x20       let q = i32(P.c0) + i32(tap % P.kw) * i32(P.cstep);\n\
         \x20       let at = P.src_base + o_first * P.prod_stride + s * P.sum_stride + u32(p) * P.k + u32(q);\n\
         \x20       let v = vec4<f32>(weight(at, o, olen), weight(at, o + 1u, olen), weight(at, o + 2u, olen), weight(at, o + 3u, olen));\n\
         \x20       dst[base + tap * o4s] = v;\n\
         \x20   }}\n\
         }}\n",
        params = PrepWeightsParams::WGSL
    )
}

/// Records the re-laying of every block of `grid` into `dst`, block
/// (ci, oi) at `(ci * o_runs + oi) * stride`.
fn relay(gpu: &Gpu, w: &Tensor, m: &WeightMap, grid: &BlockGrid, stride: usize, dst: &Tensor) {
    let win = gpu.window_elems();
    if m.span(grid.co, grid.cs) <= win && grid.span(m.kh * m.kw, stride) <= win {
        relay_blocks(gpu, w, m, grid, (0, 0), (dst, 0, stride));
        return;
    }
    // One block at a time, each its own grid of one block.
    for (ci, (s0, slen)) in runs(grid.cs, grid.c_group).enumerate() {
        for (oi, (o0, olen)) in runs(grid.co, grid.o_group).enumerate() {
            let one = BlockGrid {
                cs: slen,
                c_group: slen,
                co: olen,
                o_group: olen,
                to: grid.to,
            };
            let at = (ci * grid.o_runs() + oi) * stride;
            relay_blocks(
                gpu,
                w,
                m,
                &one,
                (s0, o0),
                (dst, at, one.stride(m.kh * m.kw)),
            );
        }
    }
}

/// One dispatch re-laying the blocks of `grid`, whose summed and produced
/// channels start at (s0, o0) of `w`, into `dst` from element `at` on.
fn relay_blocks(
    gpu: &Gpu,
    w: &Tensor,
    m: &WeightMap,
    grid: &BlockGrid,
    (s0, o0): (usize, usize),
    (dst, at, stride): (&Tensor, usize, usize),
) {
    assert!(
        grid.to.is_multiple_of(4),
        "produced channels padded to vec4s"
    );
    let taps = m.kh * m.kw;
    let start = o0 * m.prod_stride + s0 * m.sum_stride;
    let (sw, sb) = gpu.window(w, start, m.span(grid.co, grid.cs));
    let (dw, _) = gpu.window(dst, at, grid.span(taps, stride));
    let y_per_block = (grid.o_group.next_multiple_of(grid.to) / 4).div_ceil(PREP_WG);
    let p = PrepWeightsParams {
        summed: grid.cs as u32,
        taps: taps as u32,
        kw: m.kw as u32,
        c_group: grid.c_group as u32,
        o_group: grid.o_group as u32,
        co: grid.co as u32,
        to: grid.to as u32,
        o_runs: grid.o_runs() as u32,
        y_per_block: y_per_block as u32,
        stride4: (stride / 4) as u32,
        src_base: sb,
        prod_stride: m.prod_stride as u32,
        sum_stride: m.sum_stride as u32,
        k: m.k as u32,
        r0: m.p0 as i32 as u32,
        c0: m.q0 as i32 as u32,
        rstep: m.pstep as i32 as u32,
        cstep: m.qstep as i32 as u32,
    };
    let pipeline = gpu.pipeline_for("prep_weights".into(), prep_weights_source, "main");
    gpu.dispatch_grid(
        &pipeline,
        "prep_weights",
        bytemuck::cast_slice(bytemuck::bytes_of(&p)),
        (&[(1, &sw), (4, &dw)], &[]),
        grid.cs as u64,
        (grid.o_runs() * y_per_block) as u32,
    );
}

wgsl_params! {
    /// The uniform of the slab copy (offsets and strides in vec4s).
    struct SlabRowsParams {
        total, o_count, quads, rows_per_slab, slab_quads, row0,
        src_base, src_nstride, src_cstride, src_h,
    }
}

/// Local row `lr` (from `row0`) of gradient channel `o` goes to slab
/// `lr / rows_per_slab`, where rows are stored [row][channel][column]:
/// one slab holds whole rows of every channel of the block.
fn slab_rows_source() -> String {
    format!(
        "{params}\
         @group(0) @binding(0) var<uniform> P: Params;\n\
         @group(0) @binding(1) var<storage, read> src: array<vec4<f32>>;\n\
         @group(0) @binding(4) var<storage, read_write> dst: array<vec4<f32>>;\n\
         @compute @workgroup_size(64)\n\
         fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {{\n\
         \x20   let e = gid.x + (gid.y + gid.z * nwg.y) * nwg.x * 64u;\n\
         \x20   if (e >= P.total) {{ return; }}\n\
         \x20   let o = e % P.o_count;\n\
         \x20   let lr = e / P.o_count;\n\
         \x20   let gr = P.row0 + lr;\n\
         \x20   let s = P.src_base + (gr / P.src_h) * P.src_nstride + o * P.src_cstride + (gr % P.src_h) * P.quads;\n\
         \x20   let d = (lr / P.rows_per_slab) * P.slab_quads + ((lr % P.rows_per_slab) * P.o_count + o) * P.quads;\n\
         \x20   for (var k = 0u; k < P.quads; k++) {{\n\
         \x20       dst[d + k] = src[s + k];\n\
         \x20   }}\n\
         }}\n",
        params = SlabRowsParams::WGSL
    )
}

/// Rows of a gradient block, cut into uniform-sized slabs.
pub(crate) struct SlabRows {
    /// Channels of the block and row width (a multiple of 4).
    pub channels: usize,
    pub width: usize,
    /// Rows per image (rows of the block run over its images).
    pub height: usize,
    /// Elements between images and between channels of the source.
    pub nstride: usize,
    pub cstride: usize,
    /// First row and rows to copy; rows per slab and elements per slab.
    pub row0: usize,
    pub rows: usize,
    pub rows_per_slab: usize,
    pub slab_elems: usize,
}

/// Copies rows `row0..row0+rows` of every channel of the block that starts
/// at element `base` of `src` (a vec4-aligned window) into slabs of `dst`:
/// slab `r / rows_per_slab` holds row `r` at `(r % rows_per_slab) *
/// channels * width`, channel by channel. The weight gradient binds one
/// slab as a uniform array, whose loads at uniform addresses lavapipe
/// broadcasts instead of loading lane by lane.
pub(crate) fn slab_rows(gpu: &Gpu, src: &Window, base: u32, dst: &Window, s: &SlabRows) {
    let p = SlabRowsParams {
        total: (s.rows * s.channels) as u32,
        o_count: s.channels as u32,
        quads: (s.width / 4) as u32,
        rows_per_slab: s.rows_per_slab as u32,
        slab_quads: (s.slab_elems / 4) as u32,
        row0: s.row0 as u32,
        src_base: base / 4,
        src_nstride: (s.nstride / 4) as u32,
        src_cstride: (s.cstride / 4) as u32,
        src_h: s.height as u32,
    };
    let pipeline = gpu.pipeline_for("slab_rows".into(), slab_rows_source, "main");
    gpu.dispatch_grid(
        &pipeline,
        "slab_rows",
        bytemuck::cast_slice(bytemuck::bytes_of(&p)),
        (&[(1, src), (4, dst)], &[]),
        (s.rows * s.channels).div_ceil(64) as u64,
        1,
    );
}

/// (key, WGSL) of the generated copy kernels, for validation tests.
pub(crate) fn sample_sources() -> Vec<(String, String)> {
    let sources = (0..4).map(Source::Quads).chain([Source::Scalars]);
    let mut out: Vec<(String, String)> = sources
        .flat_map(|source| {
            [false, true].map(|texels| {
                let tag = if texels { " texels" } else { "" };
                (
                    format!("pad_rows {source:?}{tag}"),
                    pad_rows_source(source, texels),
                )
            })
        })
        .collect();
    out.push(("slab_rows".into(), slab_rows_source()));
    out.push(("prep_weights".into(), prep_weights_source()));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `dst[n, c, r, q] = src[n0 + n, c0 + c, r + row0, q + col0]`, 0 outside.
    fn reference(src: &[f32], (c, h, w): (usize, usize, usize), r: &PadRegion) -> Vec<f32> {
        let mut out = Vec::new();
        for n in r.n0..r.n0 + r.images {
            for ch in r.c0..r.c0 + r.planes {
                for row in 0..r.rows as isize {
                    for col in 0..r.cols as isize {
                        let (sr, sc) = (row + r.row0, col + r.col0);
                        let inside = (0..h as isize).contains(&sr) && (0..w as isize).contains(&sc);
                        out.push(if inside {
                            src[((n * c + ch) * h + sr as usize) * w + sc as usize]
                        } else {
                            0.0
                        });
                    }
                }
            }
        }
        out
    }

    #[test]
    fn padded_copies_match_the_reference_for_every_shift_and_width() {
        let gpu = Gpu::new(None).expect("a GPU adapter");
        // Width 8 reads the source as quads, width 7 as scalars; padded
        // rows of 13 take the per-element kernel.
        for (h, w) in [(5, 8), (5, 7)] {
            let (n, c) = (3, 4);
            let src: Vec<f32> = (0..n * c * h * w).map(|i| i as f32 + 1.0).collect();
            let t = gpu.upload(&[n, c, h, w], &src).unwrap();
            for col0 in -3..=5 {
                for (row0, rows, cols) in [(-1, 7, 12), (2, 4, 8), (-2, 9, 16), (-1, 7, 13)] {
                    let r = PadRegion {
                        n0: 1,
                        images: 2,
                        c0: 1,
                        planes: 3,
                        row0,
                        col0,
                        rows,
                        cols,
                    };
                    let got = gpu.read(&pad_input(&gpu, &t, &r).unwrap()).unwrap();
                    let want = reference(&src, (c, h, w), &r);
                    assert_eq!(got, want, "{h}x{w} row0 {row0} col0 {col0} {rows}x{cols}");
                }
            }
        }
    }
}
