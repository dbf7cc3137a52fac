//! Stride-2 transposed passes (a stride-2 conv's input gradient, a
//! stride-2 transpose conv's forward) in one generated kernel: each
//! invocation computes every phase of the 2x2 output blocks of `tp`
//! summed-grid columns in one row, for `to` produced channels.
//!
//! The phase path (`Produce::phase_jobs`) runs one direct job per residue
//! class: four dispatches that each read the whole source, make 1 to 4
//! multiply-adds per accumulator visit, and store every other element.
//! On lavapipe a 3x3 stride-2 input gradient ran there at about half the
//! 3x3 forward's rate. Here one source load feeds every phase, a summed
//! channel's nine taps meet each accumulator in one visit, and each row of
//! a block pair is one vec4: accumulator `a{ry}_{h}_{k}` holds output row
//! `2i + ry`, columns `2 (j0 + 2h)..+4` of produced channel k.
//!
//! Each element sums summed channels, then its phase's taps in the phase
//! job's order, one multiply-add at a time: the same bits as the phase
//! path wherever both group the summed channels alike.
use super::codegen::{
    ConvOperands, LANE, Operand, RowLoads, UNIFORM_VEC4S, dispatch_conv, open_channel_store,
    put_function, write_row_loads, write_weight_share_offsets,
};
use super::direct::{self, DirectJob, Tile};
use super::prep;
use super::{AxisPhase, axis_phases};
use crate::error::Result;
use crate::gpu::{Gpu, Window, holds_accumulators};
use crate::ops::{runs, wgsl_params};
use std::fmt::Write;

/// The register tile of a block kernel: one variant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BlockTile {
    /// Summed-grid columns per invocation (even): `2 tp` output columns
    /// in each of two output rows.
    pub tp: usize,
    /// Produced channels per invocation (a multiple of 4).
    pub to: usize,
    /// Summed channels a pass: each accumulator visit makes every
    /// multiply-add of that many channels.
    pub cpp: usize,
}

impl BlockTile {
    /// The candidates `engine tune` and the tests run. Measured on an
    /// AMD EPYC (lavapipe, ms, a 3x3 stride-2 input gradient 64 -> 64
    /// onto 4x80x80, so rows of 40 summed-grid columns): 20 x 8 with two
    /// channels a pass 11.3-11.5 in three processes, 16 x 8 (fitted to
    /// 14) 11.9-12.2, 8 x 8 12.2-12.9, against 13.7-20.4 for the phase
    /// path's 40 x 16; 8 x 16 swung 11.5-15.4, three channels a pass and
    /// 14 x 12 were slower. A 4x4 stride-2 transpose conv's forward took
    /// 67-78 ms with 16 x 8 against 82-106 for the phase path.
    pub const CANDIDATES: [BlockTile; 3] = [
        BlockTile::new(20, 8, 2),
        BlockTile::new(16, 8, 2),
        BlockTile::new(8, 8, 2),
    ];

    /// What a long run on a CPU adapter leads with (`Produce::lead_and_rivals`).
    pub const LONG_RUN: BlockTile = BlockTile::CANDIDATES[0];

    pub const fn new(tp: usize, to: usize, cpp: usize) -> BlockTile {
        BlockTile { tp, to, cpp }
    }

    /// The direct tile of the same channels, for passes blocks do not fit.
    pub const fn plain(self) -> Tile {
        Tile::new(self.tp, self.to)
    }

    /// Whether this adapter's registers hold the tile's accumulators (4
    /// per column and produced channel: two rows of two phases).
    pub fn fits(&self, gpu: &Gpu) -> bool {
        holds_accumulators(gpu.is_cpu(), 4 * self.tp * self.to)
    }

    /// The tile a `k x k` kernel runs on rows of `cols` summed-grid
    /// columns. At most `MULTIPLY_ADDS` multiply-adds per produced channel
    /// and pass (fewer columns where a 4x4 kernel would exceed them: a
    /// kernel's WGSL grows with them, and naga's front end takes time
    /// quadratic in its expressions at every process start); then as few
    /// column groups as that allows, each as narrow as they can be (an
    /// even width), so that rows of 40 take three groups of 14, not three
    /// of 16. The sums are those of any tile.
    pub fn fitted(self, k: usize, cols: usize) -> BlockTile {
        let most = (MULTIPLY_ADDS / (k * k * self.cpp)) & !1;
        let tp = self.tp.min(most.max(2));
        let groups = cols.div_ceil(tp);
        BlockTile {
            tp: cols.div_ceil(groups).next_multiple_of(2).min(tp),
            ..self
        }
    }

    pub fn name(&self) -> String {
        format!("blocks-tp{}-to{}-c{}", self.tp, self.to, self.cpp)
    }
}

wgsl_params! {
    /// Run-time values of a block kernel.
    pub(crate) struct BlockParams {
        n_count, row_groups, col_groups, c_in,
        x_base, x_nstride, x_cstride, x_w,
        w_cstride, o4_stride, o_count, b_base,
        y_base, y_nstride, y_cstride, y_h, y_w,
        /// See `direct::DirectParams::relu_floor`.
        relu_floor,
    }
}

/// Multiply-adds per produced channel and pass a block kernel makes at
/// most, `k * k * tp * cpp` (`BlockTile::fitted`): 16 x 8 tiles of a 4x4
/// kernel with two channels a pass, about 24,700 WGSL expressions.
const MULTIPLY_ADDS: usize = 512;

/// The phases of one axis: for each residue (0, 1), its taps as (original
/// tap, offset from the block's summed index), in the phase job's order.
type AxisTaps = [Vec<(usize, usize)>; 2];

/// Everything baked into one block kernel.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct BlockSpec {
    /// Original kernel width (taps are `row * k + col`).
    pub k: usize,
    pub rows: AxisTaps,
    pub cols: AxisTaps,
    pub tile: BlockTile,
    pub wg: usize,
    pub bias: bool,
    pub accumulate: bool,
    pub texels: bool,
    /// Weights through a uniform binding (see `direct::DirectSpec::uniform_w`).
    pub uniform_w: bool,
    /// Subgroup size, or 0 (see `direct::DirectSpec::sg`).
    pub sg: usize,
}

/// An axis's taps with offsets counted from the lowest one read, and that
/// lowest offset.
fn axis_taps(phases: &[AxisPhase]) -> Option<(AxisTaps, isize)> {
    let [even, odd] = phases else { return None };
    let lowest = even.min_off.min(odd.min_off);
    let taps = |p: &AxisPhase| -> Vec<(usize, usize)> {
        (0..p.taps)
            .map(|t| {
                let tap = p.first + t as isize * p.step;
                let off = p.min_off - lowest + (t * p.dil) as isize;
                (tap as usize, off as usize)
            })
            .collect()
    };
    Some(([taps(even), taps(odd)], lowest))
}

/// Source indices a block reads along an axis beyond its first.
fn reach(taps: &AxisTaps) -> usize {
    taps.iter().flatten().map(|t| t.1).max().unwrap_or(0)
}

impl BlockSpec {
    pub fn key(&self) -> String {
        format!(
            "blocks k{} r{:?} c{:?} {} wg{} b{} a{} t{} u{} sg{}",
            self.k,
            self.rows,
            self.cols,
            self.tile.name(),
            self.wg,
            self.bias as u8,
            self.accumulate as u8,
            self.texels as u8,
            self.uniform_w as u8,
            self.sg
        )
    }

    pub fn source(&self) -> String {
        let BlockTile { tp, to, .. } = self.tile;
        let (wg, o4) = (self.wg, to / 4);
        let mut w = String::new();
        w.push_str(BlockParams::WGSL);
        let weights = match self.uniform_w {
            true => format!("uniform> W: array<vec4<f32>, {UNIFORM_VEC4S}>"),
            false => "storage, read> W: array<vec4<f32>>".to_owned(),
        };
        let _ = writeln!(
            w,
            "@group(0) @binding(0) var<uniform> P: Params;\n\
             @group(0) @binding(2) var<{weights};\n\
             @group(0) @binding(3) var<storage, read> B: array<f32>;\n\
             @group(0) @binding(4) var<storage, read_write> Y: array<vec4<f32>>;"
        );
        w.push_str(&self.loads().declare(1));
        w.push_str(&put_function(self.accumulate, true));
        let guarded = self.sg > 0;
        let (n_expr, exit) = match guarded {
            true => ("min(n, P.n_count - 1u)", "let live = n < P.n_count;"),
            false => ("n", "if (n >= P.n_count) { return; }"),
        };
        let _ = writeln!(
            w,
            "@compute @workgroup_size({wg})\n\
             fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32, @builtin(num_workgroups) nwg: vec3<u32>{}) {{\n\
             \x20   let pix = (wid.x + wid.z * nwg.x) * {wg}u + lid;\n\
             \x20   let cg = pix % P.col_groups;\n\
             \x20   let rr = pix / P.col_groups;\n\
             \x20   let i = rr % P.row_groups;\n\
             \x20   let n = rr / P.row_groups;\n\
             \x20   {exit}\n\
             \x20   let j0 = cg * {tp}u;\n\
             \x20   var wb = wid.y * {o4}u;\n\
             \x20   var xb = P.x_base + {n_expr} * P.x_nstride + i * P.x_w + j0;",
            match self.sg {
                0 => "",
                _ => ", @builtin(subgroup_invocation_id) sl: u32",
            }
        );
        for ry in 0..2 {
            for h in 0..tp / 2 {
                for k in 0..to {
                    let _ = writeln!(w, "    var a{ry}_{h}_{k} = vec4<f32>(0.0);");
                }
            }
        }
        self.write_channel_loop(&mut w);
        if guarded {
            w.push_str("    if (live) {\n");
        }
        self.write_store(&mut w);
        if guarded {
            w.push_str("    }\n");
        }
        w.push_str("}\n");
        w
    }

    fn loads(&self) -> RowLoads {
        RowLoads::of(true, self.texels)
    }

    /// Source rows a block reads (offsets from its first).
    fn source_rows(&self) -> usize {
        reach(&self.rows) + 1
    }

    /// The loop over summed channels, `cpp` a pass, then the rest one by
    /// one.
    fn write_channel_loop(&self, w: &mut String) {
        let (o4, sg, cpp) = (self.tile.to / 4, self.sg, self.tile.cpp);
        let values = self.k * self.k * o4;
        let shares = match sg {
            0 => 0,
            _ => values.div_ceil(sg),
        };
        write_weight_share_offsets(w, (values, o4), sg, shares);
        let _ = writeln!(
            w,
            "    var c = 0u;\n    for (; c + {}u < P.c_in; c += {cpp}u) {{",
            cpp - 1
        );
        self.write_pass(w, cpp, shares);
        let _ = writeln!(
            w,
            "        xb += {cpp}u * P.x_cstride;\n        wb += {cpp}u * P.w_cstride;\n    }}"
        );
        if cpp > 1 {
            w.push_str("    for (; c < P.c_in; c++) {\n");
            self.write_pass(w, 1, shares);
            w.push_str("        xb += P.x_cstride;\n        wb += P.w_cstride;\n    }\n");
        }
    }

    /// One pass over `channels` summed channels at `xb`, `wb`: each
    /// channel's source rows and weights, then every accumulator's sums.
    fn write_pass(&self, w: &mut String, channels: usize, shares: usize) {
        let (o4, sg) = (self.tile.to / 4, self.sg);
        let (rows, cols) = (self.source_rows(), reach(&self.cols) + 1);
        let read: Vec<usize> = (0..self.tile.tp + cols - 1).collect();
        for cc in 0..channels {
            for r in 0..rows {
                let row = format!("xb + {cc}u * P.x_cstride + {r}u * P.x_w");
                write_row_loads(w, "        ", cc * rows + r, &row, &read, self.loads());
            }
            let wc = format!("wb + {cc}u * P.w_cstride");
            for r in 0..shares {
                let _ = writeln!(w, "        let wl{cc}_{r} = W[{wc} + ws{r}];");
            }
            for tap in 0..self.k * self.k {
                for u in 0..o4 {
                    let m = tap * o4 + u;
                    let wt = match sg {
                        0 => format!("W[{wc} + {tap}u * P.o4_stride + {u}u]"),
                        _ => format!("subgroupBroadcast(wl{cc}_{}, {}u)", m / sg, m % sg),
                    };
                    let _ = writeln!(w, "        let w{cc}_{tap}_{u} = {wt};");
                }
            }
        }
        for ry in 0..2 {
            for h in 0..self.tile.tp / 2 {
                for k in 0..self.tile.to {
                    let acc = format!("a{ry}_{h}_{k}");
                    let parts: Vec<String> = (0..4)
                        .map(|e| {
                            self.element_sum(&acc, (ry, 2 * h + e / 2, e), k, (channels, rows))
                        })
                        .collect();
                    let _ = writeln!(w, "        {acc} = vec4<f32>({});", parts.join(", "));
                }
            }
        }
    }

    /// Component `e` of accumulator `acc` (block column `b`, row phase
    /// `ry`, column phase `e % 2`) plus its multiply-adds: channel by
    /// channel, each phase's taps row-major, one addition at a time.
    fn element_sum(
        &self,
        acc: &str,
        (ry, b, e): (usize, usize, usize),
        k: usize,
        (channels, rows): (usize, usize),
    ) -> String {
        let mut sum = format!("{acc}.{}", LANE[e]);
        for cc in 0..channels {
            for &(p, ro) in &self.rows[ry] {
                for &(q, co) in &self.cols[e % 2] {
                    let x = format!("x{}_{}", cc * rows + ro, b + co);
                    let tap = p * self.k + q;
                    let _ = write!(sum, " + {x} * w{cc}_{tap}_{}.{}", k / 4, LANE[k % 4]);
                }
            }
        }
        sum
    }

    /// The stores: per produced channel, each output row's vec4s, the
    /// rows and columns past the output dropped (its rows are whole vec4s).
    fn write_store(&self, w: &mut String) {
        let (tp, to) = (self.tile.tp, self.tile.to);
        let _ = writeln!(
            w,
            "    let yb = P.y_base + n * P.y_nstride + 2u * i * P.y_w + 2u * j0;\n\
             \x20   let ob = wid.y * {to}u;\n\
             \x20   let floor = vec4<f32>(bitcast<f32>(P.relu_floor));\n\
             \x20   let row1 = 2u * i + 1u < P.y_h;"
        );
        for h in 0..tp / 2 {
            let _ = writeln!(w, "    let col{h} = 2u * j0 + {}u < P.y_w;", 4 * h);
        }
        for k in 0..to {
            let yo = format!("(yb + (ob + {k}u) * P.y_cstride) >> 2u");
            let bias = open_channel_store(w, k, &yo, self.bias);
            for h in 0..tp / 2 {
                let _ = writeln!(
                    w,
                    "        put(yo + {h}u, col{h}, a0_{h}_{k}{bias}, floor);\n\
                     \x20       put(yo + (P.y_w >> 2u) + {h}u, col{h} && row1, a1_{h}_{k}{bias}, floor);"
                );
            }
            w.push_str("    }\n");
        }
    }
}

/// A transposed pass's phases fused: the weights as a whole kernel, and
/// each axis's phases (two of them, residues 0 and 1).
pub(crate) struct BlockJob<'a> {
    /// The pass as a direct job over the whole kernel (source, weights,
    /// output, flags; its row0/col0 are those of the lowest offsets).
    pub job: DirectJob<'a>,
    pub k: usize,
    pub rows: AxisTaps,
    pub cols: AxisTaps,
}

/// The job of a stride-2 transposed pass where blocks fit: two phases per
/// axis, outputs of rows of whole vec4s in vec4-aligned windows.
pub(crate) fn block_job<'a>(
    gpu: &Gpu,
    job: DirectJob<'a>,
    (k, dil, pad): (usize, usize, (usize, usize)),
) -> Option<BlockJob<'a>> {
    let (_, _, yh, yw) = job.y.nchw();
    if !gpu.vec4_windows() || !yw.is_multiple_of(4) || yh < 2 {
        return None;
    }
    let (rows, row0) = axis_taps(&axis_phases(k, 2, dil, pad.0, yh)?)?;
    let (cols, col0) = axis_taps(&axis_phases(k, 2, dil, pad.1, yw)?)?;
    Some(BlockJob {
        job: DirectJob { row0, col0, ..job },
        k,
        rows,
        cols,
    })
}

/// How a block job runs: its tile, grid and splits, fixed for all its
/// dispatches.
struct BlockPlan {
    tile: BlockTile,
    wg: usize,
    texels: bool,
    split: direct::Split,
    /// Output row pairs and column groups per image.
    row_groups: usize,
    col_groups: usize,
    /// The padded source plane.
    rows: usize,
    cols: usize,
}

impl BlockPlan {
    fn of(gpu: &Gpu, b: &BlockJob, tile: BlockTile) -> Result<BlockPlan> {
        let j = &b.job;
        let (_, _, yh, yw) = j.y.nchw();
        let tile = tile.fitted(b.k, yw.div_ceil(2));
        let (row_groups, col_groups) = (yh.div_ceil(2), yw.div_ceil(2).div_ceil(tile.tp));
        let rows = row_groups + reach(&b.rows);
        let cols = (col_groups * tile.tp + reach(&b.cols)).next_multiple_of(4);
        let split = direct::plan(gpu, j, tile.plain(), rows * cols)?;
        let invocations = split.images.min(j.src.nchw().0) * row_groups * col_groups;
        Ok(BlockPlan {
            tile,
            wg: direct::workgroup_size(gpu, tile.plain(), invocations),
            texels: direct::reads_texels(gpu),
            split,
            row_groups,
            col_groups,
            rows,
            cols,
        })
    }

    /// The kernel for summed channels from `c0` (the first group adds the
    /// bias; later ones accumulate).
    fn spec(&self, gpu: &Gpu, b: &BlockJob, c0: usize) -> BlockSpec {
        let first = c0 == 0;
        BlockSpec {
            k: b.k,
            rows: b.rows.clone(),
            cols: b.cols.clone(),
            tile: self.tile,
            wg: self.wg,
            bias: b.job.bias.is_some() && first,
            accumulate: b.job.accumulate || !first,
            texels: self.texels,
            uniform_w: self.split.uniform_w,
            sg: gpu
                .subgroup_size()
                .filter(|&s| self.wg.is_multiple_of(s))
                .unwrap_or(0),
        }
    }
}

/// Records the job with the given tile.
pub(crate) fn run(gpu: &Gpu, b: &BlockJob, tile: BlockTile) -> Result<()> {
    let j = &b.job;
    let (n, cs, _, _) = j.src.nchw();
    let co = j.y.nchw().1;
    let plan = BlockPlan::of(gpu, b, tile)?;
    let sp = &plan.split;
    let weights = direct::job_weights(gpu, j, sp, plan.tile.to)?;
    for (n0, nb) in runs(n, sp.images) {
        for (ci, (c0, clen)) in runs(cs, sp.c_group).enumerate() {
            let region = j.pad_region((n0, nb), (c0, clen), (plan.rows, plan.cols));
            let padded = prep::pad(gpu, j.op, j.src, &region, plan.texels)?;
            let x = Operand::padded(gpu, j.op, &padded, plan.texels)?;
            for (oi, produced) in runs(co, sp.o_group).enumerate() {
                let w = weights.window(gpu, ci, oi);
                dispatch(gpu, b, &plan, (&x, &w), ((n0, nb), (c0, clen), produced));
            }
        }
    }
    Ok(())
}

/// One dispatch: images `n0..n0 + nb`, summed channels `c0..c0 + clen`
/// (the padded source `x`, the weight block `w`), produced `o0..o0 + olen`.
fn dispatch(
    gpu: &Gpu,
    b: &BlockJob,
    plan: &BlockPlan,
    (x, w): (&Operand, &Window),
    ((n0, nb), (c0, clen), (o0, olen)): ((usize, usize), (usize, usize), (usize, usize)),
) {
    let j = &b.job;
    let (cs, (_, co, yh, yw)) = (j.src.nchw().1, j.y.nchw());
    let (tile, y_img) = (plan.tile, co * yh * yw);
    let opad = olen.next_multiple_of(tile.to);
    let spec = plan.spec(gpu, b, c0);
    let bias = j
        .bias
        .filter(|_| spec.bias)
        .map(|t| gpu.window(t, o0, olen));
    let y_start = n0 * y_img + o0 * yh * yw;
    let (y, y_base) = gpu.window(j.y, y_start, (nb - 1) * y_img + olen * yh * yw);
    let p = BlockParams {
        n_count: nb as u32,
        row_groups: plan.row_groups as u32,
        col_groups: plan.col_groups as u32,
        c_in: clen as u32,
        x_base: 0,
        x_nstride: (clen * plan.rows * plan.cols) as u32,
        x_cstride: (plan.rows * plan.cols) as u32,
        x_w: plan.cols as u32,
        w_cstride: (b.k * b.k * opad / 4) as u32,
        o4_stride: (opad / 4) as u32,
        o_count: olen as u32,
        b_base: bias.as_ref().map_or(0, |t| t.1),
        y_base,
        y_nstride: y_img as u32,
        y_cstride: (yh * yw) as u32,
        y_h: yh as u32,
        y_w: yw as u32,
        relu_floor: match j.relu && c0 + clen == cs {
            true => 0.0f32,
            false => f32::NEG_INFINITY,
        }
        .to_bits(),
    };
    let pipeline = gpu.pipeline_for(spec.key(), || spec.source(), "main");
    let groups = (nb * plan.row_groups * plan.col_groups).div_ceil(plan.wg) as u64;
    let operands = ConvOperands {
        x,
        w,
        bias: bias.as_ref().map(|t| &t.0),
        y: &y,
    };
    let o_groups = (opad / tile.to) as u32;
    let p = bytemuck::bytes_of(&p);
    dispatch_conv(gpu, (&pipeline, j.op), p, operands, (groups, o_groups));
}

/// (key, WGSL) of block kernels: the network's two stride-2 transposed
/// geometries (3x3 pad 1, 4x4 pad 1), every tile and flag.
pub(crate) fn sample_sources() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (i, (k, pad)) in [(3, 1), (4, 1)].into_iter().enumerate() {
        let phases = axis_phases(k, 2, 1, pad, 8).expect("two phases");
        let (taps, _) = axis_taps(&phases).expect("two phases");
        for (t, tile) in BlockTile::CANDIDATES.iter().enumerate() {
            let tile = tile.fitted(k, 80);
            for sg in [0, 8] {
                let spec = BlockSpec {
                    k,
                    rows: taps.clone(),
                    cols: taps.clone(),
                    tile,
                    wg: 64,
                    bias: (i + t) % 2 == 0,
                    accumulate: t % 2 == 1,
                    texels: (i + t + sg) % 2 == 0,
                    uniform_w: sg > 0,
                    sg,
                };
                out.push((spec.key(), spec.source()));
            }
        }
    }
    out
}
