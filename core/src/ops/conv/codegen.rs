//! Pieces of generated WGSL shared by the direct and weight-gradient
//! kernels: the input columns a run of output columns reads, and the loads
//! of one input row into named values.
use crate::gpu::UNIFORM_OPERAND_BYTES;
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

/// `let x{p}_{m} = ...` for every column `m` of `cols`, from the row whose
/// first element is `row` (an element index). With `vec` the row start is a
/// multiple of 4 and the values come from the aligned vec4s of `X4` that
/// hold them (on lavapipe a vec4 load costs about half of four scalar
/// loads); otherwise from scalar loads of `X`.
pub(super) fn write_row_loads(
    w: &mut String,
    indent: &str,
    p: usize,
    row: &str,
    cols: &[usize],
    vec: bool,
) {
    if !vec {
        let _ = writeln!(w, "{indent}let r{p} = {row};");
        for m in cols {
            let _ = writeln!(w, "{indent}let x{p}_{m} = X[r{p} + {m}u];");
        }
        return;
    }
    let _ = writeln!(w, "{indent}let r{p} = ({row}) >> 2u;");
    let mut quads: Vec<usize> = cols.iter().map(|m| m / 4).collect();
    quads.dedup();
    for q in quads {
        let _ = writeln!(w, "{indent}let xv{p}_{q} = X4[r{p} + {q}u];");
    }
    for m in cols {
        let _ = writeln!(w, "{indent}let x{p}_{m} = xv{p}_{}.{};", m / 4, LANE[m % 4]);
    }
}
