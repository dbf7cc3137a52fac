//! Resize to an absolute size (docs/MODEL.md): bilinear with half-pixel centres
//! (the default) or nearest, forward and backward.
use super::{Params, RESIZE, check_rank, items_per_window, kernel, launch, runs};
use crate::error::{Result, shape_err};
use crate::gpu::{Gpu, Kernel, Tensor};

const FORWARD: Kernel = kernel(&RESIZE, "resize_forward");
const BACKWARD_COLS: Kernel = kernel(&RESIZE, "resize_backward_cols");
const BACKWARD_ROWS: Kernel = kernel(&RESIZE, "resize_backward_rows");

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

/// `src` holds the planes read, `dst` the planes written.
#[allow(clippy::too_many_arguments)]
fn run(
    gpu: &Gpu,
    op: &'static str,
    k: &Kernel,
    src: &Tensor,
    dst: &Tensor,
    (in_h, in_w): (usize, usize),
    (out_h, out_w): (usize, usize),
    mode: Mode,
) -> Result<()> {
    let (n, c, sh, sw) = src.nchw();
    let (_, _, dh, dw) = dst.nchw();
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
            .u(yb as usize);
        launch(gpu, k, &p, &[(1, &aw), (2, &yw)], np * dh * dw);
    }
    Ok(())
}

/// x [N, C, H, W] -> [N, C, out_h, out_w].
pub fn resize(gpu: &Gpu, x: &Tensor, out_h: usize, out_w: usize, mode: Mode) -> Result<Tensor> {
    check_rank("resize", "input", x, 4)?;
    if out_h == 0 || out_w == 0 {
        return shape_err("resize", format!("output size {out_h}x{out_w} is empty"));
    }
    let (n, c, h, w) = x.nchw();
    let y = gpu.empty(&[n, c, out_h, out_w])?;
    run(gpu, "resize", &FORWARD, x, &y, (h, w), (out_h, out_w), mode)?;
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
    run(
        gpu,
        "resize_backward",
        &BACKWARD_COLS,
        dy,
        &cols,
        src,
        out,
        mode,
    )?;
    let dx = gpu.empty(&[n, c, in_h, in_w])?;
    run(
        gpu,
        "resize_backward",
        &BACKWARD_ROWS,
        &cols,
        &dx,
        src,
        out,
        mode,
    )?;
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
