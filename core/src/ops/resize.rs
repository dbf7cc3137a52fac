//! Resize to an absolute size (docs/MODEL.md): bilinear with half-pixel centres
//! (the default) or nearest, forward and backward.
use super::{Params, RESIZE, check_rank, items_per_window, kernel, launch, runs};
use crate::error::{Result, shape_err};
use crate::gpu::{Gpu, Kernel, Tensor};

/// A resize kernel and how it reads and writes: `quads_in` reads its
/// source as vec4s (binding 4, else 1), `quads_out` writes 4 outputs per
/// invocation (binding 3, else 2); `upscale`: compiled per column upscale
/// factor (its shader's `UP`).
struct Pass {
    kernel: Kernel,
    quads_in: bool,
    quads_out: bool,
    upscale: bool,
}

const fn pass(entry: &'static str, quads_in: bool, quads_out: bool) -> Pass {
    Pass {
        kernel: kernel(&RESIZE, entry),
        quads_in,
        quads_out,
        upscale: false,
    }
}

const FORWARD: Pass = pass("resize_forward", false, false);
const FORWARD_QUADS: Pass = Pass {
    upscale: true,
    ..pass("resize_forward_quads", false, true)
};
const BACKWARD_COLS: Pass = pass("resize_backward_cols", false, false);
const BACKWARD_COLS_QUADS: Pass = Pass {
    upscale: true,
    ..pass("resize_backward_cols_quads", true, true)
};
const BACKWARD_ROWS: Pass = pass("resize_backward_rows", false, false);
const BACKWARD_ROWS_QUADS: Pass = pass("resize_backward_rows_quads", true, true);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Mode {
    #[default]
    Bilinear,
    Nearest,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Bilinear => "bilinear",
            Mode::Nearest => "nearest",
        }
    }
}

/// The factor of a bilinear upscale from `n_in` to `n_out` along one axis
/// when it is a power of two (2, 4, 8, ...): its scale `1 / up` and every
/// source coordinate are exact in f32, which the kernels' tight ranges
/// rely on; else 0 (the general rule).
fn upscale(mode: Mode, n_in: usize, n_out: usize) -> usize {
    let up = n_out / n_in;
    let exact = up >= 2 && up.is_power_of_two() && up * n_in == n_out;
    if mode == Mode::Bilinear && exact {
        up
    } else {
        0
    }
}

/// Which kernels run: `Fast` takes the upscale kernels where they apply
/// (bit-identical to the general ones), `General` never (for comparisons).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernels {
    Fast,
    General,
}

/// `src` holds the planes read, `dst` the planes written.
#[allow(clippy::too_many_arguments)]
fn run(
    gpu: &Gpu,
    op: &'static str,
    k: &Pass,
    src: &Tensor,
    dst: &Tensor,
    (in_h, in_w): (usize, usize),
    (out_h, out_w): (usize, usize),
    (mode, kernels): (Mode, Kernels),
) -> Result<()> {
    let (n, c, sh, sw) = src.nchw();
    let (_, _, dh, dw) = dst.nchw();
    let fast = kernels == Kernels::Fast;
    let up_h = if fast { upscale(mode, in_h, out_h) } else { 0 };
    let up_w = if fast { upscale(mode, in_w, out_w) } else { 0 };
    let per = items_per_window(gpu, op, (sh * sw).max(dh * dw), "plane")?;
    for (p0, np) in runs(n * c, per) {
        let (aw, ab) = gpu.window(src, p0 * sh * sw, np * sh * sw);
        let (yw, yb) = gpu.window(dst, p0 * dh * dw, np * dh * dw);
        let p = Params::new()
            .u(np)
            .u(in_h)
            .u(in_w)
            .u(out_h)
            .u(out_w)
            .f(in_h as f32 / out_h as f32)
            .f(in_w as f32 / out_w as f32)
            .u((mode == Mode::Nearest) as usize)
            .u(ab as usize)
            .u(yb as usize)
            .u(up_h)
            .u(up_w);
        let read = if k.quads_in { 4 } else { 1 };
        let (write, per_thread) = if k.quads_out { (3, 4) } else { (2, 1) };
        let bound = [(read, &aw), (write, &yw)];
        let threads = np * dh * dw / per_thread;
        match k.upscale {
            true => {
                gpu.dispatch_specialised(&k.kernel, ("UP", up_w as u32), p.words(), &bound, threads)
            }
            false => launch(gpu, &k.kernel, &p, &bound, threads),
        }
    }
    Ok(())
}

/// Whether `resize_forward_quads` runs: a bilinear upscale of the rows by
/// a power of two into rows of whole vec4s (vec4-aligned windows).
fn forward_quads(gpu: &Gpu, mode: Mode, in_w: usize, out_w: usize, kernels: Kernels) -> bool {
    let up = upscale(mode, in_w, out_w) > 0;
    kernels == Kernels::Fast && up && out_w.is_multiple_of(4) && gpu.vec4_windows()
}

/// The backward column and row passes: in quads where the input's rows
/// are whole vec4s in vec4-aligned windows, the columns' only for an
/// upscale by a power of two. On lavapipe each load is a loop over the SIMD
/// lanes, so a quad's 4 (x2) or 6 (x4) vec4 loads replace 16 or 32 scalar
/// ones.
fn backward_passes(
    gpu: &Gpu,
    mode: Mode,
    (in_w, out_w): (usize, usize),
    kernels: Kernels,
) -> (&'static Pass, &'static Pass) {
    let quads = kernels == Kernels::Fast && in_w.is_multiple_of(4) && gpu.vec4_windows();
    let cols = match quads && upscale(mode, in_w, out_w) > 0 {
        true => &BACKWARD_COLS_QUADS,
        false => &BACKWARD_COLS,
    };
    let rows = match quads {
        true => &BACKWARD_ROWS_QUADS,
        false => &BACKWARD_ROWS,
    };
    (cols, rows)
}

/// x [N, C, H, W] -> [N, C, out_h, out_w].
pub fn resize(gpu: &Gpu, x: &Tensor, out_h: usize, out_w: usize, mode: Mode) -> Result<Tensor> {
    resize_with(gpu, x, (out_h, out_w), mode, Kernels::Fast)
}

/// `resize` with the given kernels.
pub fn resize_with(
    gpu: &Gpu,
    x: &Tensor,
    (out_h, out_w): (usize, usize),
    mode: Mode,
    kernels: Kernels,
) -> Result<Tensor> {
    check_rank("resize", "input", x, 4)?;
    if out_h == 0 || out_w == 0 {
        return shape_err("resize", format!("output size {out_h}x{out_w} is empty"));
    }
    let (n, c, h, w) = x.nchw();
    let y = gpu.empty(&[n, c, out_h, out_w])?;
    let k = match forward_quads(gpu, mode, w, out_w, kernels) {
        true => &FORWARD_QUADS,
        false => &FORWARD,
    };
    let (src, out) = ((h, w), (out_h, out_w));
    run(gpu, "resize", k, x, &y, src, out, (mode, kernels))?;
    Ok(y)
}

/// dx [N, C, in_h, in_w] from dy [N, C, out_h, out_w].
pub fn resize_backward(
    gpu: &Gpu,
    dy: &Tensor,
    in_h: usize,
    in_w: usize,
    mode: Mode,
) -> Result<Tensor> {
    resize_backward_with(gpu, dy, (in_h, in_w), mode, Kernels::Fast)
}

/// `resize_backward` with the given kernels.
pub fn resize_backward_with(
    gpu: &Gpu,
    dy: &Tensor,
    (in_h, in_w): (usize, usize),
    mode: Mode,
    kernels: Kernels,
) -> Result<Tensor> {
    check_rank("resize_backward", "dy", dy, 4)?;
    if in_h == 0 || in_w == 0 {
        return shape_err(
            "resize_backward",
            format!("input size {in_h}x{in_w} is empty"),
        );
    }
    let (n, c, oh, ow) = dy.nchw();
    // The column pass writes [N, C, out_h, in_w]; the row pass reads it.
    let cols = gpu.empty(&[n, c, oh, in_w])?;
    let (src, out) = ((in_h, in_w), (oh, ow));
    let how = (mode, kernels);
    let op = "resize_backward";
    let (cols_pass, rows_pass) = backward_passes(gpu, mode, (in_w, ow), kernels);
    run(gpu, op, cols_pass, dy, &cols, src, out, how)?;
    let dx = gpu.empty(&[n, c, in_h, in_w])?;
    run(gpu, op, rows_pass, &cols, &dx, src, out, how)?;
    Ok(dx)
}

/// The f64 CPU reference (the `reference` feature; the tests enable it).
#[cfg(any(test, feature = "reference"))]
pub mod cpu {
    use super::Mode;

    /// Source taps along one axis: [(index, weight); 2], with the source
    /// coordinate computed in f32 as PyTorch does.
    pub fn taps(d: usize, n_in: usize, n_out: usize, mode: Mode) -> [(usize, f64); 2] {
        let scale = n_in as f32 / n_out as f32;
        match mode {
            Mode::Nearest => {
                let s = ((d as f32 * scale).floor() as usize).min(n_in - 1);
                [(s, 1.0), (s, 0.0)]
            }
            Mode::Bilinear => {
                let src = ((d as f32 + 0.5) * scale - 0.5).max(0.0);
                let i0 = (src as usize).min(n_in - 1);
                let i1 = if i0 < n_in - 1 { i0 + 1 } else { i0 };
                let l1 = (src - i0 as f32) as f64;
                [(i0, 1.0 - l1), (i1, l1)]
            }
        }
    }

    pub fn resize(
        x: &[f64],
        planes: usize,
        (h, w): (usize, usize),
        (oh, ow): (usize, usize),
        mode: Mode,
    ) -> Vec<f64> {
        let mut y = vec![0.0; planes * oh * ow];
        for p in 0..planes {
            for i in 0..oh {
                for j in 0..ow {
                    let mut s = 0.0;
                    for (hi, hw) in taps(i, h, oh, mode) {
                        for (wi, ww) in taps(j, w, ow, mode) {
                            s += hw * ww * x[(p * h + hi) * w + wi];
                        }
                    }
                    y[(p * oh + i) * ow + j] = s;
                }
            }
        }
        y
    }

    pub fn resize_backward(
        dy: &[f64],
        planes: usize,
        (h, w): (usize, usize),
        (oh, ow): (usize, usize),
        mode: Mode,
    ) -> Vec<f64> {
        let mut dx = vec![0.0; planes * h * w];
        for p in 0..planes {
            for i in 0..oh {
                for j in 0..ow {
                    let d = dy[(p * oh + i) * ow + j];
                    for (hi, hw) in taps(i, h, oh, mode) {
                        for (wi, ww) in taps(j, w, ow, mode) {
                            dx[(p * h + hi) * w + wi] += hw * ww * d;
                        }
                    }
                }
            }
        }
        dx
    }
}
