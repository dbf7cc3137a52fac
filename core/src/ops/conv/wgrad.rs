//! Weight gradient as a GEMM over (image, row, column), generated per
//! shape: `dw[o, c, p, q] = sum_{n,i,j} g[n,o,i,j] * xpad[n, c, i*s + p*d, j*s + q*d]`.
//!
//! Lanes run over summed-input channels c; the gradient-output channel
//! group is `workgroup_id.y` and the row chunk is the flattened x/z
//! workgroup index, so the loops over rows and columns and every load of
//! `g` are uniform across a workgroup (one broadcast transaction on a
//! GPU). lavapipe loads a storage value lane by lane even then, so on CPU
//! adapters `g` is copied into 64 KiB slabs of whole rows and read through
//! a uniform binding, one dispatch per slab (`Job::uniform_pass`). Each
//! invocation keeps `k*k*to/4` vec4 accumulators (taps x channel group)
//! and walks a row `jt` columns at a time, loading each needed input value
//! once per step. Row chunks (split-K) write partial sums that
//! `reduce::sum_partials` adds in a fixed order: deterministic.
use super::codegen::{
    LANE, Operand, RowLoads, UNIFORM_VEC4S, quads_of, tap_cols, write_bordered_row,
    write_quad_masks, write_row_loads, write_row_masks,
};
use super::prep::{self, PadRegion, SlabRows};
use crate::error::{EngineError, Result};
use crate::gpu::Kernel;
use crate::gpu::{Gpu, Tensor, Window, holds_accumulators};
use crate::ops::reduce::ReduceParams;
use crate::ops::{
    Params, REDUCE, items_per_window, kernel, launch_lanes, runs, vec4_lanes, wgsl_params,
};
use std::fmt::Write;
use std::sync::Arc;

const SUM_PARTIALS: Kernel = kernel(&REDUCE, "sum_partials");
/// Invocations a weight-gradient dispatch aims for (chunks x channels): a
/// discrete GPU needs many; lavapipe runs a workgroup per CPU thread and
/// pays for every extra row chunk in the partial sums (on the 2-core
/// machine, 64 x 64 channels at 4x80x80: 620 ms of a width-0.25 step's
/// weight gradients with 16384, 390-400 ms with 128-512).
fn target_threads(gpu: &Gpu) -> usize {
    if gpu.is_cpu() { 512 } else { 16384 }
}

/// One weight-gradient variant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GemmTile {
    /// Gradient-output channels per invocation (a multiple of 4).
    pub to: usize,
    /// Summed-input channels per invocation (`wg` apart). Every step's
    /// gradient values, uniform across the workgroup but on lavapipe still
    /// loaded lane by lane, then feed `ct` times as many accumulators.
    pub ct: usize,
    /// Columns per step (the largest divisor of the row width up to this).
    pub jt: usize,
    /// Invocations per workgroup (input channels).
    pub wg: usize,
    /// Reads both operands from storage even where texel operands or
    /// uniform slabs are on: a long run's rival on CPU adapters
    /// (`WgradVariant::long_run`). The padded input from storage gives the
    /// same sums in the same order; g from storage is cut into row chunks
    /// of its own rather than the slabs', so its sums are added in another
    /// order (other bits, the same reference).
    pub storage: bool,
}

impl GemmTile {
    /// Measured on lavapipe (conv3x3 64->64, 4x80x80, GFLOP/s, with vec4
    /// loads): to16-jt8 ~18-19, to8-jt8 ~17-20, to8-jt4 ~16; 16-column
    /// steps were no faster (to8-jt16 17.4, to4-jt16 15.3). Two input
    /// channels per lane (ct2) gained a third on a slower day (whole
    /// step's weight gradients 620 -> 400 ms at width 0.25); four (ct4)
    /// were no faster than two and compiled far longer.
    pub const CANDIDATES: [GemmTile; 9] = [
        GemmTile::new(8, 4, 8),
        GemmTile::new(16, 8, 8),
        GemmTile::new(16, 4, 8),
        GemmTile::new(8, 8, 8),
        GemmTile::new(8, 4, 32),
        GemmTile::new(16, 8, 8).with_ct(2),
        GemmTile::new(8, 8, 8).with_ct(2),
        GemmTile::new(16, 4, 8).with_ct(2),
        // The CPU rule for fewer than 8 gradient channels.
        GemmTile::new(4, 8, 8).with_ct(2),
    ];

    pub const fn new(to: usize, jt: usize, wg: usize) -> GemmTile {
        GemmTile {
            to,
            ct: 1,
            jt,
            wg,
            storage: false,
        }
    }

    pub const fn with_ct(self, ct: usize) -> GemmTile {
        GemmTile { ct, ..self }
    }

    /// The same tile reading its operands from storage (`storage`).
    pub const fn reading_storage(self) -> GemmTile {
        GemmTile {
            storage: true,
            ..self
        }
    }

    /// Input channels one workgroup covers.
    fn channels(&self) -> usize {
        self.ct * self.wg
    }

    /// Float accumulators per invocation for a kernel of `taps` taps.
    pub fn accumulators(&self, taps: usize) -> usize {
        taps * self.to * self.ct
    }

    /// The candidates this adapter can hold for a kernel of `taps` taps
    /// (see `gpu::holds_accumulators`).
    pub fn candidates(gpu: &Gpu, taps: usize) -> Vec<GemmTile> {
        GemmTile::candidates_for(gpu.is_cpu(), taps)
    }

    fn candidates_for(cpu: bool, taps: usize) -> Vec<GemmTile> {
        let fits = |t: &GemmTile| holds_accumulators(cpu, t.accumulators(taps));
        GemmTile::CANDIDATES.into_iter().filter(fits).collect()
    }

    pub fn name(&self) -> String {
        let ct = match self.ct {
            1 => String::new(),
            n => format!("-ct{n}"),
        };
        let reads = if self.storage { "-storage" } else { "" };
        format!("gemm-to{}{ct}-jt{}-wg{}{reads}", self.to, self.jt, self.wg)
    }
}

wgsl_params! {
    pub(crate) struct WgradParams {
        out_h, out_w, c_count, o_count, c_groups,
        g_base, g_nstride, g_cstride, g_rstride,
        x_nstride, x_cstride, x_w,
        rows_per_chunk, total_rows, row0, slot, slab_rows,
    }
}

#[derive(Clone, Copy, Debug)]
struct WgradSpec {
    k: usize,
    s: usize,
    d: usize,
    to: usize,
    ct: usize,
    jt: usize,
    wg: usize,
    /// Rows of `g` and of the padded input start at multiples of 4
    /// elements, so a step's values are read as aligned vec4s: on
    /// lavapipe a vec4 load costs about half of four scalar loads.
    vec: bool,
    /// `g` through a uniform binding of one slab (`prep::slab_rows`),
    /// rows [row][channel][column] from `row0`: lavapipe gathers a uniform
    /// value at a run-time offset lane by lane, but without the storage
    /// loads' branch per lane (3x3 64 -> 64 at 4x80x80 with the
    /// gradient's loads removed altogether ran 2.4x as fast). Needs `vec`.
    uniform_g: bool,
    /// The padded input as texels (`Gpu::texel_operands`). Needs `vec`.
    texels: bool,
    /// Uniform slabs per dispatch (with `uniform_g`), each its own
    /// binding (`SLAB_BINDINGS`) and its own copy of the row loop, run one
    /// after the other by every invocation: fewer dispatches, which cost
    /// lavapipe tens of microseconds each whatever they do.
    slabs: usize,
    /// Reads the source itself, not a padded copy, with zeros selected
    /// outside it (`Borders`). Needs `vec` and not `texels`.
    borders: Option<Borders>,
    /// The subgroup size, or 0: a step's gradient values are loaded by the
    /// lanes of a subgroup together, each its own share, and passed to
    /// every lane by `subgroupBroadcast`. lavapipe 22.3 loads even a value
    /// every lane shares once per lane (only constant offsets load once),
    /// so this is 1/8 of those loads. Needs `vec`.
    sg: usize,
}

/// The source row and column of padded element (0, 0) (`WgradGeom`), as
/// constants of a kernel that reads the source itself: per row of `g`, a
/// mask per tap row (`ok{r}`, r its offset), and per step a mask per vec4
/// of the row (`in{q}`; the source's rows are whole vec4s, so a vec4 lies
/// wholly in or out), then one select per loaded vec4. The same values in the same
/// order as from the padded copy, so the same bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Borders {
    row0: isize,
    col0: isize,
}

impl Borders {
    /// Where the first padded column lies in its source vec4.
    fn shift(&self) -> usize {
        self.col0.rem_euclid(4) as usize
    }
}

impl WgradSpec {
    fn key(&self) -> String {
        format!(
            "wgrad k{} s{} d{} to{} ct{} jt{} wg{} v{} u{} t{} sg{}{}{}",
            self.k,
            self.s,
            self.d,
            self.to,
            self.ct,
            self.jt,
            self.wg,
            self.vec as u8,
            self.uniform_g as u8,
            self.texels as u8,
            self.sg,
            match self.slabs {
                1 => String::new(),
                n => format!(" x{n}"),
            },
            match self.borders {
                None => String::new(),
                Some(b) => format!(" e{},{}", b.row0, b.col0),
            }
        )
    }

    fn source(&self) -> String {
        let WgradSpec { k, to, ct, wg, .. } = *self;
        let o4 = to / 4;
        let gt = match (self.vec, self.uniform_g) {
            (true, true) => format!("uniform> G4: array<vec4<f32>, {UNIFORM_VEC4S}>"),
            (true, false) => "storage, read> G4: array<vec4<f32>>".into(),
            (false, _) => "storage, read> G: array<f32>".into(),
        };
        let mut w = String::new();
        w.push_str(WgradParams::WGSL);
        w.push_str(&self.row_loads().declare(2));
        for (b, binding) in SLAB_BINDINGS.iter().enumerate().take(self.slabs).skip(1) {
            let _ = writeln!(
                w,
                "@group(0) @binding({binding}) var<uniform> G4_{b}: array<vec4<f32>, {UNIFORM_VEC4S}>;"
            );
        }
        let _ = writeln!(
            w,
            "@group(0) @binding(0) var<uniform> P: Params;\n\
             @group(0) @binding(1) var<{gt};\n\
             @group(0) @binding(4) var<storage, read_write> D: array<f32>;\n\
             @compute @workgroup_size({wg})\n\
             fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32, @builtin(num_workgroups) nwg: vec3<u32>{}) {{\n\
             \x20   let flat = wid.x + wid.z * nwg.x;\n\
             \x20   let chunk = flat / P.c_groups;\n\
             \x20   let cb = (flat % P.c_groups) * {}u + lid;\n\
             \x20   {}\n\
             \x20   let ob = wid.y * {to}u;",
            match self.sg {
                0 => "",
                _ => ", @builtin(subgroup_invocation_id) sl: u32",
            },
            wg * ct,
            // Every lane of a subgroup takes part in its loads; a lane
            // past the channels loads the last one and stores nothing.
            match self.sg {
                0 => "if (cb >= P.c_count) { return; }",
                _ => "",
            },
        );
        // Channels past the end load the last one and store nothing.
        for e in 0..ct {
            let _ = writeln!(
                w,
                "    let c{e} = cb + {}u;\n    let xc{e} = min(c{e}, P.c_count - 1u) * P.x_cstride;",
                e * wg
            );
        }
        for v in 0..to {
            let _ = writeln!(
                w,
                "    let go{v} = P.g_base + min(ob + {v}u, P.o_count - 1u) * P.g_cstride;"
            );
        }
        self.write_shared_offsets(&mut w);
        if self.borders.is_some() {
            // The source's planes: rows of x_w, x_cstride elements each.
            w.push_str("    let src_h = P.x_cstride / P.x_w;\n    let src_q = P.x_w >> 2u;\n");
        }
        for e in 0..ct {
            for p in 0..k {
                for q in 0..k {
                    for u in 0..o4 {
                        let _ = writeln!(w, "    var a{e}_{p}_{q}_{u} = vec4<f32>(0.0);");
                    }
                }
            }
        }
        for b in 0..self.slabs {
            self.write_rows(&mut w, b);
        }
        self.store(&mut w);
        w.push_str("}\n");
        w
    }

    /// The loop over one chunk's rows of slab `b` (the only slab, or the
    /// rows in storage): a slab holds `slab_rows` rows from row0 + b *
    /// slab_rows only; storage holds every row.
    fn write_rows(&self, w: &mut String, b: usize) {
        let (k, ct) = (self.k, self.ct);
        let (first, g_row) = match self.uniform_g {
            true => (
                format!("P.row0 + {b}u * P.slab_rows"),
                "(gr - first) * P.g_rstride",
            ),
            false => ("P.row0".into(), "n * P.g_nstride + i * P.g_rstride"),
        };
        let last = match self.uniform_g {
            true => "min(first + P.slab_rows, P.total_rows)",
            false => "P.total_rows",
        };
        let _ = writeln!(
            w,
            "    {{\n\
             \x20   let first = {first};\n\
             \x20   let row_begin = first + chunk * P.rows_per_chunk;\n\
             \x20   let row_end = min(row_begin + P.rows_per_chunk, {last});\n\
             \x20   for (var gr = row_begin; gr < row_end; gr++) {{\n\
             \x20       let n = gr / P.out_h;\n\
             \x20       let i = gr % P.out_h;\n\
             \x20       let gb = {g_row};",
        );
        self.write_row_start(w);
        let _ = writeln!(
            w,
            "        for (var j = 0u; j < P.out_w; j += {}u) {{",
            self.jt
        );
        self.write_g_loads(w, b);
        let cols = tap_cols(self.jt, k, self.s, self.d);
        match self.borders {
            Some(borders) => self.write_bordered_loads(w, borders, &cols),
            None => {
                for e in 0..ct {
                    for p in 0..k {
                        let row = format!("xb + xc{e} + {}u * P.x_w + j * {}u", p * self.d, self.s);
                        write_row_loads(
                            w,
                            "            ",
                            e * k + p,
                            &row,
                            &cols,
                            self.row_loads(),
                        );
                    }
                }
            }
        }
        self.accumulate(w);
        w.push_str("        }\n    }\n    }\n");
    }

    /// `xb`, where a row of `g`'s first input row starts in the padded
    /// copy; with borders, in the source (an i32 that may lie before it),
    /// and `ok{r}`, whether the tap row at offset r lies in the source.
    fn write_row_start(&self, w: &mut String) {
        let s = self.s;
        let Some(b) = self.borders else {
            let _ = writeln!(w, "        let xb = n * P.x_nstride + i * {s}u * P.x_w;");
            return;
        };
        let _ = writeln!(
            w,
            "        let top = i32(i * {s}u) + ({});\n\
             \x20       let xb = i32(n * P.x_nstride) + top * i32(P.x_w);",
            b.row0
        );
        let offsets: Vec<usize> = (0..self.k).map(|p| p * self.d).collect();
        write_row_masks(w, "        ", &offsets, "src_h");
    }

    /// A step's loads from the source (`borders`): `in{q}`, whether the
    /// step's vec4 q of a row lies in it, then per channel and tap row
    /// the masked vec4s and their elements `x{row}_{m}` (column m of the
    /// step's padded window).
    fn write_bordered_loads(&self, w: &mut String, b: Borders, cols: &[usize]) {
        let shift = b.shift();
        let first = (b.col0 - shift as isize) / 4;
        let _ = writeln!(
            w,
            "            let left = i32((j * {}u) >> 2u) + ({first});",
            self.s
        );
        write_quad_masks(w, "            ", &quads_of(cols, shift), "src_q");
        for e in 0..self.ct {
            for p in 0..self.k {
                let row = format!(
                    "((xb + i32(xc{e}) + {} * i32(P.x_w)) >> 2u) + left",
                    p * self.d
                );
                let x = (e * self.k + p, p * self.d);
                write_bordered_row(w, "            ", x, &row, (cols, shift));
            }
        }
    }

    /// With `sg`: `gs{r}`, the vec4 offset (less the step's) of the
    /// value lane `sl` loads in round r of a step; value m of a step is
    /// gradient channel m / (jt / 4), vec4 m % (jt / 4) of the step.
    fn write_shared_offsets(&self, w: &mut String) {
        if self.sg == 0 {
            return;
        }
        let q = self.jt / 4;
        let values = self.to * q;
        for r in 0..values.div_ceil(self.sg) {
            let _ = writeln!(
                w,
                "    let gm{r} = min({}u + sl, {}u);\n    let gs{r} = ((P.g_base + min(ob + gm{r} / {q}u, P.o_count - 1u) * P.g_cstride) >> 2u) + gm{r} % {q}u;",
                r * self.sg,
                values - 1
            );
        }
    }

    fn row_loads(&self) -> RowLoads {
        RowLoads::of(self.vec, self.texels)
    }

    /// `g{t}_{u}` (column t of the step, gradient channels 4u..4u+3) from
    /// scalar loads, or with `vec` from aligned vec4 loads along the row
    /// (`jt` a multiple of 4), assembled by swizzles (free in SIMD).
    fn write_g_loads(&self, w: &mut String, b: usize) {
        let (to, jt) = (self.to, self.jt);
        let g4 = match b {
            0 => "G4".to_string(),
            b => format!("G4_{b}"),
        };
        if self.sg > 0 {
            let q = jt / 4;
            let _ = writeln!(w, "            let gq = (gb + j) >> 2u;");
            for r in 0..(to * q).div_ceil(self.sg) {
                let _ = writeln!(w, "            let gw{r} = {g4}[gs{r} + gq];");
            }
            for v in 0..to {
                for tq in 0..q {
                    let m = v * q + tq;
                    let _ = writeln!(
                        w,
                        "            let gv{v}_{tq} = subgroupBroadcast(gw{}, {}u);",
                        m / self.sg,
                        m % self.sg
                    );
                }
            }
        } else if self.vec {
            let _ = writeln!(w, "            let gq = (gb + j) >> 2u;");
            for v in 0..to {
                for tq in 0..jt / 4 {
                    let _ = writeln!(
                        w,
                        "            let gv{v}_{tq} = {g4}[(go{v} >> 2u) + gq + {tq}u];"
                    );
                }
            }
        }
        for t in 0..jt {
            for u in 0..to / 4 {
                let parts: Vec<String> = (0..4)
                    .map(|e| match self.vec {
                        true => format!("gv{}_{}.{}", 4 * u + e, t / 4, LANE[t % 4]),
                        false => format!("G[go{} + gb + j + {t}u]", 4 * u + e),
                    })
                    .collect();
                let _ = writeln!(
                    w,
                    "            let g{t}_{u} = vec4<f32>({});",
                    parts.join(", ")
                );
            }
        }
    }

    /// Accumulator-major: each accumulator takes its whole step in one run
    /// (lavapipe keeps only a few of them in registers); per accumulator
    /// the columns are summed in order, as in every variant.
    fn accumulate(&self, w: &mut String) {
        let WgradSpec {
            k,
            s,
            d,
            to,
            ct,
            jt,
            ..
        } = *self;
        for e in 0..ct {
            for p in 0..k {
                for q in 0..k {
                    for u in 0..to / 4 {
                        for t in 0..jt {
                            let (m, x) = (t * s + q * d, e * k + p);
                            let _ =
                                writeln!(w, "            a{e}_{p}_{q}_{u} += x{x}_{m} * g{t}_{u};");
                        }
                    }
                }
            }
        }
    }

    fn store(&self, w: &mut String) {
        let kk = self.k * self.k;
        for e in 0..self.ct {
            let _ = writeln!(
                w,
                "    let pb{e} = ((P.slot + chunk) * P.o_count * P.c_count + c{e}) * {kk}u;"
            );
            for v in 0..self.to {
                let _ = writeln!(
                    w,
                    "    if (c{e} < P.c_count && ob + {v}u < P.o_count) {{\n        let po = pb{e} + (ob + {v}u) * P.c_count * {kk}u;"
                );
                for tap in 0..kk {
                    let _ = writeln!(
                        w,
                        "        D[po + {tap}u] = a{e}_{}_{}_{}.{};",
                        tap / self.k,
                        tap % self.k,
                        v / 4,
                        LANE[v % 4]
                    );
                }
                w.push_str("    }\n");
            }
        }
    }
}

/// Geometry of one weight gradient: kernel k, stride s, dilation d, and
/// the source row/column of padded element (0, 0) (minus the pads).
#[derive(Clone, Copy, Debug)]
pub(crate) struct WgradGeom {
    pub k: usize,
    pub s: usize,
    pub d: usize,
    pub row0: isize,
    pub col0: isize,
}

/// Floats in one uniform slab of `g`.
const SLAB_ELEMS: usize = UNIFORM_VEC4S * 4;
/// The bindings of the slabs one dispatch reads (`WgradSpec::slabs`): 1
/// for the first, then free numbers of the kernel's layout. Four: with
/// the parameters, five uniform buffers, within WebGPU's default 12.
const SLAB_BINDINGS: [u32; 4] = [1, 5, 6, 7];
/// Workgroups a slab's dispatch aims for (lavapipe runs one per thread).
const SLAB_WORKGROUPS: usize = 8;

/// What every dispatch of one weight gradient shares.
struct Job<'a> {
    gpu: &'a Gpu,
    op: &'static str,
    gout: &'a Tensor,
    dw: &'a Tensor,
    /// The kernel (one slab per dispatch; `uniform_pass` may take more).
    spec: WgradSpec,
    tile: GemmTile,
    kk: usize,
    /// Loop iterations one row costs an invocation.
    row_cost: usize,
    accumulate: bool,
}

/// One block of dw's sums: images `n0..n0+nb`, input channels `c0..` (in
/// the padded copy `x`, `plane` elements per channel), gradient channels
/// `o0..`.
struct Block<'a> {
    n0: usize,
    nb: usize,
    c0: usize,
    clen: usize,
    o0: usize,
    olen: usize,
    x: &'a Operand<'a>,
    plane: usize,
    x_w: usize,
    /// The first image group: dw is written, not added (unless `accumulate`).
    first: bool,
}

impl Job<'_> {
    fn dims(&self) -> (usize, usize, usize, usize) {
        self.gout.nchw()
    }

    /// The window of `gout` holding the block's images and channels.
    fn g_window(&self, b: &Block) -> (Window<'_>, u32) {
        let (_, o_tot, oh, ow) = self.dims();
        let g_img = o_tot * oh * ow;
        self.gpu.window(
            self.gout,
            b.n0 * g_img + b.o0 * oh * ow,
            (b.nb - 1) * g_img + b.olen * oh * ow,
        )
    }

    fn params(&self, b: &Block, rows_per_chunk: usize) -> WgradParams {
        let (_, o_tot, oh, ow) = self.dims();
        WgradParams {
            out_h: oh as u32,
            out_w: ow as u32,
            c_count: b.clen as u32,
            o_count: b.olen as u32,
            c_groups: self.groups(b).0 as u32,
            g_nstride: (o_tot * oh * ow) as u32,
            g_cstride: (oh * ow) as u32,
            g_rstride: ow as u32,
            x_nstride: (b.clen * b.plane) as u32,
            x_cstride: b.plane as u32,
            x_w: b.x_w as u32,
            rows_per_chunk: rows_per_chunk as u32,
            total_rows: (b.nb * oh) as u32,
            ..Default::default()
        }
    }

    /// Workgroups of a block's dispatch per row chunk (input-channel
    /// groups) and along y (gradient-channel tiles).
    fn groups(&self, b: &Block) -> (usize, usize) {
        (
            b.clen.div_ceil(self.tile.channels()),
            b.olen.div_ceil(self.tile.to),
        )
    }

    /// The pipeline of the kernel `spec`, fetched once per pass over a
    /// block rather than per dispatch.
    fn pipeline(&self, spec: WgradSpec) -> Arc<wgpu::ComputePipeline> {
        self.gpu.pipeline_for(spec.key(), || spec.source(), "main")
    }

    /// One dispatch of `pipeline` over `chunks` row chunks of the block,
    /// `g` from `g` (one window per slab, bound at `SLAB_BINDINGS`).
    fn dispatch(
        &self,
        pipeline: &wgpu::ComputePipeline,
        p: &WgradParams,
        g: &[Window],
        b: &Block,
        (partials, chunks): (&Window, usize),
    ) {
        let (c_groups, o_groups) = self.groups(b);
        let params = bytemuck::cast_slice(bytemuck::bytes_of(p));
        let (flat, y) = ((chunks * c_groups) as u64, o_groups as u32);
        let mut windows: Vec<(u32, &Window)> = SLAB_BINDINGS.iter().copied().zip(g).collect();
        windows.push((4, partials));
        let mut texels = vec![];
        b.x.bind(2, &mut windows, &mut texels);
        self.gpu
            .dispatch_grid(pipeline, self.op, params, (&windows, &texels), flat, y);
    }

    fn slice(&self, b: &Block) -> DwSlice {
        DwSlice {
            o0: b.o0,
            olen: b.olen,
            c0: b.c0,
            clen: b.clen,
            c_tot: self.dw.shape()[1],
            kk: self.kk,
        }
    }

    /// `g` read from storage: rows split into chunks, one dispatch.
    fn storage_pass(&self, b: &Block) -> Result<()> {
        let gpu = self.gpu;
        let win = gpu.window_elems();
        let total_rows = b.nb * self.dims().2;
        let per = b.olen * b.clen * self.kk;
        let (c_groups, o_groups) = self.groups(b);
        let max_rows = (gpu.loop_budget() / self.row_cost).max(1);
        let chunks = target_threads(gpu)
            .div_ceil(o_groups * c_groups * self.tile.wg)
            .max(total_rows.div_ceil(max_rows))
            .min((win / per).clamp(1, gpu.loop_budget() / 4))
            .clamp(1, total_rows);
        let rows_per_chunk = total_rows.div_ceil(chunks);
        if rows_per_chunk > max_rows {
            items_per_window(
                gpu,
                self.op,
                per * total_rows.div_ceil(max_rows),
                "partial-sum stack",
            )?;
        }
        let chunks = total_rows.div_ceil(rows_per_chunk);
        let partials = gpu.empty(&[chunks * per])?;
        let (pw, _) = gpu.window(&partials, 0, chunks * per);
        let (gw, gb) = self.g_window(b);
        let p = WgradParams {
            g_base: gb,
            ..self.params(b, rows_per_chunk)
        };
        let pipeline = self.pipeline(self.spec);
        self.dispatch(&pipeline, &p, &[gw], b, (&pw, chunks));
        let add = self.accumulate || !b.first;
        add_partials(gpu, &pw, chunks, self.dw, self.slice(b), add);
        Ok(())
    }

    /// `g` through uniform bindings: the block's rows are copied into
    /// 64 KiB slabs of whole rows (`prep::slab_rows`), up to
    /// `SLAB_BINDINGS.len()` slabs per dispatch, whose rows are cut into
    /// chunks; each chunk's invocations add up its rows of every slab of
    /// the dispatch and write their own partial sums; the partials are
    /// added in order, as many slabs at a time as a window holds.
    fn uniform_pass(&self, b: &Block) -> Result<()> {
        let gpu = self.gpu;
        let win = gpu.window_elems();
        let (_, _, oh, ow) = self.dims();
        let total_rows = b.nb * oh;
        let rstride = b.olen * ow;
        let rows = (SLAB_ELEMS / rstride).min(total_rows);
        let slabs = total_rows.div_ceil(rows);
        let (c_groups, o_groups) = self.groups(b);
        // Every slab's rows of a chunk run in one invocation's loops.
        let max_rows = (gpu.loop_budget() / self.row_cost).max(1);
        let uniforms = gpu.limits.max_uniform_buffers_per_shader_stage as usize;
        let per_dispatch = slabs
            .min(SLAB_BINDINGS.len())
            .min(max_rows)
            .min(uniforms.saturating_sub(1))
            .max(1);
        let pipeline = self.pipeline(WgradSpec {
            slabs: per_dispatch,
            ..self.spec
        });
        // Enough workgroups per dispatch to keep every CPU thread busy.
        let chunk_rows = rows
            .div_ceil(SLAB_WORKGROUPS.div_ceil(c_groups * o_groups))
            .min(max_rows / per_dispatch);
        let chunks = rows.div_ceil(chunk_rows);
        let per = b.olen * b.clen * self.kk * chunks;
        items_per_window(gpu, self.op, per, "dispatch's partial sums")?;
        let batch = slabs.min(win / SLAB_ELEMS).min(win / per * per_dispatch);
        let slab_t = gpu.empty(&[batch * SLAB_ELEMS])?;
        let partials = gpu.empty(&[batch.div_ceil(per_dispatch) * per])?;
        let (pw, _) = gpu.window(&partials, 0, batch.div_ceil(per_dispatch) * per);
        let (gw, gb) = self.g_window(b);
        for (s0, count) in runs(slabs, batch) {
            let row0 = s0 * rows;
            let copy = SlabRows {
                channels: b.olen,
                width: ow,
                height: oh,
                nstride: self.dims().1 * oh * ow,
                cstride: oh * ow,
                row0,
                rows: (count * rows).min(total_rows - row0),
                rows_per_slab: rows,
                slab_elems: SLAB_ELEMS,
            };
            let (sw, _) = gpu.window(&slab_t, 0, count * SLAB_ELEMS);
            prep::slab_rows(gpu, &gw, gb, &sw, &copy);
            let dispatches = count.div_ceil(per_dispatch);
            for d in 0..dispatches {
                let first = d * per_dispatch;
                // A binding past the batch's last slab repeats it; its rows
                // lie past total_rows, so its loop runs no row.
                let g: Vec<Window> = (first..first + per_dispatch)
                    .map(|s| {
                        gpu.window(&slab_t, s.min(count - 1) * SLAB_ELEMS, SLAB_ELEMS)
                            .0
                    })
                    .collect();
                // A chunk past its slabs' last row stores zeros.
                let end = row0 + (first + per_dispatch).min(count) * rows;
                let p = WgradParams {
                    g_cstride: ow as u32,
                    g_rstride: rstride as u32,
                    row0: (row0 + first * rows) as u32,
                    slot: (d * chunks) as u32,
                    total_rows: end.min(total_rows) as u32,
                    slab_rows: rows as u32,
                    ..self.params(b, chunk_rows)
                };
                self.dispatch(&pipeline, &p, &g, b, (&pw, chunks));
            }
            let add = self.accumulate || !b.first || s0 > 0;
            add_partials(gpu, &pw, dispatches * chunks, self.dw, self.slice(b), add);
        }
        Ok(())
    }
}

/// Whether the weight gradient reads `g` through uniform slabs: on
/// adapters that want uniform operands, for vec4 rows, when a slab holds
/// a row of `to` channels and a storage window holds a slab.
fn uniform_g(gpu: &Gpu, vec: bool, ow: usize, to: usize) -> bool {
    vec && gpu.uniform_operands() && ow * to <= SLAB_ELEMS && gpu.window_elems() >= SLAB_ELEMS
}

/// dw[o, c] (o over channels of `gout` [N, O, OH, OW], c over channels of
/// `input` [N, C, IH, IW]), stored at o*C*k*k + c*k*k + tap, written or
/// added (`accumulate`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn run(
    gpu: &Gpu,
    op: &'static str,
    gout: &Tensor,
    input: &Tensor,
    dw: &Tensor,
    g: WgradGeom,
    accumulate: bool,
    tile: GemmTile,
) -> Result<()> {
    let pass = Pass {
        gpu,
        op,
        input,
        dw,
        g,
        accumulate,
        tile,
    };
    match flat_gradient(gpu, gout, g)? {
        Some((flat, plane)) => pass.run_on(&flat, plane),
        None => pass.run_on(gout, None),
    }
}

/// What `run` passes on whatever the gradient's layout.
#[derive(Clone, Copy)]
struct Pass<'a> {
    gpu: &'a Gpu,
    op: &'static str,
    input: &'a Tensor,
    dw: &'a Tensor,
    g: WgradGeom,
    accumulate: bool,
    tile: GemmTile,
}

/// The padded input plane (rows, columns) of a flat gradient.
type FlatPlane = Option<(usize, usize)>;

/// Narrow rows (a 10x10 layer: 10 steps of 5 scalar columns per image,
/// one row at a time) as one row per image: `gout` copied with its rows
/// widened to the padded input's (`cols`, whole vec4s) by zero columns,
/// viewed as [N, O, 1, OH*cols], over the padded input plane read as one
/// row of the same width. A column past a row's end has a zero gradient,
/// so it adds nothing; every real column reads its own taps. Stride 1,
/// vec4 windows, and the widened copy within one window; else `None`.
fn flat_gradient(gpu: &Gpu, gout: &Tensor, g: WgradGeom) -> Result<Option<(Tensor, FlatPlane)>> {
    let (n, o, oh, ow) = gout.nchw();
    let cols = (ow + (g.k - 1) * g.d).next_multiple_of(4);
    let flat = g.s == 1 && g.k > 1 && oh > 1 && ow < 32 && gpu.vec4_windows();
    if !flat || n * o * oh * cols > gpu.window_elems() {
        return Ok(None);
    }
    let region = PadRegion {
        n0: 0,
        images: n,
        c0: 0,
        planes: o,
        row0: 0,
        col0: 0,
        rows: oh,
        cols,
    };
    let widened = prep::pad_input(gpu, gout, &region)?.reshape(&[n, o, 1, oh * cols]);
    // The last step's loads end (k-1)*d rows and columns past the row.
    let read = (g.k - 1) * g.d * cols + (oh * cols + (g.k - 1) * g.d).next_multiple_of(4);
    Ok(Some((widened, Some((read.div_ceil(cols), cols)))))
}

impl Pass<'_> {
    /// `run` over `gout`, whose rows read the padded input plane `flat`
    /// gives (rows, columns), or (`None`) the plane its own geometry needs
    /// (a padded copy, or the source itself with borders).
    fn run_on(&self, gout: &Tensor, flat: FlatPlane) -> Result<()> {
        let Pass { gpu, op, g, .. } = *self;
        let (n, o_tot, oh, ow) = gout.nchw();
        let (_, c_tot, _, _) = self.input.nchw();
        let kk = g.k * g.k;
        // A layer narrower than a workgroup's lanes gets no second channel
        // per lane (its loads and multiply-adds would all be clamped waste).
        let tile = GemmTile {
            ct: self.tile.ct.min(c_tot.div_ceil(self.tile.wg)),
            ..self.tile
        };
        // The largest divisor of the row up to the tile's, a multiple of 4
        // where one divides (vec4 loads).
        let jt = (1..=tile.jt)
            .filter(|t| ow % t == 0)
            .max_by_key(|&t| (t % 4 == 0, t))
            .unwrap_or(1);
        // Every row of g and of the padded copy starts at a multiple of 4
        // elements when the row width is one (window offsets keep alignment).
        let vec = ow % 4 == 0 && jt % 4 == 0 && gpu.vec4_windows();
        let mut spec = WgradSpec {
            k: g.k,
            s: g.s,
            d: g.d,
            to: tile.to,
            ct: tile.ct,
            jt,
            wg: tile.wg,
            vec,
            uniform_g: uniform_g(gpu, vec, ow, tile.to) && !tile.storage,
            texels: vec && gpu.texel_operands() && !tile.storage,
            slabs: 1,
            borders: None,
            sg: match gpu.subgroup_size() {
                Some(n) if vec && tile.wg.is_multiple_of(n) => n,
                _ => 0,
            },
        };
        let row_cost = ow / jt + 2;
        if row_cost > gpu.loop_budget() {
            return Err(EngineError::TooLarge {
                op,
                detail: format!("rows of {ow} columns exceed the per-invocation loop budget"),
            });
        }
        let (rows, cols) = flat.unwrap_or_else(|| {
            let cols = (ow - 1) * g.s + (g.k - 1) * g.d + 1;
            let cols = if vec { cols.next_multiple_of(4) } else { cols };
            ((oh - 1) * g.s + (g.k - 1) * g.d + 1, cols)
        });
        let plane = rows * cols;
        let win = gpu.window_elems();
        let mut og = o_tot
            .min(items_per_window(gpu, op, oh * ow, "gradient plane")?)
            .min((win / (c_tot * kk)).max(1));
        // One tile of gradient channels per block: a slab then holds the
        // most rows, and the partial sums per row are fewest.
        if spec.uniform_g {
            og = og.min(tile.to);
        }
        let mut cg = c_tot.min(items_per_window(gpu, op, plane, "padded input plane")?);
        while cg > 1 && (og - 1) * c_tot * kk + cg * kk > win {
            cg = cg.div_ceil(2);
        }
        // A slab's partial sums (up to SLAB_WORKGROUPS row chunks) fit a window.
        spec.uniform_g &= og * cg * kk * SLAB_WORKGROUPS <= win;
        let g_img = o_tot * oh * ow;
        let imgs = (1 + (win - og * oh * ow) / g_img)
            .min(1 + (win - cg * plane) / (cg * plane))
            .clamp(1, n);
        let (_, _, ih, iw) = self.input.nchw();
        let whole = imgs == n && cg == c_tot && n * c_tot * ih * iw <= win;
        // With borders the source is read as it is: rows of whole vec4s
        // from storage, laid out as rows, in one block of images and
        // channels (its window then starts at element 0).
        let borders = (whole && flat.is_none() && spec.vec && !spec.texels && iw % 4 == 0)
            .then_some(Borders {
                row0: g.row0,
                col0: g.col0,
            });
        let job = Job {
            gpu,
            op,
            gout,
            dw: self.dw,
            spec: WgradSpec { borders, ..spec },
            tile,
            kk,
            row_cost,
            accumulate: self.accumulate,
        };
        if borders.is_some() {
            let (x, _) = Operand::of(gpu, op, (self.input, 0, n * c_tot * ih * iw), false)?;
            return job.run_blocks(&x, (0, n, 0, c_tot), (ih * iw, iw), (o_tot, og));
        }
        for (n0, nb) in runs(n, imgs) {
            for (c0, clen) in runs(c_tot, cg) {
                let region = PadRegion {
                    n0,
                    images: nb,
                    c0,
                    planes: clen,
                    row0: g.row0,
                    col0: g.col0,
                    rows,
                    cols,
                };
                let xp = prep::pad(gpu, op, self.input, &region, spec.texels)?;
                let x = Operand::padded(gpu, op, &xp, spec.texels)?;
                job.run_blocks(&x, (n0, nb, c0, clen), (plane, cols), (o_tot, og))?;
            }
        }
        Ok(())
    }
}

impl Job<'_> {
    /// The blocks of images `n0..n0+nb` and input channels `c0..c0+clen`
    /// read from `x` (planes of `plane` elements, rows of `x_w`), `og`
    /// gradient channels at a time.
    fn run_blocks(
        &self,
        x: &Operand,
        (n0, nb, c0, clen): (usize, usize, usize, usize),
        (plane, x_w): (usize, usize),
        (o_tot, og): (usize, usize),
    ) -> Result<()> {
        for (o0, olen) in runs(o_tot, og) {
            // Each (o, c) of dw is written by one block per image group.
            let block = Block {
                n0,
                nb,
                c0,
                clen,
                o0,
                olen,
                x,
                plane,
                x_w,
                first: n0 == 0,
            };
            match self.spec.uniform_g {
                true => self.uniform_pass(&block)?,
                false => self.storage_pass(&block)?,
            }
        }
        Ok(())
    }
}

/// (key, WGSL) of generated weight-gradient kernels for every tile and the
/// network's geometries.
pub(crate) fn sample_sources() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for t in GemmTile::CANDIDATES {
        for (k, s, d) in [
            (3, 1, 1),
            (3, 2, 1),
            (3, 1, 2),
            (1, 1, 1),
            (4, 2, 1),
            (4, 1, 1),
        ] {
            for (vec, uniform_g, texels) in [
                (false, false, false),
                (true, false, false),
                (true, true, false),
                (true, false, true),
                (true, true, true),
            ] {
                let spec = WgradSpec {
                    k,
                    s,
                    d,
                    to: t.to,
                    ct: t.ct,
                    jt: t.jt,
                    wg: t.wg,
                    vec,
                    uniform_g,
                    texels,
                    slabs: 1,
                    borders: None,
                    sg: 0,
                };
                out.push((spec.key(), spec.source()));
                if vec {
                    let shared = WgradSpec { sg: 8, ..spec };
                    out.push((shared.key(), shared.source()));
                }
                if vec && !texels {
                    // The SAME pads of the geometry: a first column 3 or 2
                    // into its vec4, or 0 where nothing pads.
                    let pad = ((k - 1) * d / 2) as isize;
                    let bordered = WgradSpec {
                        borders: Some(Borders {
                            row0: -pad,
                            col0: -pad,
                        }),
                        ..spec
                    };
                    out.push((bordered.key(), bordered.source()));
                }
                if uniform_g {
                    let most = WgradSpec {
                        slabs: SLAB_BINDINGS.len(),
                        ..spec
                    };
                    out.push((most.key(), most.source()));
                }
            }
        }
    }
    out
}

/// The block of dw [O, C, k, k] one weight-gradient dispatch produces.
#[derive(Clone, Copy)]
pub(super) struct DwSlice {
    pub o0: usize,
    pub olen: usize,
    pub c0: usize,
    pub clen: usize,
    pub c_tot: usize,
    pub kk: usize,
}

/// Adds the `chunks` partial sums in `partials` ([chunk][o][c][tap] of the
/// slice) in chunk order into dw (written, or added when `add`).
pub(super) fn add_partials(
    gpu: &Gpu,
    partials: &crate::gpu::Window,
    chunks: usize,
    dw: &Tensor,
    s: DwSlice,
    add: bool,
) {
    let per = s.olen * s.clen * s.kk;
    let start = s.o0 * s.c_tot * s.kk + s.c0 * s.kk;
    let len = (s.olen - 1) * s.c_tot * s.kk + s.clen * s.kk;
    let (dww, dwb) = gpu.window(dw, start, len);
    let (inner, ostride) = (s.clen * s.kk, s.c_tot * s.kk);
    // vec4s where every length, stride and base is whole vec4s (the
    // partials' window starts at their first element).
    let whole = [per, inner, ostride, dwb as usize]
        .iter()
        .all(|v| v.is_multiple_of(4));
    let lanes = if whole { vec4_lanes(gpu, per) } else { 1 };
    let sp = ReduceParams {
        chunks: chunks as u32,
        out_base: dwb / lanes as u32,
        flags: add as u32,
        scale: 1.0,
        len: (per / lanes) as u32,
        inner: (inner / lanes) as u32,
        out_ostride: (ostride / lanes) as u32,
        ..Default::default()
    };
    let binds = [(5, partials), (10, &dww)];
    launch_lanes(gpu, &SUM_PARTIALS, &Params::of(&sp), &binds, per, lanes);
}

#[cfg(test)]
mod tests {
    use super::GemmTile;
    use crate::gpu::GPU_ACCUMULATORS;

    /// GPUs time only tiles their registers hold, for 3x3 and the
    /// transposed 4x4 kernels alike, their default (8 channels, 32 lanes)
    /// among them; CPU adapters time every tile.
    #[test]
    fn gpu_candidates_fit_the_register_budget() {
        for taps in [1, 9, 16] {
            assert_eq!(GemmTile::candidates_for(true, taps), GemmTile::CANDIDATES);
            let gpu = GemmTile::candidates_for(false, taps);
            let fits = |t: &GemmTile| t.accumulators(taps) <= GPU_ACCUMULATORS;
            assert!(gpu.iter().all(fits), "{taps} taps: {gpu:?}");
            assert!(gpu.contains(&GemmTile::new(8, 4, 32)), "{taps} taps");
        }
        assert!(GemmTile::candidates_for(false, 9).len() < GemmTile::CANDIDATES.len());
    }

    /// The partial sums go into their slice of dw in chunk order, exactly
    /// (f32 on the host in the same order): 4 summed channels of 9 taps
    /// run as vec4s, 3 as scalars.
    #[test]
    fn partial_sums_add_in_chunk_order_as_vec4s_and_scalars() {
        use super::{DwSlice, add_partials};
        let gpu = crate::gpu::Gpu::new(None).expect("a GPU adapter");
        let (o_tot, c_tot, kk, chunks, o0, olen) = (5, 12, 9, 3, 1, 3);
        for (c0, clen) in [(4, 4), (1, 3)] {
            let slice = DwSlice {
                o0,
                olen,
                c0,
                clen,
                c_tot,
                kk,
            };
            let per = olen * clen * kk;
            let parts: Vec<f32> = (0..chunks * per)
                .map(|i| (i * 7919 % 1000) as f32 / 997.0 - 0.5)
                .collect();
            let dw0: Vec<f32> = (0..o_tot * c_tot * kk)
                .map(|i| (i % 13) as f32 * 0.25)
                .collect();
            for add in [false, true] {
                let pt = gpu.upload(&[chunks * per], &parts).unwrap();
                let dw = gpu.upload(&[o_tot, c_tot, 3, 3], &dw0).unwrap();
                let (pw, _) = gpu.window(&pt, 0, chunks * per);
                add_partials(&gpu, &pw, chunks, &dw, slice, add);
                let mut want = dw0.clone();
                for e in 0..per {
                    let (o, c, t) = (e / (clen * kk), e / kk % clen, e % kk);
                    let at = ((o0 + o) * c_tot + c0 + c) * kk + t;
                    let mut s = 0.0f32;
                    for r in 0..chunks {
                        s += parts[r * per + e];
                    }
                    want[at] = if add { s + want[at] } else { s };
                }
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                let got = gpu.read(&dw).unwrap();
                assert_eq!(bits(&got), bits(&want), "{clen} channels, add {add}");
            }
        }
    }
}
