//! Direct convolution, generated per shape: WGSL written at run time with
//! the kernel size, stride, dilation, register tile and flags baked in, so
//! every inner loop is straight-line code with constant offsets.
//!
//! One invocation computes `tp` output pixels of each of `tr` rows (one
//! row, or a 2-D tile) for `to` produced channels: `tr * tp * to / 4`
//! named vec4 accumulators (no arrays: arrays indexed at run time spill on
//! lavapipe). The input is a zero-padded copy (`prep::pad_input`), so the
//! hot loop has no border branches, or, where the kernel reads storage as
//! vec4s, the source itself, each vec4 outside it selected to zero
//! (`borders`: no copy); an input row of `(tp-1)*s + (kw-1)*d + 1` values
//! is loaded once per summed channel and reused by every tap of every
//! output row that reads it. Weights are re-laid [summed][tap][produced]
//! (`prep::prep_weights`) and the produced-channel group is `workgroup_id.y`,
//! so every weight load has the same address in all lanes (one broadcast
//! transaction on a GPU). lavapipe (Mesa 22.3) still loads such a value
//! lane by lane, from storage with a branch per lane, so on CPU adapters
//! the weight slice is a uniform binding (`uniform_w`: a gather without
//! the branches), and with subgroups of one size the lanes of a subgroup
//! load a channel's weights together and broadcast them (`sg`).
//!
//! The sum runs over summed channels, then taps in row-major order, for
//! every tile: all tiles give bit-identical results.
use super::codegen::{
    ConvOperands, LANE, Operand, RowLoads, UNIFORM_VEC4S, dispatch_conv, open_channel_store,
    put_function, quads_of, tap_cols, write_bordered_row, write_quad_masks, write_row_loads,
    write_row_masks, write_weight_share_offsets,
};
use super::prep::{self, PadRegion, WeightMap};
use crate::error::Result;
use crate::gpu::{Gpu, Tensor, holds_accumulators};
use crate::ops::{items_per_window, runs, wgsl_params};
use std::fmt::Write;

/// The register tile and workgroup size of a direct kernel: one variant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Tile {
    /// Output pixels per invocation along a row.
    pub tp: usize,
    /// Output rows per invocation: a 2-D tile of `tr x tp` pixels, whose
    /// rows share the input rows they read (3x3, stride 1: `tr + 2` input
    /// rows for `tr` output rows instead of `3 tr`).
    pub tr: usize,
    /// Produced channels per invocation (a multiple of 4).
    pub to: usize,
    /// Invocations per workgroup.
    pub wg: usize,
    /// Weights staged in workgroup memory (for discrete GPUs; lavapipe
    /// prefers the register tiles, whose weight loads are the same in all
    /// lanes).
    pub shared: bool,
    /// Reads its input and weights from storage even where texel operands
    /// (`reads_texels`) or uniform weights (`uniform_weight_groups`) are
    /// on: a long run's rival on CPU adapters, where which is faster
    /// depends on the CPU and the shape (`ConvVariant::long_run_rivals`).
    /// The same sums in the same order, so the same bits, except where
    /// uniform weights would have split the summed channels into groups.
    pub storage: bool,
    /// Pixel quads (`quads_fit` jobs: 1x1, stride 1, the source read as
    /// is in planes of whole vec4s): each accumulator holds 4 neighbouring
    /// pixels of one produced channel, stored as one vec4, and a pass sums
    /// two channels; elsewhere the same tile without. On lavapipe a 1x1
    /// makes one multiply-add per loaded pixel where a 3x3 makes nine, so
    /// its stores and accumulator visits weigh 9x as much: a vec4 store
    /// cost half of four scalar ones (1.27 against 2.52 ms for a 64 -> 64
    /// output at 4x80x80, session 41), and two channels a pass halve the
    /// visits. The same sums in the same order: the same bits.
    pub quads: bool,
}

/// Summed channels a workgroup-memory tile stages per barrier pair.
const SHARED_CHANNELS: usize = 4;

impl Tile {
    /// The candidates `engine tune` and autotuning time. Measured on
    /// lavapipe (conv3x3 64->64, 4x80x80, GFLOP/s): wide pixel tiles reuse
    /// each loaded weight across more pixels and win (tp40-to16 ~25,
    /// tp16-to16 ~21, tp4-to8 ~10); 32-pixel tiles never beat both
    /// neighbours; discrete GPUs prefer fewer registers per invocation.
    /// 16 pixels x 64 or 32 channels (1024 and 512 accumulators) are no
    /// longer candidates: no rule takes them (`Tile::rule`), they won 10 of
    /// 430 long-run shapes timed over sessions on lavapipe (2x2 test maps
    /// and one 10x10 layer), and LLVM took 8-60 s per 16 x 64 kernel, so
    /// `engine tune` and the tests spent minutes compiling them (a cold
    /// run of the kernel tests: 750 of 2090 s of compiles).
    pub const CANDIDATES: [Tile; 15] = [
        Tile::new(8, 64),
        Tile::new(8, 32),
        Tile::new(40, 16),
        Tile::new(40, 8),
        Tile::new(16, 16),
        Tile::new(16, 8),
        Tile::new(8, 16),
        Tile::new(8, 8),
        Tile::new(4, 16),
        Tile::new(4, 8),
        Tile::shared(4, 16),
        // The CPU rule's on wide rows for fewer than 8 produced channels.
        Tile::new(40, 4),
        // A 2-D tile small enough for a GPU's registers. The wider 2-D
        // tiles of CPU adapters are a long run's rivals (`Tile::two_d`).
        Tile::rows(8, 2, 8),
        // A long run's 1x1 passes (`Tile::rule`); other passes run them
        // as the plain 16-pixel tiles.
        Tile::quads(16, 32),
        Tile::quads(16, 16),
    ];

    pub const fn new(tp: usize, to: usize) -> Tile {
        Tile::rows(tp, 1, to)
    }

    /// A 2-D tile: `tr` rows of `tp` pixels for `to` produced channels.
    pub const fn rows(tp: usize, tr: usize, to: usize) -> Tile {
        Tile {
            tp,
            tr,
            to,
            wg: 64,
            shared: false,
            storage: false,
            quads: false,
        }
    }

    /// A tile of pixel quads (`quads`), one row of `tp` pixels.
    pub const fn quads(tp: usize, to: usize) -> Tile {
        Tile {
            quads: true,
            ..Tile::new(tp, to)
        }
    }

    /// The same tile without pixel quads.
    pub const fn without_quads(self) -> Tile {
        Tile {
            quads: false,
            ..self
        }
    }

    /// A tile whose weights go through workgroup memory.
    pub const fn shared(tp: usize, to: usize) -> Tile {
        Tile {
            shared: true,
            ..Tile::new(tp, to)
        }
    }

    /// The tile used without a tuned choice. On CPU adapters the pixel
    /// tile follows the output row's size class, not its exact width, so
    /// that scans of other sizes reuse the kernels already compiled (on
    /// lavapipe a new kernel costs about 1-14 s of LLVM, often more than
    /// the pass itself): 40 pixels from rows of 256, 16 from rows of 32,
    /// else 8, the row's last tile partly masked. Channels: 16 (8 for
    /// narrow layers, 4 in 40-pixel tiles for fewer than 8), and 8 with
    /// 40-pixel tiles, whose 16-channel kernel
    /// runs faster but compiles 3x longer (13.6 s against 4.5 s for the
    /// plain 3x3 kernel). A 1x1 kernel (`k == 1`) has a ninth of the
    /// multiply-adds per loaded pixel and compiles in a fraction of that,
    /// so it takes 40-pixel tiles from rows of 32 with the full channel
    /// group (64 -> 64 at 4x80x80: 4.8 GFLOP/s against 4.1 for 16 pixels,
    /// with the 3x3 forward at 5.0 in the same run). With `long_run`
    /// (training: thousands of dispatches per kernel) every row of 32 or
    /// more takes the 40-pixel tile with the full channel group, compile
    /// time or not (3x3 64 -> 64 at 4x80x80 on an AMD EPYC: 7.6 GFLOP/s
    /// against 5.5; stride 2: 6.6 against 3.7). A long run over 32 or more
    /// produced channels takes 64 (or 32) of them per invocation instead:
    /// each loaded input value then feeds 4x the multiply-adds, and the
    /// summed channels split to keep the weights uniform (64 -> 64 at
    /// 4x80x80: 3x3 20.9 GFLOP/s against 14.9, stride 2 12.1 against 7.8,
    /// 1x1 12.6 against 5.7; stride 2 with 8 pixels, whose rows read twice
    /// the columns). On later CPUs the 40-pixel tile beat those, so a
    /// long run's pass runs it instead where rows are 32 or more and times
    /// this tile against it (`ConvVariant::long_run_rivals`). The 16-pixel
    /// ones (stride 1, rows of 32 or more) are no longer taken: 16 x 64
    /// won 10 of 430 long-run shapes timed over sessions on lavapipe, and
    /// such a kernel (1024 accumulators) takes LLVM 8-60 s to compile, so
    /// a first step paid minutes for a rival that lost; there the 40-pixel
    /// tile is the rule. A long run's 1x1 passes over 16 or more produced
    /// channels take pixel quads (`Tile::quads`) of 16 pixels and 32 (or
    /// 16) channels: 64 -> 64 at 4x80x80 on an AMD EPYC, 4.7-7.2 ms
    /// against 7.4-10.7 for the 40-pixel tile in the same processes
    /// (session 41); a job they do not fit runs the plain tile of that
    /// size (`quads_fit`). On GPUs a small tile
    /// that keeps occupancy (autotuning is on there).
    pub fn rule(
        cpu: bool,
        long_run: bool,
        (k, s): (usize, usize),
        produced: usize,
        out_w: usize,
    ) -> Tile {
        if !cpu {
            return Tile::new(4, 8);
        }
        if long_run && (k, s) == (1, 1) && produced >= 16 {
            return Tile::quads(16, if produced >= 32 { 32 } else { 16 });
        }
        let narrow = s > 1 || out_w < 32;
        match produced {
            64.. if long_run && narrow => return Tile::new(8, 64),
            // 3x3 stride 1 at 32 channels: 40x16 measured faster.
            32.. if long_run && narrow && (k, s) != (3, 1) => return Tile::new(8, 32),
            _ => {}
        }
        let to = match produced {
            16.. => 16,
            8.. => 8,
            _ => 4,
        };
        let wide = long_run || k == 1;
        // 4 produced channels only in the 40-pixel tile (the candidates').
        let to8 = to.max(8);
        match out_w {
            256.. => Tile::new(40, if wide { to } else { 8 }),
            32.. if wide => Tile::new(40, to),
            32.. => Tile::new(16, to8),
            _ => Tile::new(8, to8),
        }
    }

    /// The 2-D tile of a long run's rivals for a rule of `to` produced
    /// channels: 16 channels in 4 rows of 16 pixels, 8 in 5 rows; none for
    /// fewer. Measured on an Intel Xeon (lavapipe, both reading storage,
    /// GFLOP/s with the weights' re-laying): 3x3 64 -> 64 at 4x80x80 49.2
    /// against 39.0 for 40 pixels x 16 channels; dilation 2, 512 -> 512 at
    /// 4x10x10 34.9 against 24.2, where rows of 10 also waste less than
    /// flat 40-pixel runs. A width-1 training step's forward of conv0_2
    /// (32 -> 32 at 160x160) took 40 ms against 54.
    pub fn two_d(to: usize) -> Option<Tile> {
        match to {
            16.. => Some(Tile::rows(16, 4, 16)),
            8.. => Some(Tile::rows(16, 5, 8)),
            _ => None,
        }
    }

    /// A 2-D tile fitted to an output of `out_h x out_w`: as few column
    /// groups as `tp` allows, each as narrow as they then can be (whole
    /// vec4s), so that a 10-pixel row takes one group of 12 rather than
    /// one of 16 (the columns past the row are computed and dropped); and
    /// one row more per group where that wastes fewer rows (10 rows: two
    /// groups of 5, not three of 4). The sums are those of any tile.
    /// One-row tiles keep their shape.
    pub fn narrowed(self, (out_h, out_w): (usize, usize)) -> Tile {
        if self.tr == 1 {
            return self;
        }
        let groups = out_w.div_ceil(self.tp);
        let waste = |tr: usize| out_h.next_multiple_of(tr) - out_h;
        Tile {
            tp: out_w.div_ceil(groups).next_multiple_of(4).min(self.tp),
            tr: if waste(self.tr + 1) < waste(self.tr) {
                self.tr + 1
            } else {
                self.tr
            },
            ..self
        }
    }

    /// The same tile reading its input from storage (`storage`).
    pub const fn reading_storage(self) -> Tile {
        Tile {
            storage: true,
            ..self
        }
    }

    /// Float accumulators per invocation.
    pub fn accumulators(&self) -> usize {
        self.tp * self.tr * self.to
    }

    /// The candidates this adapter can hold (see `gpu::holds_accumulators`).
    pub fn candidates(gpu: &Gpu) -> Vec<Tile> {
        Tile::candidates_for(gpu.is_cpu())
    }

    fn candidates_for(cpu: bool) -> Vec<Tile> {
        let fits = |t: &Tile| holds_accumulators(cpu, t.accumulators());
        Tile::CANDIDATES.into_iter().filter(fits).collect()
    }

    pub fn name(&self) -> String {
        let mem = if self.shared { "-wgmem" } else { "" };
        let reads = if self.storage { "-storage" } else { "" };
        let quads = if self.quads { "-quads" } else { "" };
        let rows = match self.tr {
            1 => String::new(),
            tr => format!("-tr{tr}"),
        };
        format!(
            "direct-tp{}{rows}-to{}-wg{}{mem}{reads}{quads}",
            self.tp, self.to, self.wg
        )
    }
}

wgsl_params! {
    /// Run-time values of a direct kernel (everything else is baked in).
    pub(crate) struct DirectParams {
        n_count, out_h, out_w, col_groups, c_in,
        /// Groups of `tr` output rows (`out_h` for one-row tiles).
        row_groups,
        x_base, x_nstride, x_cstride, x_w,
        w_base, w_cstride, o4_stride,
        o_count, b_base,
        y_base, y_nstride, y_cstride, y_w,
        /// The f32 bits below which a stored value becomes 0: 0.0 for a
        /// fused ReLU, -inf for none (no value is below it, NaN stays).
        relu_floor,
        /// With `borders`: the source's rows, its row width in vec4s, and
        /// (i32 bits) the source row and column of the job's element (0, 0).
        src_h, src_q, row0, col0,
        /// With pixel quads: the input binding's last vec4.
        x_last,
    }
}

/// Everything baked into one generated direct kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct DirectSpec {
    pub kh: usize,
    pub kw: usize,
    pub s: usize,
    pub d: usize,
    /// Output element step (2 for the phases of a stride-2 transpose).
    pub ostep: usize,
    pub tile: Tile,
    pub bias: bool,
    pub accumulate: bool,
    /// Input rows and planes start at multiples of 4 elements: rows are
    /// read as aligned vec4s (on lavapipe a vec4 load costs about half of
    /// four scalar loads).
    pub vec: bool,
    /// Weights through a uniform binding of `UNIFORM_VEC4S` (see
    /// `Gpu::uniform_operands`): on lavapipe a gather per weight instead
    /// of a guarded load per lane (3x3 64 -> 64 at 4x80x80 with the
    /// weights' loads removed altogether ran 1.85x as fast).
    pub uniform_w: bool,
    /// The input as texels (`reads_texels`; needs `vec`).
    pub texels: bool,
    /// Output pixels run along the whole padded plane as one row
    /// (`Layout::flat`): the store skips the columns past the row's end
    /// and steps each pixel's row and column from the invocation's first.
    pub flat: bool,
    /// Reads the source itself, not a padded copy, each vec4 outside it
    /// as zeros (`fn borders`): Some(the job's first column mod 4, the
    /// offset of a window's first value in its first vec4).
    pub borders: Option<usize>,
    /// The subgroup size, or 0: a summed channel's weights are loaded by
    /// the lanes of a subgroup together, each its share, and passed to
    /// every lane by `subgroupBroadcast` (see `wgrad::WgradSpec::sg`).
    pub sg: usize,
}

impl DirectSpec {
    pub fn key(&self) -> String {
        format!(
            "direct k{}x{} s{} d{} os{} {} b{} a{} v{} u{} f{} e{} t{} sg{}",
            self.kh,
            self.kw,
            self.s,
            self.d,
            self.ostep,
            self.tile.name(),
            self.bias as u8,
            self.accumulate as u8,
            self.vec as u8,
            self.uniform_w as u8,
            self.flat as u8,
            self.borders.map_or("-".into(), |e| e.to_string()),
            self.texels as u8,
            self.sg
        )
    }

    pub fn source(&self) -> String {
        let Tile {
            tp,
            tr,
            to,
            wg,
            shared,
            ..
        } = self.tile;
        let o4 = to / 4;
        let mut w = String::new();
        w.push_str(DirectParams::WGSL);
        let y_type = if self.tile.quads { "vec4<f32>" } else { "f32" };
        let _ = writeln!(
            w,
            "@group(0) @binding(0) var<uniform> P: Params;\n\
             @group(0) @binding(3) var<storage, read> B: array<f32>;\n\
             @group(0) @binding(4) var<storage, read_write> Y: array<{y_type}>;"
        );
        let weights = if self.uniform_w {
            format!("uniform> W: array<vec4<f32>, {UNIFORM_VEC4S}>")
        } else {
            "storage, read> W: array<vec4<f32>>".to_owned()
        };
        let _ = writeln!(w, "@group(0) @binding(2) var<{weights};");
        w.push_str(&self.row_loads().declare(1));
        if shared {
            let _ = writeln!(
                w,
                "var<workgroup> ws: array<vec4<f32>, {}>;",
                SHARED_CHANNELS * self.kh * self.kw * o4
            );
        }
        // A workgroup-memory kernel keeps every invocation to the barriers,
        // and a subgroup's lanes all take part in its loads: out-of-range
        // ones read the last image and store nothing.
        let guarded = shared || self.sg > 0;
        let (n_expr, exit) = if guarded {
            ("min(n, P.n_count - 1u)", "let live = n < P.n_count;")
        } else {
            ("n", "if (n >= P.n_count) { return; }")
        };
        w.push_str(&put_function(self.accumulate, self.tile.quads));
        let _ = writeln!(
            w,
            "@compute @workgroup_size({wg})\n\
             fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32, @builtin(num_workgroups) nwg: vec3<u32>{}) {{\n\
             \x20   let pix = (wid.x + wid.z * nwg.x) * {wg}u + lid;\n\
             \x20   let cg = pix % P.col_groups;\n\
             \x20   let rr = pix / P.col_groups;\n\
             \x20   let i = rr % P.row_groups * {tr}u;\n\
             \x20   let n = rr / P.row_groups;\n\
             \x20   {exit}\n\
             \x20   let j0 = cg * {tp}u;\n\
             \x20   var wb = P.w_base + wid.y * {o4}u;",
            match self.sg {
                0 => "",
                _ => ", @builtin(subgroup_invocation_id) sl: u32",
            }
        );
        self.write_source_start(&mut w, n_expr);
        // Quads: a{q}_{k}, pixels 4q.. of produced channel k; else
        // a{t}_{u}, produced channels 4u.. of pixel t.
        let (pixel_accs, channel_accs) = match self.tile.quads {
            true => (tp / 4, to),
            false => (tp * tr, o4),
        };
        for t in 0..pixel_accs {
            for u in 0..channel_accs {
                let _ = writeln!(w, "    var a{t}_{u} = vec4<f32>(0.0);");
            }
        }
        match (shared, self.tile.quads) {
            (true, _) => self.write_shared_loop(&mut w),
            (false, true) => self.write_quad_channel_loop(&mut w),
            (false, false) => self.write_channel_loop(&mut w),
        }
        if guarded {
            w.push_str("    if (live) {\n");
        }
        match self.tile.quads {
            true => self.write_quad_store(&mut w),
            false => self.write_store(&mut w),
        }
        if guarded {
            w.push_str("    }\n");
        }
        w.push_str("}\n");
        w
    }

    /// `xb`, where the invocation's first input row starts, as an element
    /// index (its first vec4's with `borders`, an i32 that may lie before
    /// the source); with `borders` also `ok{r}` (the input row at offset
    /// r lies in the source) and `in{q}` (the row's vec4 q does).
    fn write_source_start(&self, w: &mut String, n_expr: &str) {
        let s = self.s;
        let Some(shift) = self.borders else {
            let _ = writeln!(
                w,
                "    var xb = P.x_base + {n_expr} * P.x_nstride + i * {s}u * P.x_w + j0 * {s}u;"
            );
            return;
        };
        let _ = writeln!(
            w,
            "    let top = i32(i * {s}u) + bitcast<i32>(P.row0);\n\
             \x20   let left = (i32(j0 * {s}u) + bitcast<i32>(P.col0) - {shift}) >> 2u;\n\
             \x20   var xb = i32(P.x_base + {n_expr} * P.x_nstride) + top * i32(P.x_w) + left * 4;"
        );
        write_row_masks(w, "    ", &self.input_rows(), "P.src_h");
        let cols = tap_cols(self.tile.tp, self.kw, self.s, self.d);
        write_quad_masks(w, "    ", &quads_of(&cols, shift), "P.src_q");
    }

    /// The loop over summed channels, weights from `W`: each lane's own
    /// loads, or with `sg` the subgroup's shared ones, broadcast.
    fn write_channel_loop(&self, w: &mut String) {
        let (o4, sg) = (self.tile.to / 4, self.sg);
        let shares = match sg {
            0 => 0,
            _ => (self.kh * self.kw * o4).div_ceil(sg),
        };
        self.write_shared_weight_offsets(w, shares);
        w.push_str("    for (var c = 0u; c < P.c_in; c++) {\n");
        for r in 0..shares {
            let _ = writeln!(w, "        let wl{r} = W[wb + ws{r}];");
        }
        self.write_channel(w, &|tap, u| match sg {
            0 => format!("W[wb + {tap}u * P.o4_stride + {u}u]"),
            _ => {
                let m = tap * o4 + u;
                format!("subgroupBroadcast(wl{}, {}u)", m / sg, m % sg)
            }
        });
        let _ = writeln!(w, "        xb += {};", self.channel_step());
        w.push_str("        wb += P.w_cstride;\n    }\n");
    }

    /// The channel loop of a pixel-quad tile: two summed channels a pass,
    /// then the last one where their count is odd; every accumulator's
    /// multiply-adds of a pass in one statement, in channel order.
    fn write_quad_channel_loop(&self, w: &mut String) {
        let (o4, sg) = (self.tile.to / 4, self.sg);
        let shares = match sg {
            0 => 0,
            _ => o4.div_ceil(sg),
        };
        self.write_shared_weight_offsets(w, shares);
        w.push_str("    var c = 0u;\n    for (; c + 1u < P.c_in; c += 2u) {\n");
        self.write_quad_pass(w, 2, shares);
        w.push_str("        xb += 2u * P.x_cstride;\n        wb += 2u * P.w_cstride;\n    }\n");
        w.push_str("    if (c < P.c_in) {\n");
        self.write_quad_pass(w, 1, shares);
        w.push_str("    }\n");
    }

    /// One pass of `channels` summed channels from `xb` and `wb`: each
    /// channel's quads (the last tile's loads past the binding clamped to
    /// its last vec4, their pixels never stored) and weights, then the
    /// sums.
    fn write_quad_pass(&self, w: &mut String, channels: usize, shares: usize) {
        let (quads, o4, sg) = (self.tile.tp / 4, self.tile.to / 4, self.sg);
        for cc in 0..channels {
            let _ = writeln!(w, "        let r{cc} = (xb + {cc}u * P.x_cstride) >> 2u;");
            for q in 0..quads {
                let at = format!("min(r{cc} + {q}u, P.x_last)");
                let load = match self.row_loads() {
                    RowLoads::Texels => format!("texel({at})"),
                    _ => format!("X4[{at}]"),
                };
                let _ = writeln!(w, "        let xv{cc}_{q} = {load};");
            }
            let wc = format!("wb + {cc}u * P.w_cstride");
            for r in 0..shares {
                let _ = writeln!(w, "        let wl{cc}_{r} = W[{wc} + ws{r}];");
            }
            for u in 0..o4 {
                let wt = match sg {
                    0 => format!("W[{wc} + {u}u]"),
                    _ => format!("subgroupBroadcast(wl{cc}_{}, {}u)", u / sg, u % sg),
                };
                let _ = writeln!(w, "        let w{cc}_{u} = {wt};");
            }
        }
        for q in 0..quads {
            for k in 0..self.tile.to {
                let mut sum = format!("a{q}_{k}");
                for cc in 0..channels {
                    let _ = write!(sum, " + xv{cc}_{q} * w{cc}_{}.{}", k / 4, LANE[k % 4]);
                }
                let _ = writeln!(w, "        a{q}_{k} = {sum};");
            }
        }
    }

    /// The stores of a pixel-quad tile: one vec4 per quad and produced
    /// channel, the flat plane's quads past its end (`out_w`) dropped.
    fn write_quad_store(&self, w: &mut String) {
        let (quads, to) = (self.tile.tp / 4, self.tile.to);
        let _ = writeln!(
            w,
            "    let yb = P.y_base + n * P.y_nstride + j0;\n\
             \x20   let ob = wid.y * {to}u;\n\
             \x20   let floor = vec4<f32>(bitcast<f32>(P.relu_floor));"
        );
        for q in 0..quads {
            let _ = writeln!(w, "    let live{q} = j0 + {}u < P.out_w;", 4 * q);
        }
        for k in 0..to {
            let yo = format!("(yb + (ob + {k}u) * P.y_cstride) >> 2u");
            let bias = open_channel_store(w, k, &yo, self.bias);
            for q in 0..quads {
                let _ = writeln!(w, "        put(yo + {q}u, live{q}, a{q}_{k}{bias}, floor);");
            }
            w.push_str("    }\n");
        }
    }

    /// With `sg`: the offsets of the weight vec4s each lane loads
    /// (`write_weight_share_offsets`).
    fn write_shared_weight_offsets(&self, w: &mut String, shares: usize) {
        let values = self.kh * self.kw * self.tile.to / 4;
        write_weight_share_offsets(w, (values, self.tile.to / 4), self.sg, shares);
    }

    /// What `xb` advances by per summed channel.
    fn channel_step(&self) -> &'static str {
        match self.borders {
            Some(_) => "i32(P.x_cstride)",
            None => "P.x_cstride",
        }
    }

    /// Input rows from storage, or as texels (see `reads_texels`).
    fn row_loads(&self) -> RowLoads {
        RowLoads::of(self.vec, self.texels)
    }

    /// The sum over one summed channel at `xb`, weights from `weight(tap,
    /// u)`. Loads first, then each accumulator's whole sum over the taps
    /// in one run: every accumulator is read and written once per summed
    /// channel (lavapipe keeps only a few of them in registers), which
    /// makes wide pixel tiles pay; the per-accumulator order (row, then
    /// column) is the same in every tile, so all tiles stay bit-identical.
    fn write_channel(&self, w: &mut String, weight: &dyn Fn(usize, usize) -> String) {
        let (s, d, o4) = (self.s, self.d, self.tile.to / 4);
        let cols = tap_cols(self.tile.tp, self.kw, s, d);
        for r in self.input_rows() {
            match self.borders {
                Some(shift) => {
                    let first = format!("(xb + {r} * i32(P.x_w)) >> 2u");
                    write_bordered_row(w, "        ", (r, r), &first, (&cols, shift));
                }
                None => {
                    let row = format!("xb + {r}u * P.x_w");
                    write_row_loads(w, "        ", r, &row, &cols, self.row_loads());
                }
            }
        }
        for p in 0..self.kh {
            for q in 0..self.kw {
                for u in 0..o4 {
                    let wt = weight(p * self.kw + q, u);
                    let _ = writeln!(w, "        let w{p}_{q}_{u} = {wt};");
                }
            }
        }
        for (a, (r, t)) in self.pixels().enumerate() {
            for u in 0..o4 {
                for p in 0..self.kh {
                    for q in 0..self.kw {
                        let (row, m) = (r * s + p * d, t * s + q * d);
                        let _ = writeln!(w, "        a{a}_{u} += x{row}_{m} * w{p}_{q}_{u};");
                    }
                }
            }
        }
    }

    /// The tile's pixels, (row, column) in accumulator order.
    fn pixels(&self) -> impl Iterator<Item = (usize, usize)> {
        let (tr, tp) = (self.tile.tr, self.tile.tp);
        (0..tr).flat_map(move |r| (0..tp).map(move |t| (r, t)))
    }

    /// The input rows the tile reads, as offsets from its first (each
    /// loaded once per summed channel, whichever output rows share it).
    fn input_rows(&self) -> Vec<usize> {
        let mut rows: Vec<usize> = (0..self.tile.tr)
            .flat_map(|r| (0..self.kh).map(move |p| r * self.s + p * self.d))
            .collect();
        rows.sort_unstable();
        rows.dedup();
        rows
    }

    /// The channel loop of a workgroup-memory tile: the workgroup copies
    /// the weights of `SHARED_CHANNELS` summed channels for its produced
    /// channels into `ws` together, then every invocation reads them from
    /// there (one global read per weight per workgroup, for GPUs whose
    /// uniform loads are not broadcast).
    fn write_shared_loop(&self, w: &mut String) {
        let (o4, wg) = (self.tile.to / 4, self.tile.wg);
        let per_ch = self.kh * self.kw * o4;
        let total = SHARED_CHANNELS * per_ch;
        let _ = writeln!(
            w,
            "    for (var c0 = 0u; c0 < P.c_in; c0 += {SHARED_CHANNELS}u) {{\n\
             \x20       workgroupBarrier();\n\
             \x20       for (var e = lid; e < {total}u; e += {wg}u) {{\n\
             \x20           let cc = e / {per_ch}u;\n\
             \x20           let r = e % {per_ch}u;\n\
             \x20           let ch = min(c0 + cc, P.c_in - 1u);\n\
             \x20           let v = W[wb + ch * P.w_cstride + (r / {o4}u) * P.o4_stride + r % {o4}u];\n\
             \x20           ws[e] = select(vec4<f32>(0.0), v, c0 + cc < P.c_in);\n\
             \x20       }}\n\
             \x20       workgroupBarrier();"
        );
        for cc in 0..SHARED_CHANNELS {
            let _ = writeln!(w, "        if (c0 + {cc}u < P.c_in) {{");
            let base = cc * per_ch;
            self.write_channel(w, &|tap, u| format!("ws[{}u]", base + tap * o4 + u));
            let _ = writeln!(w, "        xb += {};\n        }}", self.channel_step());
        }
        w.push_str("    }\n");
    }

    /// Bias, accumulation and ReLU (NaN-preserving, as PyTorch's) applied
    /// once per output element at the store. The ReLU is a run-time floor,
    /// not a baked flag: one kernel serves layers with and without it (on
    /// lavapipe each distinct kernel costs 1-5 s of LLVM at its first
    /// dispatch, and the select costs the same either way). Each element
    /// is one call of `put` (`codegen::put_function`), with each pixel's
    /// condition and offset named once: naga's WGSL front end spends time
    /// quadratic in a function's expression count (`Typifier::grow` walks
    /// the arena from its start at every new expression), and the written
    /// out stores were four fifths of a wide tile's expressions (a 16x64
    /// tile: 53688 expressions, 0.5 s of parsing at every process start,
    /// Mesa's shader cache or not). Drivers inline `put`.
    fn write_store(&self, w: &mut String) {
        let to = self.tile.to;
        let os = self.ostep;
        let yb = if self.flat {
            "P.y_base + n * P.y_nstride"
        } else {
            &format!("P.y_base + n * P.y_nstride + i * {os}u * P.y_w + j0 * {os}u")
        };
        let _ = writeln!(
            w,
            "    let yb = {yb};\n\
             \x20   let ob = wid.y * {to}u;\n\
             \x20   let floor = bitcast<f32>(P.relu_floor);"
        );
        let spots = self.write_store_spots(w);
        for k in 0..to {
            let (u, lane) = (k / 4, LANE[k % 4]);
            let bias =
                open_channel_store(w, k, &format!("yb + (ob + {k}u) * P.y_cstride"), self.bias);
            for (t, at) in spots.iter().enumerate() {
                let _ = writeln!(
                    w,
                    "        put(yo + {at}, live{t}, a{t}_{u}.{lane}{bias}, floor);"
                );
            }
            w.push_str("    }\n");
        }
    }

    /// Names each of the tile's pixels' store condition `live{t}` and
    /// returns its offset from `yo`. Flat: pixel `j0 + t` of the padded
    /// plane is row `fr{t}`, column `fc{t}` of the output (whose rows are
    /// `y_w` wide, the plane's `x_w`), stored when the column lies inside
    /// the row. One division per invocation, then a step per pixel
    /// (lavapipe divides lane by lane).
    fn write_store_spots(&self, w: &mut String) -> Vec<String> {
        let (tp, os) = (self.tile.tp, self.ostep);
        if !self.flat {
            // A 2-D tile's last row group may run past the output's rows.
            let in_rows = |r: usize| match self.tile.tr {
                1 => String::new(),
                _ => format!(" && i + {r}u < P.out_h"),
            };
            return self
                .pixels()
                .enumerate()
                .map(|(a, (r, t))| {
                    let row = in_rows(r);
                    let _ = writeln!(w, "    let live{a} = j0 + {t}u < P.out_w{row};");
                    match r {
                        0 => format!("{}u", t * os),
                        _ => format!("{}u * P.y_w + {}u", r * os, t * os),
                    }
                })
                .collect();
        }
        let _ = writeln!(
            w,
            "    let fr0 = j0 / P.x_w;\n    let fc0 = j0 - fr0 * P.x_w;"
        );
        for t in 1..tp {
            let _ = writeln!(
                w,
                "    let wrap{t} = fc{p} + 1u == P.x_w;\n\
                 \x20   let fc{t} = select(fc{p} + 1u, 0u, wrap{t});\n\
                 \x20   let fr{t} = fr{p} + select(0u, 1u, wrap{t});",
                p = t - 1
            );
        }
        (0..tp)
            .map(|t| {
                let _ = writeln!(
                    w,
                    "    let live{t} = j0 + {t}u < P.out_w && fc{t} < P.y_w;\n\
                     \x20   let at{t} = fr{t} * P.y_w + fc{t};"
                );
                format!("at{t}")
            })
            .collect()
    }
}

/// One direct convolution over a padded view of `src`, written into `y`:
/// `y[n, o, oy + a*ostep, ox + b*ostep] (+)= bias[o] +
///  sum_{c,p,q} wprep[c][p][q][o] * src[n, c, row0 + a*s + p*d, col0 + b*s + q*d]`
/// for a < out_h, b < out_w.
pub(crate) struct DirectJob<'a> {
    pub op: &'static str,
    pub src: &'a Tensor,
    pub w: &'a Tensor,
    pub map: WeightMap,
    pub bias: Option<&'a Tensor>,
    pub y: &'a Tensor,
    pub s: usize,
    pub d: usize,
    pub row0: isize,
    pub col0: isize,
    pub out_h: usize,
    pub out_w: usize,
    pub oy: usize,
    pub ox: usize,
    pub ostep: usize,
    pub accumulate: bool,
    pub relu: bool,
}

impl DirectJob<'_> {
    /// The part of the source a dispatch reads, as a padded copy of
    /// `rows x cols` planes: images `n0..n0 + nb`, channels `c0..c0 + clen`.
    pub fn pad_region(
        &self,
        (n0, nb): (usize, usize),
        (c0, clen): (usize, usize),
        (rows, cols): (usize, usize),
    ) -> PadRegion {
        PadRegion {
            n0,
            images: nb,
            c0,
            planes: clen,
            row0: self.row0,
            col0: self.col0,
            rows,
            cols,
        }
    }
}

/// The job's weights re-laid for its split and `to` produced channels a
/// tile (whole uniform bindings where the split reads them so).
pub(super) fn job_weights(
    gpu: &Gpu,
    j: &DirectJob,
    sp: &Split,
    to: usize,
) -> Result<prep::WeightBlocks> {
    let grid = prep::BlockGrid {
        cs: j.src.nchw().1,
        c_group: sp.c_group,
        co: j.y.nchw().1,
        o_group: sp.o_group,
        to,
    };
    let min_elems = if sp.uniform_w { UNIFORM_VEC4S * 4 } else { 0 };
    prep::prep_weights(gpu, j.w, &j.map, &grid, min_elems)
}

/// Channel and image groups so that every binding fits one window.
pub(super) struct Split {
    pub c_group: usize,
    pub o_group: usize,
    pub images: usize,
    /// The weight slices go through a uniform binding.
    pub uniform_w: bool,
}

pub(super) fn plan(gpu: &Gpu, j: &DirectJob, tile: Tile, plane: usize) -> Result<Split> {
    let (n, cs, ih, iw) = j.src.nchw();
    let (_, co, yh, yw) = j.y.nchw();
    let win = gpu.window_elems();
    let kk = j.map.kh * j.map.kw;
    let mut cg = cs
        .min(items_per_window(gpu, j.op, plane, "padded input plane")?)
        .min(items_per_window(gpu, j.op, ih * iw, "input plane")?)
        .min(gpu.loop_budget() / 4);
    let mut og = co.min(items_per_window(gpu, j.op, yh * yw, "output plane")?);
    let fits =
        |o: usize, c: usize| c * kk * o.next_multiple_of(tile.to) <= win && j.map.span(o, c) <= win;
    while !fits(og, cg) && (cg > 1 || og > 1) {
        if cg > 1 {
            cg = cg.div_ceil(2);
        } else {
            og = og.div_ceil(2);
        }
    }
    items_per_window(
        gpu,
        j.op,
        cg * kk * og.next_multiple_of(tile.to),
        "weight slice",
    )?;
    let (cg, uniform_w) = uniform_weight_groups(gpu, j, tile, cg);
    if uniform_w {
        let uniform_cap = (UNIFORM_VEC4S * 4 / (cg * kk)) / tile.to * tile.to;
        og = og.min(uniform_cap);
    }
    let per_img = |img: usize, len: usize, pl: usize| 1 + (win - len * pl) / img;
    let images = per_img(cg * plane, cg, plane)
        .min(per_img(cs * ih * iw, cg, ih * iw))
        .min(per_img(co * yh * yw, og, yh * yw))
        .clamp(1, n);
    Ok(Split {
        c_group: cg,
        o_group: og,
        images,
        uniform_w,
    })
}

/// Whether a job may run pixel quads (`Tile::quads`): a 1x1, stride-1
/// pass over whole planes of the source, read as is, whose planes are
/// whole vec4s in vec4-aligned windows.
fn quads_fit(gpu: &Gpu, j: &DirectJob) -> bool {
    let (_, _, ih, iw) = j.src.nchw();
    let (_, _, yh, yw) = j.y.nchw();
    (j.map.kh, j.map.kw, j.s, j.d, j.ostep) == (1, 1, 1, 1, 1)
        && (j.row0, j.col0, j.oy, j.ox) == (0, 0, 0, 0)
        && (j.out_h, j.out_w, yh, yw) == (ih, iw, ih, iw)
        && (ih * iw).is_multiple_of(4)
        && gpu.vec4_windows()
}

/// Summed channels per group, and whether the weights go through a
/// uniform binding: on CPU adapters, wherever one tile of produced
/// channels fits it (`plan` then splits produced channels to fit, which
/// keeps the sums). Where `cg` summed channels do not fit even so, they
/// are split into equal groups whose sums accumulate in the output: a
/// different rounding from the storage path, but 2-3x as fast for 128
/// summed channels at 20x20 on lavapipe (an older AMD EPYC), where storage
/// weight loads cost a branch per lane. On an Intel Xeon the storage
/// weights were the faster at 10x10 (64 and 128 channels), so a tile
/// reading storage (a long run's rival) takes them.
fn uniform_weight_groups(gpu: &Gpu, j: &DirectJob, tile: Tile, cg: usize) -> (usize, bool) {
    let cs = j.src.shape()[1];
    let most = UNIFORM_VEC4S * 4 / (j.map.kh * j.map.kw * tile.to);
    if !gpu.uniform_operands() || tile.shared || tile.storage || most == 0 {
        return (cg, false);
    }
    if cg <= most {
        return (cg, true);
    }
    (cs.div_ceil(cs.div_ceil(most)), true)
}

/// How a job's output pixels meet the invocations: `out_h` rows of
/// `out_w` pixels over a padded input plane of `rows x cols`; `flat`: one
/// row running along the whole padded plane (see `layout`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Layout {
    flat: bool,
    rows: usize,
    cols: usize,
    out_h: usize,
    out_w: usize,
}

impl Layout {
    /// Pixel quads' layout: each `h x w` plane as one row.
    fn plane(h: usize, w: usize) -> Layout {
        Layout {
            flat: true,
            rows: h,
            cols: w,
            out_h: 1,
            out_w: h * w,
        }
    }

    fn col_groups(&self, tp: usize) -> usize {
        self.out_w.div_ceil(tp)
    }

    fn row_groups(&self, tr: usize) -> usize {
        self.out_h.div_ceil(tr)
    }

    /// Invocation pixels, live or masked.
    fn lanes(&self, (tp, tr): (usize, usize)) -> usize {
        self.row_groups(tr) * tr * self.col_groups(tp) * tp
    }
}

/// The row length a tile rule should see for a stride-1 pass producing
/// `out_h x out_w` with a `k x k` kernel: where rows narrower than 32 run
/// flat along the padded plane (`layout`), which fills a 16-pixel tile,
/// a row of 32 (the kernels of the 32-pixel size class).
pub(crate) fn rule_row(gpu: &Gpu, (out_h, out_w): (usize, usize), k: usize) -> usize {
    if amortises_compiles(gpu) && flat_class(k * k, out_h, out_w) {
        32
    } else {
        out_w
    }
}

/// Whether this work amortises kernels that compile longer or per size:
/// long runs and batches of many scans take texel reads, flat narrow rows
/// and small workgroups; a first scan does not. With flat rows a first
/// scan's bottom layers took 16-pixel tiles whose kernels compile 2-4x
/// longer (a cold `engine infer` of the mini-MIAS ensemble 16.3 s against
/// 10.6 s), and half as many invocations, one workgroup where there were
/// two (warm 2.87-3.02 s against 2.47-2.50 s).
fn amortises_compiles(gpu: &Gpu) -> bool {
    let v = gpu.variants();
    v.long_run() || v.many_runs()
}

/// Whether a stride-1 pass with `taps` taps and rows of `out_w` may run
/// flat: rows narrower than the 32-pixel size class, more than one of
/// them, and a kernel that pads (a 1x1 pass reads its source as is).
fn flat_class(taps: usize, out_h: usize, out_w: usize) -> bool {
    taps > 1 && out_h > 1 && out_w < 32
}

/// `n` columns, rounded up to whole vec4s where rows are read as vec4s.
fn padded_cols(vec4: bool, n: usize) -> usize {
    if vec4 { n.next_multiple_of(4) } else { n }
}

/// The layout a tile of `tp` pixels runs the job in. Narrow rows waste
/// most of a tile (a 10-pixel row fills 10 of 16 pixels of two 8-pixel
/// tiles, 10 of 40 of one 40-pixel tile), so a stride-1 job with rows
/// narrower than 32 (`flat_class`) runs flat, where that wastes less and
/// `amortises_compiles` allows it: output pixel (r, c) is plane element
/// `r * cols + c`, every tap at a constant offset from it, and the pixels
/// of the plane's padding columns are computed and dropped. The sums and
/// their order are those of the row layout: the results are bit-identical.
fn layout(gpu: &Gpu, j: &DirectJob, (tp, tr): (usize, usize)) -> Layout {
    // The store finds a pixel's row from the padded row's width and
    // checks its column against the output's.
    let stores_whole_rows = j.ostep == 1 && (j.oy, j.ox) == (0, 0) && j.out_w == j.y.shape()[3];
    let may_flat = amortises_compiles(gpu) && stores_whole_rows;
    let geom = (j.map.kh, j.map.kw, j.s, j.d);
    layout_of(
        gpu.vec4_windows(),
        geom,
        (j.out_h, j.out_w),
        may_flat,
        (tp, tr),
    )
}

fn layout_of(
    vec4: bool,
    (kh, kw, s, d): (usize, usize, usize, usize),
    (out_h, out_w): (usize, usize),
    may_flat: bool,
    (tp, tr): (usize, usize),
) -> Layout {
    let quads = |n: usize| padded_cols(vec4, n);
    let rows = Layout {
        flat: false,
        // Every row the last row group's loads touch.
        rows: (out_h.div_ceil(tr) * tr - 1) * s + (kh - 1) * d + 1,
        cols: quads((out_w.div_ceil(tp) * tp - 1) * s + (kw - 1) * d + 1),
        out_h,
        out_w,
    };
    if s != 1 || tr > 1 || !flat_class(kh * kw, out_h, out_w) || !may_flat {
        return rows;
    }
    let cols = quads(out_w + (kw - 1) * d);
    let flat_w = (out_h - 1) * cols + out_w;
    // Every element the last tile's loads touch lies inside the plane.
    let read = (kh - 1) * d * cols + quads(flat_w.div_ceil(tp) * tp + (kw - 1) * d);
    let flat = Layout {
        flat: true,
        rows: read.div_ceil(cols),
        cols,
        out_h: 1,
        out_w: flat_w,
    };
    if flat.lanes((tp, 1)) < rows.lanes((tp, 1)) {
        flat
    } else {
        rows
    }
}

/// `tile`, or the same channels with fewer pixels when one padded input
/// plane of `tile` would not fit a storage binding (a wide tile pads each
/// row further), or fewer produced channels when one summed channel's
/// weight slice (`k*k*to` values) would not fit. Tiles of one channel
/// grouping give bit-identical results, so this changes speed only
/// (except where `uniform_weight_groups` then groups summed channels
/// differently).
fn fitting_tile(gpu: &Gpu, j: &DirectJob, tile: Tile) -> Tile {
    let kk = j.map.kh * j.map.kw;
    let mut tile = tile;
    while tile.to > 8 && kk * tile.to > gpu.window_elems() {
        tile.to /= 2;
    }
    let fits = |tp: usize| {
        let l = layout(gpu, j, (tp, tile.tr));
        l.rows * l.cols <= gpu.window_elems()
    };
    // The candidates' pixel widths, widest first, no wider than `tile`'s.
    std::iter::once(tile.tp)
        .chain(Tile::CANDIDATES.iter().map(|c| c.tp))
        .filter(|&tp| tp <= tile.tp)
        .find(|&tp| fits(tp))
        .map_or(tile, |tp| Tile { tp, ..tile })
}

/// Records the job with the given tile.
pub(crate) fn run(gpu: &Gpu, j: &DirectJob, tile: Tile) -> Result<()> {
    let may_read_texels = !tile.storage && reads_texels(gpu);
    let tile = match tile.quads && !quads_fit(gpu, j) {
        true => tile.without_quads(),
        false => tile,
    };
    let tile = fitting_tile(gpu, j, tile.narrowed((j.out_h, j.out_w)));
    let (n, cs, ih, iw) = j.src.nchw();
    let (_, co, yh, yw) = j.y.nchw();
    let (kh, kw) = (j.map.kh, j.map.kw);
    let lay = match tile.quads {
        true => Layout::plane(ih, iw),
        false => layout(gpu, j, (tile.tp, tile.tr)),
    };
    let (rows, cols, col_groups) = (lay.rows, lay.cols, lay.col_groups(tile.tp));
    let row_groups = lay.row_groups(tile.tr);
    let sp = plan(gpu, j, tile, rows * cols)?;
    let tile = Tile {
        wg: workgroup_size(gpu, tile, sp.images.min(n) * row_groups * col_groups),
        // Where the input comes from is the spec's `texels`: one kernel.
        storage: false,
        ..tile
    };
    let y_img = co * yh * yw;
    let weights = job_weights(gpu, j, &sp, tile.to)?;
    // When the padded view is the source itself (a 1x1 conv whose tile
    // divides the width), read the source: no copy.
    let as_is = (j.row0, j.col0, rows, cols) == (0, 0, ih, iw);
    // Rows of a multiple of 4 (always for padded copies; a source read as
    // is then has planes and windows of such rows too), or with quads
    // planes of a multiple of 4.
    let vec = tile.quads || (gpu.vec4_windows() && cols.is_multiple_of(4));
    let texels = vec && may_read_texels;
    let borders = match as_is {
        true => None,
        false => borders(gpu, j, &lay, vec && !texels),
    };
    // The plane the kernel reads: the padded copy's, or the source's.
    let (x_rows, x_cols) = match as_is || borders.is_some() {
        true => (ih, iw),
        false => (rows, cols),
    };
    for (n0, nb) in runs(n, sp.images) {
        for (ci, (c0, clen)) in runs(cs, sp.c_group).enumerate() {
            let region = j.pad_region((n0, nb), (c0, clen), (rows, cols));
            let padded = match as_is || borders.is_some() {
                true => None,
                false => Some(prep::pad(gpu, j.op, j.src, &region, texels)?),
            };
            let (x, x_base, x_nstride, x_len) = match &padded {
                Some(xp) => (
                    Operand::padded(gpu, j.op, xp, texels)?,
                    0,
                    clen * rows * cols,
                    nb * clen * rows * cols,
                ),
                None => {
                    let img = cs * ih * iw;
                    let (start, len) = (n0 * img + c0 * ih * iw, (nb - 1) * img + clen * ih * iw);
                    let (x, base) = Operand::of(gpu, j.op, (j.src, start, len), texels)?;
                    (x, base, img, len)
                }
            };
            for (oi, (o0, olen)) in runs(co, sp.o_group).enumerate() {
                let opad = olen.next_multiple_of(tile.to);
                let ww = weights.window(gpu, ci, oi);
                let first = c0 == 0;
                let last = c0 + clen == cs;
                let spec = DirectSpec {
                    kh,
                    kw,
                    s: j.s,
                    d: j.d,
                    ostep: j.ostep,
                    tile,
                    bias: j.bias.is_some() && first,
                    accumulate: j.accumulate || !first,
                    vec,
                    uniform_w: sp.uniform_w,
                    texels,
                    flat: lay.flat,
                    borders,
                    sg: gpu
                        .subgroup_size()
                        .filter(|&n| !tile.shared && tile.wg.is_multiple_of(n))
                        .unwrap_or(0),
                };
                // An unused binding is not in the generated layout.
                let bias = j
                    .bias
                    .filter(|_| spec.bias)
                    .map(|b| gpu.window(b, o0, olen));
                let y_start = n0 * y_img + o0 * yh * yw + j.oy * yw + j.ox;
                let y_span = (nb - 1) * y_img + olen * yh * yw - j.oy * yw - j.ox;
                let (yw_, yb) = gpu.window(j.y, y_start, y_span);
                let p = DirectParams {
                    n_count: nb as u32,
                    out_h: lay.out_h as u32,
                    row_groups: row_groups as u32,
                    out_w: lay.out_w as u32,
                    col_groups: col_groups as u32,
                    c_in: clen as u32,
                    x_base,
                    x_nstride: x_nstride as u32,
                    x_cstride: (x_rows * x_cols) as u32,
                    x_w: x_cols as u32,
                    w_base: 0,
                    w_cstride: (kh * kw * opad / 4) as u32,
                    o4_stride: (opad / 4) as u32,
                    o_count: olen as u32,
                    b_base: bias.as_ref().map_or(0, |b| b.1),
                    y_base: yb,
                    y_nstride: y_img as u32,
                    y_cstride: (yh * yw) as u32,
                    y_w: yw as u32,
                    relu_floor: if j.relu && last {
                        0.0f32
                    } else {
                        f32::NEG_INFINITY
                    }
                    .to_bits(),
                    src_h: ih as u32,
                    src_q: (iw / 4) as u32,
                    row0: j.row0 as i32 as u32,
                    col0: j.col0 as i32 as u32,
                    x_last: ((x_base as usize + x_len) / 4).saturating_sub(1) as u32,
                };
                let pipeline = gpu.pipeline_for(spec.key(), || spec.source(), "main");
                let groups = (nb * row_groups * col_groups).div_ceil(tile.wg) as u64;
                let operands = ConvOperands {
                    x: &x,
                    w: &ww,
                    bias: bias.as_ref().map(|b| &b.0),
                    y: &yw_,
                };
                let o_groups = (opad / tile.to) as u32;
                let p = bytemuck::bytes_of(&p);
                dispatch_conv(gpu, (&pipeline, j.op), p, operands, (groups, o_groups));
            }
        }
    }
    Ok(())
}

/// Whether a job reads its source with zeros outside it instead of a
/// padded copy (`DirectSpec::borders`), and the offset of its first
/// column in a vec4: where the kernel reads storage as vec4s (`vec4s`),
/// the source's rows are whole vec4s, its output runs as rows (a flat
/// layout reads the padded plane as one row), and the work amortises
/// compiles. On lavapipe a padded copy moved 2.6 GB/s (each lane's loads
/// and stores are a loop over the SIMD lanes), while a masked vec4 costs
/// the kernel a select: on an Intel Xeon a width-0.25 training step whose
/// rivals read storage took 411-429 ms against 432-454, and a 640x640
/// inference 107-114 ms against 125-130. But whether a layer's rows are
/// whole vec4s depends on the scan's size, so a first scan keeps the
/// padded copies: with borders, a 900x960 crop after a warm run of its
/// 1024x1024 film compiled the other family (4.3 s against 2.1 s).
fn borders(gpu: &Gpu, j: &DirectJob, lay: &Layout, vec4s: bool) -> Option<usize> {
    let iw = j.src.shape()[3];
    let fits = vec4s && !lay.flat && iw.is_multiple_of(4);
    (fits && amortises_compiles(gpu)).then_some(j.col0.rem_euclid(4) as usize)
}

/// Invocations per workgroup for dispatches of `invocations`: the tile's
/// (64), or on a CPU adapter in long runs and batches of many scans the
/// largest of 32, 16 and 8 that still gives every CPU thread two workgroups.
/// lavapipe runs a workgroup on one thread, so a 10x10 layer's 32
/// invocations (4 images) in one workgroup left a core idle (4x256 -> 256
/// at 10x10 on 2 cores: forward 7.4 -> 12-15 GFLOP/s, input gradient 7.3
/// -> 11-17, with 8 or 16). Choosing instead the size that keeps the
/// threads busiest (a stride-2 forward's 160 invocations in ten
/// workgroups of 16, not five of 32) showed no gain in four rounds
/// (session 42). A first scan keeps 64: the size would change
/// with the scan's, and each size a new kernel to compile. The sums are
/// the same whatever the size; a workgroup-memory tile keeps its own.
pub(super) fn workgroup_size(gpu: &Gpu, tile: Tile, invocations: usize) -> usize {
    if !gpu.is_cpu() || tile.shared || !amortises_compiles(gpu) {
        return tile.wg;
    }
    let threads = gpu.cpu_threads();
    [64, 32, 16, 8]
        .into_iter()
        .filter(|&wg| wg <= tile.wg)
        .find(|&wg| invocations.div_ceil(wg) >= 2 * threads)
        .unwrap_or(8.min(tile.wg))
}

/// Whether a direct kernel reads its input as texels: on CPU adapters
/// (`Gpu::texel_operands`), in long runs and in batches of many scans. On
/// lavapipe texel fetches skip the per-lane storage loads' stalls (width
/// 0.25 at 640x640: an inference 580 -> 370 ms), but the texel kernels
/// compile longer: a first scan with an empty shader cache took 23.3 s
/// against 20.4, so a first run keeps the storage kernels, as it keeps the
/// narrower tiles. The sums are the same either way.
pub(super) fn reads_texels(gpu: &Gpu) -> bool {
    gpu.texel_operands() && amortises_compiles(gpu)
}

/// (key, WGSL) of generated direct kernels: every tile with every kernel
/// size, stride and dilation the network's passes use, and every flag.
pub(crate) fn sample_sources() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let geoms = [
        (3, 3, 1, 1),
        (3, 3, 2, 1),
        (3, 3, 1, 2),
        (1, 1, 1, 1),
        (4, 4, 2, 1),
        (2, 2, 1, 1),
        (2, 1, 1, 1),
        (4, 4, 1, 1),
    ];
    // The wide 2-D tiles run only kernels of up to 3 taps per axis.
    let candidates = Tile::CANDIDATES.into_iter().map(|t| (t, usize::MAX));
    let wide = [16, 8].into_iter().filter_map(Tile::two_d).map(|t| (t, 3));
    for (tile, most_taps) in candidates.chain(wide) {
        for (i, &(kh, kw, s, d)) in geoms.iter().enumerate() {
            if kh > most_taps || (tile.quads && (kh, kw, s, d) != (1, 1, 1, 1)) {
                continue;
            }
            let spec = DirectSpec {
                kh,
                kw,
                s,
                d,
                ostep: 1 + i % 2,
                tile,
                bias: i % 2 == 0,
                accumulate: i % 3 == 0,
                vec: i % 3 != 1,
                uniform_w: !tile.shared && i % 2 == 1,
                texels: i % 3 == 2,
                flat: i % 4 == 2 && tile.tr == 1,
                borders: (i % 3 == 0 && i % 4 != 2).then_some(i % 4),
                sg: 0,
            };
            // Quads read whole vec4s of planes as they are (`quads_fit`).
            let spec = match tile.quads {
                true => DirectSpec {
                    ostep: 1,
                    vec: true,
                    flat: true,
                    borders: None,
                    ..spec
                },
                false => spec,
            };
            out.push((spec.key(), spec.source()));
            if !tile.shared {
                let shared = DirectSpec { sg: 8, ..spec };
                out.push((shared.key(), shared.source()));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::Tile;

    /// Scans of any size share kernels: on a CPU adapter the default tile
    /// changes only at the size-class boundaries, whatever the width.
    #[test]
    fn default_tile_depends_on_size_class_only() {
        let rule64 = |long_run, k, w| Tile::rule(true, long_run, (k, 1), 64, w);
        for long_run in [false, true] {
            for (k, produced) in [1, 3]
                .into_iter()
                .flat_map(|k| [4, 8, 16, 24, 64].map(|p| (k, p)))
            {
                let classes = [(1..32), (32..256), (256..3000)];
                for widths in classes {
                    let first = Tile::rule(true, long_run, (k, 1), produced, widths.start);
                    for w in widths {
                        let tile = Tile::rule(true, long_run, (k, 1), produced, w);
                        assert_eq!(tile, first, "width {w}");
                    }
                }
            }
            assert_ne!(rule64(long_run, 3, 31), rule64(long_run, 3, 32));
        }
        assert_ne!(rule64(false, 3, 255), rule64(false, 3, 256));
        assert_ne!(rule64(false, 1, 31), rule64(false, 1, 32));
        // A long run trades compile time for speed; a first scan does not.
        assert_ne!(rule64(true, 3, 80), rule64(false, 3, 80));
    }

    /// Rows narrower than the tile run flat along the padded plane, with
    /// the plane tall enough for the last tile's loads; wide rows, strided
    /// and 1x1 passes and outputs stored at an offset keep the rows.
    #[test]
    fn narrow_stride_1_rows_run_flat_where_that_wastes_less() {
        use super::layout_of;
        // 10x10 from a 3x3 kernel: rows of 12 (10 + 2), 118 pixels.
        let l = layout_of(true, (3, 3, 1, 1), (10, 10), true, (16, 1));
        assert!(
            l.flat && (l.out_h, l.out_w, l.cols) == (1, 118, 12),
            "{l:?}"
        );
        // The last tile's loads end at element 2*12 + 128 + 2 -> 13 rows.
        assert_eq!(l.rows, 13);
        assert!(l.rows * l.cols >= 2 * 12 + 128 + 2);
        // Dilation 2: rows of 16 (10 + 4, whole vec4s), 154 pixels; with
        // 16-pixel tiles that is as many lanes as rows (a tie keeps rows).
        let l = layout_of(true, (3, 3, 1, 2), (10, 10), true, (40, 1));
        assert!(l.flat && (l.out_w, l.cols) == (154, 16), "{l:?}");
        assert!(!layout_of(true, (3, 3, 1, 2), (10, 10), true, (16, 1)).flat);
        // 80-pixel rows fill 16-pixel tiles exactly: rows.
        assert!(!layout_of(true, (3, 3, 1, 1), (80, 80), true, (16, 1)).flat);
        // 4-pixel tiles waste as much either way: rows.
        assert!(!layout_of(true, (3, 3, 1, 1), (10, 10), true, (4, 1)).flat);
        assert!(!layout_of(true, (3, 3, 2, 1), (10, 10), true, (16, 1)).flat);
        assert!(!layout_of(true, (1, 1, 1, 1), (10, 10), true, (16, 1)).flat);
        assert!(!layout_of(true, (3, 3, 1, 1), (10, 10), false, (16, 1)).flat);
        assert!(!layout_of(true, (3, 3, 1, 1), (1, 10), true, (16, 1)).flat);
        // Rows of 32 or more keep their layout, whatever the tile wastes.
        assert!(!layout_of(true, (3, 3, 1, 1), (10, 50), true, (40, 1)).flat);
    }

    /// Every tile a rule takes is a candidate, so `engine tune` times it
    /// and the variant tests, which run the candidates, check it.
    #[test]
    fn every_rule_tile_is_a_candidate() {
        for (cpu, long_run) in [(true, true), (true, false), (false, true)] {
            for ks in [(1, 1), (3, 1), (3, 2), (4, 1), (4, 2), (2, 1), (1, 2)] {
                for produced in [1, 4, 8, 12, 16, 32, 64, 512] {
                    for w in [1, 10, 31, 32, 80, 255, 256, 1000] {
                        let t = Tile::rule(cpu, long_run, ks, produced, w);
                        let at = format!("{ks:?} {produced} w{w} long run {long_run}");
                        assert!(Tile::CANDIDATES.contains(&t), "{at}: {t:?}");
                    }
                }
            }
        }
    }

    /// GPUs time only tiles their registers hold, their default among
    /// them; CPU adapters time every tile.
    #[test]
    fn gpu_candidates_fit_the_register_budget() {
        use crate::gpu::GPU_ACCUMULATORS;
        assert_eq!(Tile::candidates_for(true), Tile::CANDIDATES);
        let gpu = Tile::candidates_for(false);
        assert!(gpu.iter().all(|t| t.accumulators() <= GPU_ACCUMULATORS));
        assert!(gpu.contains(&Tile::rule(false, true, (3, 1), 64, 80)));
        assert!(
            gpu.len() > 1 && gpu.len() < Tile::CANDIDATES.len(),
            "{gpu:?}"
        );
    }
}
