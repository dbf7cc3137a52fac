//! Pieces of generated WGSL shared by the direct and weight-gradient
//! kernels: the input columns a run of output columns reads, and the loads
//! of one input row into named values.
use super::prep::Padded;
use crate::error::Result;
use crate::gpu::{Gpu, TEXEL_FN, Tensor, UNIFORM_OPERAND_BYTES, Window};
use std::fmt::Write;

/// vec4s in a uniform operand binding (`Gpu::uniform_operands`).
pub(super) const UNIFORM_VEC4S: usize = (UNIFORM_OPERAND_BYTES / 16) as usize;

/// Vec4 components by index.
pub(super) const LANE: [&str; 4] = ["x", "y", "z", "w"];

/// Input columns (ascending, once each) that `outs` output columns of a
/// `kw`-wide kernel with stride `s` and dilation `d` read.
pub(super) fn tap_cols(outs: usize, kw: usize, s: usize, d: usize) -> Vec<usize> {
    let mut cols: Vec<usize> = (0..outs)
        .flat_map(|t| (0..kw).map(move |q| t * s + q * d))
        .collect();
    cols.sort_unstable();
    cols.dedup();
    cols
}

/// Where a kernel's input rows come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum RowLoads {
    /// Scalar loads of storage `X`.
    Scalar,
    /// Aligned vec4 loads of storage `X4` (rows start at multiples of 4
    /// elements; on lavapipe a vec4 load costs about half of four scalar
    /// loads).
    Vec4,
    /// Aligned vec4s as texels of texture `XT` (`Gpu::texel_operands`).
    Texels,
}

impl RowLoads {
    pub fn of(vec: bool, texels: bool) -> RowLoads {
        match (vec, texels) {
            (false, _) => RowLoads::Scalar,
            (true, false) => RowLoads::Vec4,
            (true, true) => RowLoads::Texels,
        }
    }

    /// The input's binding declaration (and texel reader), at `binding`.
    pub fn declare(self, binding: u32) -> String {
        match self {
            RowLoads::Scalar => {
                format!("@group(0) @binding({binding}) var<storage, read> X: array<f32>;\n")
            }
            RowLoads::Vec4 => {
                format!("@group(0) @binding({binding}) var<storage, read> X4: array<vec4<f32>>;\n")
            }
            RowLoads::Texels => {
                format!("@group(0) @binding({binding}) var XT: texture_2d<f32>;\n{TEXEL_FN}")
            }
        }
    }
}

/// A kernel's input operand: a storage window or texels.
pub(super) enum Operand<'a> {
    Window(Window<'a>),
    Texels(wgpu::TextureView),
}

impl<'a> Operand<'a> {
    /// Elements `start..start + len` of `t`, as texels when `texels` (then
    /// `start` and `len` are multiples of 4), with the element index of
    /// `start` within the operand.
    pub fn of(
        gpu: &Gpu,
        op: &'static str,
        (t, start, len): (&'a Tensor, usize, usize),
        texels: bool,
    ) -> Result<(Operand<'a>, u32)> {
        Ok(match texels {
            true => (Operand::Texels(gpu.texels(op, t, start, len)?), 0),
            false => {
                let (w, base) = gpu.window(t, start, len);
                (Operand::Window(w), base)
            }
        })
    }

    /// A padded copy as the operand: its texels as they are, or its
    /// buffer (as texels when `texels`).
    pub fn padded(
        gpu: &Gpu,
        op: &'static str,
        xp: &'a Padded,
        texels: bool,
    ) -> Result<Operand<'a>> {
        Ok(match xp {
            Padded::Texels(view) => Operand::Texels(view.clone()),
            Padded::Buffer(t) => Operand::of(gpu, op, (t, 0, t.numel()), texels)?.0,
        })
    }

    /// Adds the operand at `binding` to a dispatch's windows or texels.
    pub fn bind<'b>(
        &'b self,
        binding: u32,
        windows: &mut Vec<(u32, &'b Window<'a>)>,
        texels: &mut Vec<(u32, &'b wgpu::TextureView)>,
    ) {
        match self {
            Operand::Window(w) => windows.push((binding, w)),
            Operand::Texels(v) => texels.push((binding, v)),
        }
    }
}

/// The operands of a generated direct or block kernel, at their bindings:
/// input 1, weights 2, bias 3 (where the kernel adds it), output 4.
pub(super) struct ConvOperands<'a, 'b> {
    pub x: &'b Operand<'a>,
    pub w: &'b Window<'a>,
    pub bias: Option<&'b Window<'a>>,
    pub y: &'b Window<'a>,
}

/// Records `pipeline` over `groups` workgroups (flat) times `o_groups`
/// produced-channel groups, with its uniform `params` and `operands`.
pub(super) fn dispatch_conv(
    gpu: &Gpu,
    (pipeline, op): (&wgpu::ComputePipeline, &str),
    params: &[u8],
    operands: ConvOperands,
    (groups, o_groups): (u64, u32),
) {
    let (mut windows, mut texel_views) = (vec![(2, operands.w), (4, operands.y)], vec![]);
    operands.x.bind(1, &mut windows, &mut texel_views);
    if let Some(b) = operands.bias {
        windows.push((3, b));
    }
    let params = bytemuck::cast_slice(params);
    gpu.dispatch_grid(
        pipeline,
        op,
        params,
        (&windows, &texel_views),
        groups,
        o_groups,
    );
}

/// The vec4s that columns `cols` of a row window read, counted from the
/// one holding the window's first column (`shift` elements into it):
/// ascending, once each.
pub(super) fn quads_of(cols: &[usize], shift: usize) -> Vec<usize> {
    let mut quads: Vec<usize> = cols.iter().map(|m| (m + shift) / 4).collect();
    quads.dedup();
    quads
}

/// For a kernel that reads the source itself (`borders`): `ok{r}`, whether
/// the input row `r` rows below row `top` lies in the source's `rows` rows,
/// for every offset `r` of `offsets` (each mask named by its offset).
pub(super) fn write_row_masks(w: &mut String, indent: &str, offsets: &[usize], rows: &str) {
    for r in offsets {
        let _ = writeln!(w, "{indent}let ok{r} = u32(top + {r}) < {rows};");
    }
}

/// For a kernel that reads the source itself: `in{q}`, whether vec4 q of
/// `quads` from vec4 `left` of a row lies in the source's rows of
/// `row_quads` vec4s.
pub(super) fn write_quad_masks(w: &mut String, indent: &str, quads: &[usize], row_quads: &str) {
    for q in quads {
        let _ = writeln!(w, "{indent}let in{q} = u32(left + {q}) < {row_quads};");
    }
}

/// `let x{x}_{m} = ...` for every column `m` of `cols` (a window starting
/// `shift` elements into its first vec4) from the source itself, whose
/// first vec4 is `first` (an i32 vec4 index that may lie before the
/// source): each vec4 zero unless `ok{ok}` (the row lies in the source)
/// and its `in{q}`. An outside index is clamped to the binding and its
/// value dropped.
pub(super) fn write_bordered_row(
    w: &mut String,
    indent: &str,
    (x, ok): (usize, usize),
    first: &str,
    (cols, shift): (&[usize], usize),
) {
    let _ = writeln!(w, "{indent}let r{x} = {first};");
    for q in quads_of(cols, shift) {
        let _ = writeln!(
            w,
            "{indent}let xv{x}_{q} = select(vec4<f32>(0.0), X4[u32(max(r{x} + {q}, 0))], ok{ok} && in{q});"
        );
    }
    for m in cols {
        let e = m + shift;
        let _ = writeln!(w, "{indent}let x{x}_{m} = xv{x}_{}.{};", e / 4, LANE[e % 4]);
    }
}

/// `let x{p}_{m} = ...` for every column `m` of `cols`, from the row whose
/// first element is `row` (an element index): scalar loads, or the aligned
/// vec4s (storage or texels) that hold them.
pub(super) fn write_row_loads(
    w: &mut String,
    indent: &str,
    p: usize,
    row: &str,
    cols: &[usize],
    loads: RowLoads,
) {
    if loads == RowLoads::Scalar {
        let _ = writeln!(w, "{indent}let r{p} = {row};");
        for m in cols {
            let _ = writeln!(w, "{indent}let x{p}_{m} = X[r{p} + {m}u];");
        }
        return;
    }
    let _ = writeln!(w, "{indent}let r{p} = ({row}) >> 2u;");
    for q in quads_of(cols, 0) {
        let load = match loads {
            RowLoads::Texels => format!("texel(r{p} + {q}u)"),
            _ => format!("X4[r{p} + {q}u]"),
        };
        let _ = writeln!(w, "{indent}let xv{p}_{q} = {load};");
    }
    for m in cols {
        let _ = writeln!(w, "{indent}let x{p}_{m} = xv{p}_{}.{};", m / 4, LANE[m % 4]);
    }
}

/// With subgroups of `sg` lanes: `ws{r}`, the offset from `wb` of the
/// weight vec4 lane `sl` loads in round r < `shares` of a summed channel
/// of `values` vec4s; vec4 m of a channel is tap m / `o4`, produced
/// channels 4 (m % `o4`) onwards (taps `o4_stride` apart).
pub(super) fn write_weight_share_offsets(
    w: &mut String,
    (values, o4): (usize, usize),
    sg: usize,
    shares: usize,
) {
    for r in 0..shares {
        let _ = writeln!(
            w,
            "    let wm{r} = min({}u + sl, {}u);\n    let ws{r} = (wm{r} / {o4}u) * P.o4_stride + wm{r} % {o4}u;",
            r * sg,
            values - 1
        );
    }
}

/// `put(i, live, sum, floor)`: stores one output element (a vec4 of them
/// with `vec4`) at `Y[i]` when `live`, accumulating onto what is there
/// with `accumulate`, then the ReLU floor (see `DirectSpec::write_store`
/// for why stores are calls and the ReLU a run-time floor).
pub(super) fn put_function(accumulate: bool, vec4: bool) -> String {
    let add = if accumulate { " v += Y[i];" } else { "" };
    let (t, zero) = match vec4 {
        true => ("vec4<f32>", "vec4<f32>(0.0)"),
        false => ("f32", "0.0"),
    };
    format!(
        "fn put(i: u32, live: bool, sum: {t}, floor: {t}) {{\n\
         \x20   if (live) {{ var v = sum;{add} v = select(v, {zero}, v < floor); Y[i] = v; }}\n\
         }}\n"
    )
}

/// Opens the store of produced channel `k` of a tile whose channels start
/// at `ob`: the test that the channel exists, its output offset `yo`,
/// and with `bias` its bias `bv`; returns what each stored value adds
/// (`" + bv"`, or nothing). The caller closes the block.
pub(super) fn open_channel_store(w: &mut String, k: usize, yo: &str, bias: bool) -> &'static str {
    let _ = writeln!(
        w,
        "    if (ob + {k}u < P.o_count) {{\n        let yo = {yo};"
    );
    if !bias {
        return "";
    }
    let _ = writeln!(w, "        let bv = B[P.b_base + ob + {k}u];");
    " + bv"
}
