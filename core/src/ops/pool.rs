//! Max-pool with SAME padding (docs/MODEL.md: 3x3/s2 and 2x2/s2); backward sends
//! each output's gradient to the first maximum of its window (row-major).
use super::{POOL, Params, check_rank, items_per_window, kernel, launch, runs, same_padding};
use crate::error::{Result, shape_err};
use crate::gpu::{Gpu, Kernel, Tensor};

const FORWARD: Kernel = kernel(&POOL, "maxpool_forward");
const FORWARD_ARGMAX: Kernel = kernel(&POOL, "maxpool_forward_argmax");
const ARGMAX: Kernel = kernel(&POOL, "maxpool_argmax");
const BACKWARD: Kernel = kernel(&POOL, "maxpool_backward");
const SCATTER: Kernel = kernel(&POOL, "maxpool_scatter");

/// (out_h, out_w, pad_t, pad_l).
pub fn pool_geom(h: usize, w: usize, k: usize, s: usize) -> (usize, usize, usize, usize) {
    let (oh, pt) = same_padding(h, k, s, 1);
    let (ow, pl) = same_padding(w, k, s, 1);
    (oh, ow, pt, pl)
}

/// One pool pass over x's planes in windows.
enum Pass<'a> {
    /// y = max of each window, and where given its argmax as `Argmax`'s.
    Forward {
        y: &'a Tensor,
        arg: Option<&'a Tensor>,
    },
    /// arg = the plane index of each window's first maximum.
    Argmax { arg: &'a Tensor },
    /// dx from dy and `Argmax`'s arg: a gather over the outputs that
    /// cover each input.
    Backward {
        dy: &'a Tensor,
        arg: &'a Tensor,
        dx: &'a Tensor,
    },
    /// The outputs of class (i % period, j % period) add dy at their
    /// argmax into dx (zeros before the first class).
    Scatter {
        dy: &'a Tensor,
        arg: &'a Tensor,
        dx: &'a Tensor,
        class: (usize, usize),
        period: usize,
    },
}

fn run(gpu: &Gpu, op: &'static str, x: &Tensor, pass: Pass, ks: usize, s: usize) -> Result<()> {
    let (n, c, h, w) = x.nchw();
    let (oh, ow, pt, pl) = pool_geom(h, w, ks, s);
    let per = items_per_window(gpu, op, h * w, "plane")?;
    for (p0, np) in runs(n * c, per) {
        let planes = |t| gpu.window(t, p0 * h * w, np * h * w);
        let outs = |t| gpu.window(t, p0 * oh * ow, np * oh * ow);
        let (xw, xb) = planes(x);
        let params = |db: u32, yb: u32| {
            Params::new()
                .u(np)
                .u(h)
                .u(w)
                .u(oh)
                .u(ow)
                .u(ks)
                .u(s)
                .u(pt)
                .u(pl)
                .u(xb as usize)
                .u(db as usize)
                .u(yb as usize)
        };
        match pass {
            Pass::Forward { y, arg } => {
                // y and arg: same offsets of same-sized tensors, one base.
                let (yw, yb) = outs(y);
                let aw = arg.map(|a| outs(a).0);
                let p = params(0, yb);
                let (k, binds) = match &aw {
                    Some(aw) => (&FORWARD_ARGMAX, vec![(1, &xw), (3, &yw), (5, aw)]),
                    None => (&FORWARD, vec![(1, &xw), (3, &yw)]),
                };
                launch(gpu, k, &p, &binds, np * oh * ow);
            }
            Pass::Argmax { arg } => {
                let (aw, ab) = outs(arg);
                let p = params(0, ab);
                launch(gpu, &ARGMAX, &p, &[(1, &xw), (5, &aw)], np * oh * ow);
            }
            Pass::Backward { dy, arg, dx } => {
                // dy and arg: same offsets of same-sized tensors, one base.
                let ((dw, db), (aw, _)) = (outs(dy), outs(arg));
                let (yw, yb) = planes(dx);
                let p = params(db, yb);
                let binds = [(2, &dw), (4, &aw), (3, &yw)];
                launch(gpu, &BACKWARD, &p, &binds, np * h * w);
            }
            Pass::Scatter {
                dy,
                arg,
                dx,
                class: (ci, cj),
                period,
            } => {
                let ((dw, db), (aw, _)) = (outs(dy), outs(arg));
                let (yw, yb) = planes(dx);
                // The class and period words follow the shared ones.
                let p = params(db, yb).u(ci).u(cj).u(period);
                let binds = [(2, &dw), (4, &aw), (3, &yw)];
                let count = |n: usize, c: usize| (n - c).div_ceil(period);
                launch(
                    gpu,
                    &SCATTER,
                    &p,
                    &binds,
                    np * count(oh, ci) * count(ow, cj),
                );
            }
        }
    }
    Ok(())
}

fn check(op: &'static str, x: &Tensor, k: usize, s: usize) -> Result<()> {
    check_rank(op, "input", x, 4)?;
    check_window(op, k, s)
}

fn check_window(op: &'static str, k: usize, s: usize) -> Result<()> {
    if k == 0 || s == 0 {
        return shape_err(op, format!("kernel {k} and stride {s} must be >= 1"));
    }
    Ok(())
}

pub fn maxpool2d(gpu: &Gpu, x: &Tensor, k: usize, s: usize) -> Result<Tensor> {
    check("maxpool2d", x, k, s)?;
    let (n, c, h, w) = x.nchw();
    let (oh, ow, _, _) = pool_geom(h, w, k, s);
    let y = gpu.empty(&[n, c, oh, ow])?;
    run(
        gpu,
        "maxpool2d",
        x,
        Pass::Forward { y: &y, arg: None },
        k,
        s,
    )?;
    Ok(y)
}

/// `maxpool2d` and each output's argmax (a u32 plane index per output),
/// for `maxpool2d_backward_from`: training's forward, in one pass.
pub fn maxpool2d_with_argmax(
    gpu: &Gpu,
    x: &Tensor,
    k: usize,
    s: usize,
) -> Result<(Tensor, Tensor)> {
    check("maxpool2d", x, k, s)?;
    let (n, c, h, w) = x.nchw();
    let (oh, ow, _, _) = pool_geom(h, w, k, s);
    let (y, arg) = (gpu.empty(&[n, c, oh, ow])?, gpu.empty(&[n, c, oh, ow])?);
    let pass = Pass::Forward {
        y: &y,
        arg: Some(&arg),
    };
    run(gpu, "maxpool2d", x, pass, k, s)?;
    Ok((y, arg))
}

/// dx of `maxpool2d` from its input x and the output gradient dy.
pub fn maxpool2d_backward(
    gpu: &Gpu,
    x: &Tensor,
    dy: &Tensor,
    k: usize,
    s: usize,
) -> Result<Tensor> {
    check(OP_BACKWARD, x, k, s)?;
    check_dy(x.shape(), dy, k, s)?;
    let arg = gpu.empty(dy.shape())?;
    run(gpu, OP_BACKWARD, x, Pass::Argmax { arg: &arg }, k, s)?;
    maxpool2d_backward_from(gpu, x.shape(), (&arg, dy), k, s)
}

/// dx of `maxpool2d` over an input of `x_shape` from the argmax that
/// `maxpool2d_with_argmax` returned and the output gradient dy. The passes
/// take the planes' sizes and windows from dx (x's shape) and read no x.
pub fn maxpool2d_backward_from(
    gpu: &Gpu,
    x_shape: &[usize],
    (arg, dy): (&Tensor, &Tensor),
    k: usize,
    s: usize,
) -> Result<Tensor> {
    check_window(OP_BACKWARD, k, s)?;
    check_dy(x_shape, dy, k, s)?;
    if arg.shape() != dy.shape() {
        let shapes = format!("argmax {:?} and dy {:?} differ", arg.shape(), dy.shape());
        return shape_err(OP_BACKWARD, shapes);
    }
    if k <= s {
        // Each input lies in at most one window: one gather pass.
        let dx = gpu.empty(x_shape)?;
        let pass = Pass::Backward { dy, arg, dx: &dx };
        run(gpu, OP_BACKWARD, &dx, pass, k, s)?;
        return Ok(dx);
    }
    // Overlapping windows (the network's 3x3 stride 2): scatter passes.
    let dx = gpu.zeros(x_shape)?;
    let (oh, ow) = (dy.shape()[2], dy.shape()[3]);
    let period = k.div_ceil(s);
    for ci in 0..period.min(oh) {
        for cj in 0..period.min(ow) {
            let pass = Pass::Scatter {
                dy,
                arg,
                dx: &dx,
                class: (ci, cj),
                period,
            };
            run(gpu, OP_BACKWARD, &dx, pass, k, s)?;
        }
    }
    Ok(dx)
}

const OP_BACKWARD: &str = "maxpool2d_backward";

/// dy must have the pooled shape of x's.
fn check_dy(x_shape: &[usize], dy: &Tensor, k: usize, s: usize) -> Result<()> {
    let [n, c, h, w] = x_shape[..] else {
        return shape_err(OP_BACKWARD, format!("input {x_shape:?} must have rank 4"));
    };
    let (oh, ow, _, _) = pool_geom(h, w, k, s);
    if dy.shape() != [n, c, oh, ow] {
        let want = [n, c, oh, ow];
        let shapes = format!("dy {:?} must be {want:?} for x {x_shape:?}", dy.shape());
        return shape_err(OP_BACKWARD, shapes);
    }
    Ok(())
}

/// The f64 CPU reference (the `reference` feature; the tests enable it).
#[cfg(any(test, feature = "reference"))]
pub mod cpu {
    use super::pool_geom;

    /// (y, argmax index within the plane per output).
    pub fn maxpool2d(
        x: &[f64],
        (n, c, h, w): (usize, usize, usize, usize),
        k: usize,
        s: usize,
    ) -> (Vec<f64>, Vec<usize>) {
        let (oh, ow, pt, pl) = pool_geom(h, w, k, s);
        let mut y = Vec::with_capacity(n * c * oh * ow);
        let mut arg = Vec::with_capacity(n * c * oh * ow);
        for plane in 0..n * c {
            let xp = &x[plane * h * w..(plane + 1) * h * w];
            for i in 0..oh {
                for j in 0..ow {
                    let mut best: Option<(f64, usize)> = None;
                    for p in 0..k {
                        for q in 0..k {
                            let hh = (i * s + p) as isize - pt as isize;
                            let ww = (j * s + q) as isize - pl as isize;
                            if hh < 0 || ww < 0 || hh >= h as isize || ww >= w as isize {
                                continue;
                            }
                            let at = hh as usize * w + ww as usize;
                            // The first NaN is the window's maximum (PyTorch propagates NaN).
                            if best
                                .is_none_or(|(b, _)| !b.is_nan() && (xp[at] > b || xp[at].is_nan()))
                            {
                                best = Some((xp[at], at));
                            }
                        }
                    }
                    let (v, at) = best.expect("SAME windows always hold an input");
                    y.push(v);
                    arg.push(at);
                }
            }
        }
        (y, arg)
    }

    pub fn maxpool2d_backward(
        x: &[f64],
        dy: &[f64],
        (n, c, h, w): (usize, usize, usize, usize),
        k: usize,
        s: usize,
    ) -> Vec<f64> {
        let (_, arg) = maxpool2d(x, (n, c, h, w), k, s);
        let per = arg.len() / (n * c);
        let mut dx = vec![0.0; x.len()];
        for (o, at) in arg.iter().enumerate() {
            dx[(o / per) * h * w + at] += dy[o];
        }
        dx
    }
}
