//! Convolution (3x3 with stride 1/2 and dilation 1/2, 1x1) and transpose
//! convolution (4x4, stride 1/2): forward, input gradient and weight
//! gradient.
//!
//! Four passes produce an activation-shaped tensor and are one kernel
//! family: conv forward and tconv input gradient are *direct* convolutions;
//! conv input gradient and tconv forward are their adjoints, which split
//! into one direct convolution per output residue class mod the stride
//! (sub-pixel phases, so no invalid tap is ever visited) with a re-laid
//! weight slice. The two weight gradients are one GEMM family (`wgrad`).
//! Both are generated per shape (`direct`, `wgrad`); the first static
//! kernels remain as the `gather`/`rows` variants. Which variant runs is
//! chosen per shape by `choose` (rules, a tuning file, or timing).
mod blocks;
mod codegen;
mod direct;
mod gather;
mod prep;
mod wgrad;

pub use blocks::BlockTile;
pub use direct::Tile;
pub use wgrad::GemmTile;

use super::{check_rank, elementwise, same_padding};
use crate::error::{Result, shape_err};
use crate::gpu::{Gpu, Tensor, TuneMode};
use direct::DirectJob;
use prep::WeightMap;
use wgrad::WgradGeom;

/// Index geometry shared by every pass: `in*stride + p*dil - pad` rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geom {
    pub k: usize,
    pub stride: usize,
    pub dil: usize,
    pub pad_t: usize,
    pub pad_l: usize,
}

/// How the weight tensor is indexed by (produced channel o, summed channel c).
#[derive(Clone, Copy)]
pub(crate) enum WeightLayout {
    /// w[o, c, k, k] (conv forward; tconv input gradient).
    OutIn,
    /// w[c, o, k, k] (conv input gradient; tconv forward).
    InOut,
}

/// Output size and geometry of a SAME conv (docs/MODEL.md).
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

/// Geometry of docs/MODEL.md's 4x4 transpose conv: output `in * stride`, and
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

/// A weight gradient's `dy` must have the shape the forward pass gave.
fn check_dy(op: &'static str, dy: &Tensor, want: [usize; 4], x: &Tensor, w: &Tensor) -> Result<()> {
    if dy.shape() != want {
        return shape_err(
            op,
            format!(
                "dy {:?} does not match x {:?} and weight {:?}",
                dy.shape(),
                x.shape(),
                w.shape()
            ),
        );
    }
    Ok(())
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

/// A variant of the four passes that produce an activation-shaped tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConvVariant {
    /// The first static kernels (shaders/conv2d.wgsl).
    Gather,
    /// Generated direct convolution with this register tile.
    Direct(Tile),
    /// Every phase of a stride-2 transposed pass in one generated kernel
    /// (`blocks`); elsewhere the direct tile of the same channels.
    Blocks(BlockTile),
}

impl ConvVariant {
    pub fn name(&self) -> String {
        match self {
            ConvVariant::Gather => "gather".into(),
            ConvVariant::Direct(t) => t.name(),
            ConvVariant::Blocks(t) => t.name(),
        }
    }

    /// Every variant this adapter can build, for tests and tuning.
    pub fn candidates(gpu: &Gpu) -> Vec<ConvVariant> {
        let mut v = vec![ConvVariant::Gather];
        v.extend(Tile::candidates(gpu).into_iter().map(ConvVariant::Direct));
        let blocks = BlockTile::CANDIDATES.into_iter();
        v.extend(blocks.filter(|b| b.fits(gpu)).map(ConvVariant::Blocks));
        v
    }

    /// The candidates and every long-run rival for a square kernel of
    /// `taps` taps (`long_run_rivals`): each direct tile reading its
    /// operands from storage where the adapter reads beyond storage, and
    /// the 2-D tiles for kernels of `TWO_D_TAPS` per axis; what `engine bench
    /// --all-variants` times, so that a long run's choices can be compared
    /// in one process.
    pub fn with_rivals(gpu: &Gpu, taps: usize) -> Vec<ConvVariant> {
        let mut v = Self::candidates(gpu);
        let mut storage: Vec<Tile> = match reads_beyond_storage(gpu) {
            true => Tile::candidates(gpu)
                .into_iter()
                .filter(|t| !t.shared)
                .collect(),
            false => Vec::new(),
        };
        if TWO_D_TAPS.contains(&taps.isqrt()) {
            storage.extend([16, 8].into_iter().filter_map(Tile::two_d));
        }
        for t in storage {
            let rival = ConvVariant::Direct(t.reading_storage());
            if !v.contains(&rival) {
                v.push(rival);
            }
        }
        v
    }

    /// The variant used when no tuned choice exists (see `Tile::rule`).
    pub fn rule(gpu: &Gpu, ks: (usize, usize), produced: usize, out_w: usize) -> ConvVariant {
        let long_run = gpu.variants().long_run();
        ConvVariant::Direct(Tile::rule(gpu.is_cpu(), long_run, ks, produced, out_w))
    }

    /// What a long run (training) on a CPU adapter runs untimed (the
    /// lead) and times against it once per shape when nothing is tuned
    /// (the rivals). Which tile wins depends on the CPU: on a Zen 4 EPYC
    /// 40 pixels of 16 channels ran 3x3 64 -> 64 at 4x80x80 at 61 GFLOP/s
    /// against the rule's 64-channel tile's 38 (stride 2: 37 against 24)
    /// and won on every such row of a width-1 network but one; on an
    /// Intel Xeon 51 against 37 (stride 2: 27 against 24); on an older
    /// EPYC the rule's tiles won. On shorter rows laid out as rows the
    /// rule won every time; on rows under 32 that run flat
    /// (`direct::rule_row` calls them 32) the 40-pixel tile won on most
    /// shapes (3x3 dilation 2, 512 -> 512 at 4x10x10: 22.3 against 14.6).
    /// So where the rule is that wide tile, the 40-pixel tile leads and
    /// the rule is its rival: now at stride 2 only, as on stride-1 rows
    /// of 32 or more the rule itself is the 40-pixel tile (`Tile::rule`:
    /// the 16 x 64 tile won almost nowhere). Whether the input is read
    /// as texels (`Gpu::texel_operands`) or from storage depends on the
    /// CPU too: texels removed gallivm's per-lane load stalls on an older
    /// EPYC, but on an Intel Xeon their padded copies cost more than they saved
    /// (4x8x160x160, ms, texels against storage: stride-2 forward 3.4-4.2
    /// against 2.2, 4x4 transposed forward 16-16.4 against 11.3-11.6; at
    /// 64 channels no difference that machine could show), and so do
    /// uniform weights (at 10x10, 64 and 128 channels, a conv5 layer's
    /// forward took 4.2-4.7 ms from storage against 5.5-6.3 through
    /// uniform slices); so the lead reading both from storage is a rival
    /// too. So is a 2-D tile reading storage for kernels of 2 or 3 taps per
    /// axis (`taps`; `Tile::two_d`): its output rows share the input rows
    /// they read. A 4x4 kernel's 2-D tile, 4096 vec4 multiply-adds per
    /// summed channel, took LLVM minutes to compile. A 1x1 pass whose
    /// rule is pixel quads leads with them, the 40-pixel tile its rival on
    /// rows of 32 or more. A long run amortises the extra compiles and the
    /// few timed runs in its first step. `stride` is the pass's as it
    /// runs (1 for a transposed pass's phases): a stride-2 pass that makes
    /// fewer than 4 multiply-adds per input element and produced channel
    /// (3x3, not 4x4) leads with its storage reader, the texel tile its
    /// rival (`copy_outweighs_texels`); where the rule is the wide tile,
    /// the rule reading storage leads there and the 40-pixel tile reading
    /// storage is a rival: on a Zen 4 EPYC (64 -> 64 at 4x80x80, stride 2)
    /// 8 x 64 reading storage beat 40 x 16 reading storage in each of six
    /// processes (10.1-18.2 ms against 10.2-20.2; 11.9 against 14.7 ms,
    /// 80% against 66% of the 3x3 forward's rate in the same rounds).
    pub fn long_run_rivals(
        gpu: &Gpu,
        rule: ConvVariant,
        (taps, stride, out_w): (usize, usize, usize),
    ) -> (ConvVariant, Vec<Self>) {
        if !(gpu.is_cpu() && gpu.variants().long_run()) {
            return (rule, Vec::new());
        }
        let tile40 = Tile::new(40, 16);
        let storage_first = reads_beyond_storage(gpu) && copy_outweighs_texels(taps, stride);
        let (mut lead, mut rivals) = match rule {
            ConvVariant::Direct(t) if out_w >= 32 && t.quads => {
                (rule, vec![ConvVariant::Direct(tile40)])
            }
            // Reading storage, the wide rule beat the 40-pixel tile.
            ConvVariant::Direct(t) if out_w >= 32 && t.to > 16 && storage_first => {
                let rivals = vec![tile40.reading_storage(), tile40];
                let rivals = rivals.into_iter().map(ConvVariant::Direct).collect();
                (ConvVariant::Direct(t.reading_storage()), rivals)
            }
            ConvVariant::Direct(t) if out_w >= 32 && t.to > 16 => {
                (ConvVariant::Direct(tile40), vec![rule])
            }
            _ => (rule, Vec::new()),
        };
        if let (true, ConvVariant::Direct(t)) = (reads_beyond_storage(gpu), lead)
            && !t.storage
        {
            let storage = ConvVariant::Direct(t.reading_storage());
            match storage_first {
                true => rivals.push(std::mem::replace(&mut lead, storage)),
                false => rivals.push(storage),
            }
        }
        if let ConvVariant::Direct(t) = rule
            && TWO_D_TAPS.contains(&taps)
            && let Some(two_d) = Tile::two_d(t.to)
        {
            rivals.push(ConvVariant::Direct(two_d.reading_storage()));
        }
        (lead, rivals)
    }
}

/// Taps per axis of the kernels a 2-D tile is a long run's rival for.
const TWO_D_TAPS: std::ops::RangeInclusive<usize> = 2..=3;

/// Whether a pass of `taps` taps per axis and `stride` leads with its
/// storage reader rather than its texel tile: a stride-2 pass making fewer
/// than 4 multiply-adds per input element and produced channel (3x3, not
/// 4x4). A texel tile reads a copy of its input made for
/// it each time (a padded copy, or the source copied into the texture),
/// as large as the input; a storage tile reads the source itself where
/// its rows are whole vec4s (`DirectSpec::borders`), else a copy into a
/// buffer, which costs about half a copy into the texture. At stride 2
/// the input is four times the output, so the copy is a large part of
/// the pass: on a Zen 4 EPYC (64 -> 64 at 4x80x80, four processes,
/// medians of five alternating rounds) the 3x3 stride-2 forward took
/// 10.8 / 20.2 / 16.8 / 13.2 ms reading storage against 15.5 / 23.7 /
/// 21.6 / 16.5 reading texels; on an Intel Xeon (4x8x160x160) 2.2
/// against 3.4-4.2 ms. The 4x4 stride-2 pass (4 multiply-adds per input
/// element) took 104 against 93 ms, the 3x3 stride-1 forward 50-54
/// against 39-42 ms, and the 1x1's pixel quads, whose copy is the
/// source copied into the texture, 5.7 / 8.9 / 9.7 / 8.4 against 7.3 /
/// 8.9 / 8.4 / 8.6: those keep texels.
fn copy_outweighs_texels(taps: usize, stride: usize) -> bool {
    stride > 1 && taps * taps < 4 * stride * stride
}

/// A variant of the two weight-gradient passes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WgradVariant {
    /// The first static kernel: one invocation per (o, c) and row chunk.
    Rows,
    /// Generated GEMM over (image, row, column) with this tile.
    Gemm(GemmTile),
}

impl WgradVariant {
    pub fn name(&self) -> String {
        match self {
            WgradVariant::Rows => "rows".into(),
            WgradVariant::Gemm(t) => t.name(),
        }
    }

    /// Every variant this adapter can build for a kernel of `taps` taps,
    /// for tests and tuning.
    pub fn candidates(gpu: &Gpu, taps: usize) -> Vec<WgradVariant> {
        let mut v = vec![WgradVariant::Rows];
        let tiles = GemmTile::candidates(gpu, taps).into_iter();
        v.extend(tiles.map(WgradVariant::Gemm));
        v
    }

    /// Lanes run over input channels: 8 (lavapipe's SIMD width) on CPU
    /// adapters, two channels each, with 8-column steps and 16 gradient
    /// channels (8 or 4 for narrow layers, whose accumulators past the
    /// channels would compute zeros: on an Intel Xeon, width 0.25,
    /// up_conv9's weight gradient (4 gradient channels, 4x160x160) took
    /// 3.1-3.2 ms with 4 against 5.0 with 8, the logits' 1.0 against 1.7);
    /// 32 lanes elsewhere (a warp or wave
    /// needs more). On lavapipe a step's gradient values cost a load per
    /// lane although every lane reads the same ones, so two channels per
    /// lane halve that cost per multiply-add (64 x 64 channels at 4x80x80:
    /// 7.5 -> 10-11 GFLOP/s); one channel per lane was no faster for 8
    /// input channels.
    pub fn rule(gpu: &Gpu, produced: usize) -> WgradVariant {
        let to = match produced {
            16.. => 16,
            8.. => 8,
            _ => 4,
        };
        let tile = match gpu.is_cpu() {
            true => GemmTile::new(to, 8, 8).with_ct(2),
            false => GemmTile::new(8, 4, 32),
        };
        WgradVariant::Gemm(tile)
    }

    /// The rule and, in a long run on a CPU adapter with texel operands or
    /// uniform slabs, the same tile reading both operands from storage as
    /// its rival (see `ConvVariant::long_run_rivals`). On an Intel Xeon,
    /// 4x8x160x160, padded input from storage against texels: 6.7 against
    /// 7.8-7.9 ms; 4x4 transposed, stride 2: 12.1-12.9 against 17.7-17.8
    /// ms. g from storage too: a width-0.25 step's weight gradients took
    /// 113.5 against 140.2 ms of GPU time, in 3 dispatches per layer
    /// rather than up to 30 (slab copies and partial sums per block).
    pub fn long_run(gpu: &Gpu, produced: usize) -> (WgradVariant, Vec<WgradVariant>) {
        let rule = WgradVariant::rule(gpu, produced);
        let storage = gpu.is_cpu() && gpu.variants().long_run() && reads_beyond_storage(gpu);
        match (storage, rule) {
            (true, WgradVariant::Gemm(t)) => (rule, vec![WgradVariant::Gemm(t.reading_storage())]),
            _ => (rule, Vec::new()),
        }
    }
}

/// Whether kernels on this adapter read some operands other than from
/// storage (texels, uniform bindings): then a tile reading everything from
/// storage (`Tile::reading_storage`, `GemmTile::reading_storage`) is a
/// kernel of its own, and a long run's rival.
fn reads_beyond_storage(gpu: &Gpu) -> bool {
    gpu.texel_operands() || gpu.uniform_operands()
}

/// Runs per candidate and round when timing one shape (after one warm-up
/// run that also compiles the pipeline).
#[cfg(not(target_arch = "wasm32"))]
const TUNE_ITERS: usize = 2;

/// Rounds over the candidates, each timed once per round, its best round
/// counting: interference from other work on the machine only adds time,
/// and alternating spreads it over the candidates. With one round, a
/// width-0.25 step on a 2-core Xeon kept a weight gradient with a padded
/// copy at 7.7 ms against 4.9 ms for its rival reading the source.
#[cfg(not(target_arch = "wasm32"))]
const TUNE_ROUNDS: usize = 3;

/// The variant for `key`: the remembered winner; else, when tuning is on,
/// the fastest of the candidates and rivals by `time_one` (remembered);
/// else, in a long run without tuning, the fastest of `lead` and its
/// `rivals` (remembered under its own key, so that `engine tune` still
/// times every candidate); else `lead`.
fn choose<V: Copy + PartialEq>(
    gpu: &Gpu,
    key: &str,
    candidates: &[V],
    (lead, rivals): (V, &[V]),
    name: impl Fn(&V) -> String,
    time_one: &dyn Fn(V) -> Result<()>,
) -> Result<V> {
    let v = pick(gpu, key, candidates, (lead, rivals), &name, time_one)?;
    gpu.variants().note_used(&name(&v));
    Ok(v)
}

fn pick<V: Copy + PartialEq>(
    gpu: &Gpu,
    key: &str,
    candidates: &[V],
    (lead, rivals): (V, &[V]),
    name: &impl Fn(&V) -> String,
    time_one: &dyn Fn(V) -> Result<()>,
) -> Result<V> {
    let variants = gpu.variants();
    if variants.baseline() {
        return Ok(candidates[0]);
    }
    let remembered = |key: &str| {
        let winner = variants.get(key)?;
        let mut known = candidates.iter().chain([&lead]).chain(rivals);
        known.find(|v| name(v) == winner).copied()
    };
    // Without tuning, a long run's rivals are timed under their own key.
    let rivalry =
        (!rivals.is_empty() && variants.mode() == TuneMode::Cache).then(|| rivals_key(key));
    for k in std::iter::once(key).chain(rivalry.as_deref()) {
        if let Some(v) = remembered(k) {
            return Ok(v);
        }
    }
    // A dry run dispatches nothing, so it cannot time candidates.
    if gpu.in_dry_run() {
        return Ok(lead);
    }
    let (timed, key): (Vec<V>, &str) = match (variants.mode(), &rivalry) {
        // Every candidate and rival, each once.
        (TuneMode::On, _) => {
            let mut all = candidates.to_vec();
            for &v in std::iter::once(&lead).chain(rivals) {
                if !all.contains(&v) {
                    all.push(v);
                }
            }
            (all, key)
        }
        (_, Some(k)) => (
            std::iter::once(lead)
                .chain(rivals.iter().copied())
                .collect(),
            k,
        ),
        _ => return Ok(lead),
    };
    let best = fastest(gpu, &timed, lead, time_one)?;
    variants.set(key, &name(&best));
    Ok(best)
}

/// The key under which the fastest of a long run's lead and rivals is
/// remembered (a new name whenever the rivals change, so that older files'
/// pairs are timed again: last when the wide tile reading storage led
/// stride-2 3x3 passes).
fn rivals_key(key: &str) -> String {
    format!(
        "{key} (long-run rivals, slabs, texels or storage, 2-D tiles, pixel quads, blocks, wide storage)"
    )
}

/// The candidate that runs `time_one` fastest (ties: the earliest).
#[cfg(not(target_arch = "wasm32"))]
fn fastest<V: Copy>(
    gpu: &Gpu,
    candidates: &[V],
    rule: V,
    time_one: &dyn Fn(V) -> Result<()>,
) -> Result<V> {
    for &v in candidates {
        time_one(v)?;
    }
    let mut best = vec![f64::INFINITY; candidates.len()];
    for _ in 0..TUNE_ROUNDS {
        for (&v, best) in candidates.iter().zip(&mut best) {
            *best = best.min(gpu.time(TUNE_ITERS, &|| time_one(v))?);
        }
    }
    // Ties: the earliest.
    let fastest = (0..candidates.len()).fold(0, |b, i| if best[i] < best[b] { i } else { b });
    Ok(candidates.get(fastest).copied().unwrap_or(rule))
}

/// In a browser timing would have to wait on the GPU inside a dispatch
/// call, which cannot block: the rule's choice stands.
#[cfg(target_arch = "wasm32")]
fn fastest<V: Copy>(
    _gpu: &Gpu,
    _candidates: &[V],
    rule: V,
    _time_one: &dyn Fn(V) -> Result<()>,
) -> Result<V> {
    Ok(rule)
}

/// The key a shape is tuned under: pass, source and produced shapes, geometry.
fn shape_key(op: &str, src: &Tensor, y: &Tensor, g: Geom) -> String {
    let (n, c, h, w) = src.nchw();
    format!(
        "{op} n{n} c{c} o{} {h}x{w} k{} s{} d{}",
        y.shape()[1],
        g.k,
        g.stride,
        g.dil
    )
}

/// Direct passes (conv forward, tconv input gradient) and their adjoints
/// (conv input gradient, tconv forward).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Direction {
    Direct,
    Transposed,
}

/// One activation-producing pass, before a variant is picked.
struct Produce<'a> {
    op: &'static str,
    dir: Direction,
    src: &'a Tensor,
    w: &'a Tensor,
    bias: Option<&'a Tensor>,
    g: Geom,
    relu: bool,
    /// Add to what `y` holds (before the ReLU) instead of overwriting it.
    accumulate: bool,
}

impl Produce<'_> {
    /// How prepared taps come from the weight tensor: the direct passes read
    /// w[produced][summed], the transposed ones w[summed][produced].
    fn weight_map(
        &self,
        p0: isize,
        q0: isize,
        pstep: isize,
        qstep: isize,
        kh: usize,
        kw: usize,
    ) -> WeightMap {
        let ws = self.w.shape();
        let kk = ws[2] * ws[3];
        let (prod_stride, sum_stride) = match self.dir {
            Direction::Direct => (ws[1] * kk, kk),
            Direction::Transposed => (kk, ws[1] * kk),
        };
        WeightMap {
            prod_stride,
            sum_stride,
            k: ws[2],
            p0,
            q0,
            pstep,
            qstep,
            kh,
            kw,
        }
    }

    /// Writes the pass into `y` with `variant` (choosing one when `None`).
    fn run(&self, gpu: &Gpu, y: &Tensor, variant: Option<ConvVariant>) -> Result<()> {
        gpu.scope(self.op, || self.run_scoped(gpu, y, variant))
    }

    fn run_scoped(&self, gpu: &Gpu, y: &Tensor, variant: Option<ConvVariant>) -> Result<()> {
        let v = match variant {
            Some(v) => v,
            None => {
                let key = shape_key(self.op, self.src, y, self.g);
                let (lead, rivals) = self.lead_and_rivals(gpu, y);
                // Timing (tuning only) writes into a scratch output.
                choose(
                    gpu,
                    &key,
                    &ConvVariant::candidates(gpu),
                    (lead, &rivals),
                    ConvVariant::name,
                    &|v| self.run_variant(gpu, &gpu.empty(y.shape())?, v),
                )?
            }
        };
        self.run_variant(gpu, y, v)
    }

    /// The variant that runs untimed and a long run's rivals to it
    /// (`ConvVariant::long_run_rivals`): direct passes keep their stride;
    /// transposed passes run stride-1 phases.
    fn lead_and_rivals(&self, gpu: &Gpu, y: &Tensor) -> (ConvVariant, Vec<ConvVariant>) {
        let (_, o, h, w) = y.nchw();
        let (stride, row) = match (self.dir, self.g.stride) {
            (_, 1) => (1, direct::rule_row(gpu, (h, w), self.g.k)),
            (Direction::Direct, s) => (s, w),
            (Direction::Transposed, s) => (1, w / s),
        };
        let rule = ConvVariant::rule(gpu, (self.g.k, stride), o, row);
        // Taps per axis of the kernels that run (a transposed pass runs
        // stride-1 phases of about k / stride taps).
        let taps = match self.dir {
            Direction::Direct => self.g.k,
            Direction::Transposed => self.g.k.div_ceil(self.g.stride),
        };
        let (lead, mut rivals) = ConvVariant::long_run_rivals(gpu, rule, (taps, stride, row));
        // A stride-2 transposed pass's phases in one kernel lead a long
        // run on a CPU adapter (`BlockTile::CANDIDATES`), the phase path
        // and its rivals timed against them.
        let blocks = gpu.is_cpu() && gpu.variants().long_run();
        if blocks && self.block_job(gpu, y).is_some() {
            rivals.insert(0, lead);
            return (ConvVariant::Blocks(BlockTile::LONG_RUN), rivals);
        }
        (lead, rivals)
    }

    fn run_variant(&self, gpu: &Gpu, y: &Tensor, v: ConvVariant) -> Result<()> {
        let tile = match v {
            ConvVariant::Direct(tile) => tile,
            ConvVariant::Gather => return self.run_gather(gpu, y),
            ConvVariant::Blocks(b) => match self.block_job(gpu, y) {
                Some(job) => return blocks::run(gpu, &job, b),
                None => b.plain(),
            },
        };
        match self.dir {
            Direction::Direct => direct::run(gpu, &self.direct_job(y), tile),
            Direction::Transposed => match self.phase_jobs(y) {
                Some(jobs) => jobs.iter().try_for_each(|j| direct::run(gpu, j, tile)),
                None => self.run_gather(gpu, y),
            },
        }
    }

    fn run_gather(&self, gpu: &Gpu, y: &Tensor) -> Result<()> {
        let (kernel, layout) = match self.dir {
            Direction::Direct => (gather::FORWARD, WeightLayout::OutIn),
            Direction::Transposed => (gather::TRANSPOSE, WeightLayout::InOut),
        };
        gather::gather(
            gpu, self.op, kernel, layout, self.src, self.w, self.bias, y, self.g, false,
        )?;
        if self.relu {
            let r = super::elementwise::relu(gpu, y)?;
            gpu.copy(&r, y);
        }
        Ok(())
    }

    fn direct_job<'a>(&'a self, y: &'a Tensor) -> DirectJob<'a> {
        let g = self.g;
        let (_, _, oh, ow) = y.nchw();
        DirectJob {
            op: self.op,
            src: self.src,
            w: self.w,
            map: self.weight_map(0, 0, 1, 1, g.k, g.k),
            bias: self.bias,
            y,
            s: g.stride,
            d: g.dil,
            row0: -(g.pad_t as isize),
            col0: -(g.pad_l as isize),
            out_h: oh,
            out_w: ow,
            oy: 0,
            ox: 0,
            ostep: 1,
            accumulate: self.accumulate,
            relu: self.relu,
        }
    }

    /// A stride-2 transposed pass as one block job (`blocks`), where that
    /// fits.
    fn block_job<'a>(&'a self, gpu: &Gpu, y: &'a Tensor) -> Option<blocks::BlockJob<'a>> {
        let g = self.g;
        if (self.dir, g.stride) != (Direction::Transposed, 2) {
            return None;
        }
        let job = DirectJob {
            map: self.weight_map(0, 0, 1, 1, g.k, g.k),
            s: 1,
            ostep: 2,
            ..self.direct_job(y)
        };
        blocks::block_job(gpu, job, (g.k, g.dil, (g.pad_t, g.pad_l)))
    }

    /// The transposed pass as one direct job per (row, column) residue
    /// class of the produced tensor; `None` when some class has no tap.
    fn phase_jobs<'a>(&'a self, y: &'a Tensor) -> Option<Vec<DirectJob<'a>>> {
        let g = self.g;
        let (_, _, yh, yw) = y.nchw();
        let rows = axis_phases(g.k, g.stride, g.dil, g.pad_t, yh)?;
        let cols = axis_phases(g.k, g.stride, g.dil, g.pad_l, yw)?;
        let mut jobs = Vec::new();
        for r in &rows {
            for c in &cols {
                let d = match (r.taps > 1, c.taps > 1) {
                    (true, true) if r.dil != c.dil => return None,
                    (true, _) => r.dil,
                    (_, true) => c.dil,
                    _ => 1,
                };
                jobs.push(DirectJob {
                    op: self.op,
                    src: self.src,
                    w: self.w,
                    map: self.weight_map(r.first, c.first, r.step, c.step, r.taps, c.taps),
                    bias: self.bias,
                    y,
                    s: 1,
                    d,
                    row0: r.min_off,
                    col0: c.min_off,
                    out_h: r.count,
                    out_w: c.count,
                    oy: r.residue,
                    ox: c.residue,
                    ostep: g.stride,
                    accumulate: self.accumulate,
                    relu: self.relu,
                });
            }
        }
        Some(jobs)
    }
}

/// The taps of one residue class r (mod stride) of a transposed pass along
/// one axis. Produced index `h = r + stride*a` gathers from summed index
/// `a + off(p)` for the taps p with `r + pad - p*dil` divisible by the
/// stride, where `off(p) = (r + pad - p*dil) / stride`; ordered by
/// increasing offset they are a stride-1 convolution with dilation `dil`.
#[derive(Clone, Copy, Debug)]
struct AxisPhase {
    residue: usize,
    /// Produced indices in the class.
    count: usize,
    taps: usize,
    /// Original tap of prepared tap 0, and the step between taps.
    first: isize,
    step: isize,
    dil: usize,
    /// Summed index read for a = 0 by prepared tap 0.
    min_off: isize,
}

fn axis_phases(k: usize, s: usize, d: usize, pad: usize, len: usize) -> Option<Vec<AxisPhase>> {
    let (si, di, pi) = (s as isize, d as isize, pad as isize);
    let mut out = Vec::new();
    for r in 0..s.min(len) {
        let num = |p: usize| r as isize + pi - p as isize * di;
        let taps: Vec<usize> = (0..k)
            .rev()
            .filter(|&p| num(p).rem_euclid(si) == 0)
            .collect();
        let off = |p: usize| num(p).div_euclid(si);
        let &first = taps.first()?;
        let (step, dil) = match taps.get(1) {
            Some(&second) => (second as isize - first as isize, off(second) - off(first)),
            None => (-1, 1),
        };
        let even = taps.windows(2).all(|t| off(t[1]) - off(t[0]) == dil);
        if !even || dil <= 0 {
            return None;
        }
        out.push(AxisPhase {
            residue: r,
            count: (len - r).div_ceil(s),
            taps: taps.len(),
            first: first as isize,
            step,
            dil: dil as usize,
            min_off: off(first),
        });
    }
    Some(out)
}

/// One weight-gradient pass, before a variant is picked.
struct WeightGrad<'a> {
    op: &'static str,
    gout: &'a Tensor,
    input: &'a Tensor,
    g: Geom,
}

impl WeightGrad<'_> {
    fn run(
        &self,
        gpu: &Gpu,
        dw: &Tensor,
        accumulate: bool,
        variant: Option<WgradVariant>,
    ) -> Result<()> {
        gpu.scope(self.op, || self.run_scoped(gpu, dw, accumulate, variant))
    }

    fn run_scoped(
        &self,
        gpu: &Gpu,
        dw: &Tensor,
        accumulate: bool,
        variant: Option<WgradVariant>,
    ) -> Result<()> {
        let v = match variant {
            Some(v) => v,
            None => {
                let key = shape_key(self.op, self.gout, self.input, self.g);
                let (rule, rivals) = WgradVariant::long_run(gpu, self.gout.nchw().1);
                choose(
                    gpu,
                    &key,
                    &WgradVariant::candidates(gpu, self.g.k * self.g.k),
                    (rule, &rivals),
                    WgradVariant::name,
                    &|v| self.run_variant(gpu, &gpu.empty(dw.shape())?, false, v),
                )?
            }
        };
        self.run_variant(gpu, dw, accumulate, v)
    }

    fn run_variant(&self, gpu: &Gpu, dw: &Tensor, accumulate: bool, v: WgradVariant) -> Result<()> {
        match v {
            WgradVariant::Rows => {
                gather::wgrad(gpu, self.op, self.gout, self.input, dw, self.g, accumulate)
            }
            WgradVariant::Gemm(tile) => {
                let geom = WgradGeom {
                    k: self.g.k,
                    s: self.g.stride,
                    d: self.g.dil,
                    row0: -(self.g.pad_t as isize),
                    col0: -(self.g.pad_l as isize),
                };
                wgrad::run(
                    gpu, self.op, self.gout, self.input, dw, geom, accumulate, tile,
                )
            }
        }
    }
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
    conv2d_with(gpu, x, w, Some(b), stride, dil, false, None)
}

/// `conv2d` with an optional bias, ReLU fused into the store (`relu`), and
/// a given variant (`None`: chosen per shape).
#[allow(clippy::too_many_arguments)]
pub fn conv2d_with(
    gpu: &Gpu,
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    stride: usize,
    dil: usize,
    relu: bool,
    variant: Option<ConvVariant>,
) -> Result<Tensor> {
    const OP: &str = "conv2d";
    check_conv_args(OP, x, w, b, false)?;
    if stride == 0 || dil == 0 {
        return shape_err(
            OP,
            format!("stride {stride} and dilation {dil} must be >= 1"),
        );
    }
    let (n, _, h, wd) = x.nchw();
    let (oh, ow, g) = conv_geom(h, wd, w.shape()[2], stride, dil);
    let y = gpu.empty(&[n, w.shape()[0], oh, ow])?;
    let pass = Produce {
        op: OP,
        dir: Direction::Direct,
        src: x,
        w,
        bias: b,
        g,
        relu,
        accumulate: false,
    };
    pass.run(gpu, &y, variant)?;
    Ok(y)
}

/// Where `conv2d_add_relu` adds the skip.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Join {
    /// In the convolution's store, over the skip's buffer: one pass.
    InStore,
    /// A separate `add_relu` pass after the plain convolution.
    Separate,
}

impl Join {
    /// `Separate` on CPU adapters, `InStore` elsewhere. On lavapipe a
    /// kernel that also loads its output compiles about twice as long (3x3
    /// with a 16x16 tile: 4 s of LLVM plain, 7-11 s accumulating), a first
    /// run is mostly compiles, and the plain convolution is the kernel the
    /// block's first layer has already compiled; the extra pass is small.
    pub fn rule(gpu: &Gpu) -> Join {
        if gpu.is_cpu() {
            Join::Separate
        } else {
            Join::InStore
        }
    }
}

/// `relu(conv2d(x) + skip)`, the residual join of inference, joined as
/// `Join::rule` says.
pub fn conv2d_add_relu(
    gpu: &Gpu,
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    skip: Tensor,
    stride: usize,
    dil: usize,
) -> Result<Tensor> {
    conv2d_add_relu_with(gpu, x, w, b, skip, stride, dil, Join::rule(gpu))
}

/// `conv2d_add_relu` joined as given. Both joins do the same operations in
/// the same order, so their results are bit-identical, unless the input
/// channels are split into groups to fit a binding (then the store join
/// adds the skip after the first group's sum).
#[allow(clippy::too_many_arguments)]
pub fn conv2d_add_relu_with(
    gpu: &Gpu,
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    skip: Tensor,
    stride: usize,
    dil: usize,
    join: Join,
) -> Result<Tensor> {
    const OP: &str = "conv2d";
    check_conv_args(OP, x, w, Some(b), false)?;
    let (_, _, h, wd) = x.nchw();
    let (oh, ow, g) = conv_geom(h, wd, w.shape()[2], stride, dil);
    if skip.shape() != [x.shape()[0], w.shape()[0], oh, ow] {
        return shape_err(
            OP,
            format!("skip {:?} does not match the conv's output", skip.shape()),
        );
    }
    if join == Join::Separate {
        let y = conv2d_with(gpu, x, w, Some(b), stride, dil, false, None)?;
        return elementwise::add_relu(gpu, &y, &skip);
    }
    let y = if skip.is_shared() {
        let y = gpu.empty(skip.shape())?;
        gpu.copy(&skip, &y);
        y
    } else {
        skip
    };
    let pass = Produce {
        op: OP,
        dir: Direction::Direct,
        src: x,
        w,
        bias: Some(b),
        g,
        relu: true,
        accumulate: true,
    };
    pass.run(gpu, &y, None)?;
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
    conv2d_backward_input_with(gpu, dy, w, input_hw, stride, dil, None)
}

/// `conv2d_backward_input` with a given variant.
pub fn conv2d_backward_input_with(
    gpu: &Gpu,
    dy: &Tensor,
    w: &Tensor,
    input_hw: (usize, usize),
    stride: usize,
    dil: usize,
    variant: Option<ConvVariant>,
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
    let pass = Produce {
        op: OP,
        dir: Direction::Transposed,
        src: dy,
        w,
        bias: None,
        g,
        relu: false,
        accumulate: false,
    };
    pass.run(gpu, &dx, variant)?;
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
    conv2d_backward_weight_with(gpu, dy, x, dw, stride, dil, accumulate, None)
}

/// `conv2d_backward_weight` with a given variant.
#[allow(clippy::too_many_arguments)]
pub fn conv2d_backward_weight_with(
    gpu: &Gpu,
    dy: &Tensor,
    x: &Tensor,
    dw: &Tensor,
    stride: usize,
    dil: usize,
    accumulate: bool,
    variant: Option<WgradVariant>,
) -> Result<()> {
    const OP: &str = "conv2d_backward_weight";
    check_rank(OP, "dy", dy, 4)?;
    check_conv_args(OP, x, dw, None, false)?;
    let (n, _, h, w) = x.nchw();
    let (oh, ow, g) = conv_geom(h, w, dw.shape()[2], stride, dil);
    check_dy(OP, dy, [n, dw.shape()[0], oh, ow], x, dw)?;
    let pass = WeightGrad {
        op: OP,
        gout: dy,
        input: x,
        g,
    };
    pass.run(gpu, dw, accumulate, variant)
}

/// Transpose conv forward (docs/MODEL.md): x [N, C, H, W], w [C, O, 4, 4]
/// (PyTorch ConvTranspose2d layout), b [O] -> y [N, O, H*s, W*s].
pub fn tconv2d(gpu: &Gpu, x: &Tensor, w: &Tensor, b: &Tensor, stride: usize) -> Result<Tensor> {
    tconv2d_with(gpu, x, w, Some(b), stride, false, None)
}

/// `tconv2d` with an optional bias, fused ReLU and a given variant.
pub fn tconv2d_with(
    gpu: &Gpu,
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    stride: usize,
    relu: bool,
    variant: Option<ConvVariant>,
) -> Result<Tensor> {
    const OP: &str = "tconv2d";
    check_conv_args(OP, x, w, b, true)?;
    if w.shape()[2] != 4 || stride == 0 {
        return shape_err(
            OP,
            format!("weight {:?} must be 4x4 and stride >= 1", w.shape()),
        );
    }
    let (n, _, h, wd) = x.nchw();
    let y = gpu.empty(&[n, w.shape()[1], h * stride, wd * stride])?;
    let pass = Produce {
        op: OP,
        dir: Direction::Transposed,
        src: x,
        w,
        bias: b,
        g: tconv_geom(stride),
        relu,
        accumulate: false,
    };
    pass.run(gpu, &y, variant)?;
    Ok(y)
}

/// Input gradient of `tconv2d`: dy [N, O, H*s, W*s] -> dx [N, C, H, W].
pub fn tconv2d_backward_input(gpu: &Gpu, dy: &Tensor, w: &Tensor, stride: usize) -> Result<Tensor> {
    tconv2d_backward_input_with(gpu, dy, w, stride, None)
}

/// `tconv2d_backward_input` with a given variant.
pub fn tconv2d_backward_input_with(
    gpu: &Gpu,
    dy: &Tensor,
    w: &Tensor,
    stride: usize,
    variant: Option<ConvVariant>,
) -> Result<Tensor> {
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
    let pass = Produce {
        op: OP,
        dir: Direction::Direct,
        src: dy,
        w,
        bias: None,
        g: tconv_geom(stride),
        relu: false,
        accumulate: false,
    };
    pass.run(gpu, &dx, variant)?;
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
    tconv2d_backward_weight_with(gpu, dy, x, dw, stride, accumulate, None)
}

/// `tconv2d_backward_weight` with a given variant.
pub fn tconv2d_backward_weight_with(
    gpu: &Gpu,
    dy: &Tensor,
    x: &Tensor,
    dw: &Tensor,
    stride: usize,
    accumulate: bool,
    variant: Option<WgradVariant>,
) -> Result<()> {
    const OP: &str = "tconv2d_backward_weight";
    check_rank(OP, "dy", dy, 4)?;
    check_conv_args(OP, x, dw, None, true)?;
    let (n, _, h, w) = x.nchw();
    check_dy(OP, dy, [n, dw.shape()[1], h * stride, w * stride], x, dw)?;
    // The roles swap: x plays the gradient of the output, dy the input.
    let pass = WeightGrad {
        op: OP,
        gout: x,
        input: dy,
        g: tconv_geom(stride),
    };
    pass.run(gpu, dw, accumulate, variant)
}

/// Plain f64 references, following docs/MODEL.md's index rules literally. Each
/// pass is one visit of every (output, input, weight) index triple that the
/// rule connects, so the three passes of a conv (and the two of a tconv)
/// cannot disagree about the indexing.
#[cfg(any(test, feature = "reference"))]
pub mod cpu {
    use super::Geom;

    /// Calls `f(y_index, x_index, w_index)` for every term of docs/MODEL.md's conv
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

    /// Calls `f(y_index, x_index, w_index)` for every term of docs/MODEL.md's
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

    /// docs/MODEL.md's tconv: x [n, c, h, w], w [c, o, 4, 4] -> y [n, o, h*s, w*s].
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

/// (key, WGSL) of the generated kernels for every variant and the
/// network's geometries, for validation tests.
pub fn generated_sources() -> Vec<(String, String)> {
    let mut v = direct::sample_sources();
    v.extend(blocks::sample_sources());
    v.extend(wgrad::sample_sources());
    v.extend(prep::sample_sources());
    v
}
