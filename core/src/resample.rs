//! Resampling a grey plane onto another pixel grid: training crops, and the
//! move between a scan's own pixel spacing and the model's (docs/MODEL.md,
//! "Pixel spacing").
//!
//! The filter is separable and triangular with a radius of one output pixel
//! in source pixels (`max(1, scale)`): when enlarging (`scale <= 1`) it is
//! exactly bilinear interpolation with half-pixel centres; when shrinking it
//! averages every source pixel under the output pixel, so a 50 um scan taken
//! down to 0.3 mm does not alias its calcifications away.

/// What a read outside the source plane returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Edge {
    /// 0: the black beyond a scan's border (training crops, network inputs).
    Zero,
    /// The nearest pixel inside (maps whose border must not fade).
    Clamp,
}

/// The source window an output grid covers: its top-left corner (may lie
/// outside the source) and the source pixels per output pixel on each axis.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Window {
    pub x0: f64,
    pub y0: f64,
    pub scale_x: f64,
    pub scale_y: f64,
}

impl Window {
    /// The whole `w x h` source onto an `out_w x out_h` grid.
    pub fn whole(w: usize, h: usize, out_w: usize, out_h: usize) -> Window {
        Window {
            x0: 0.0,
            y0: 0.0,
            scale_x: w as f64 / out_w.max(1) as f64,
            scale_y: h as f64 / out_h.max(1) as f64,
        }
    }
}

/// Per output index along one axis: (source index, weight) pairs, in range.
fn axis_taps(
    origin: f64,
    scale: f64,
    out_len: usize,
    src_len: usize,
    edge: Edge,
) -> Vec<Vec<(usize, f32)>> {
    let radius = scale.max(1.0);
    (0..out_len)
        .map(|d| {
            let centre = origin + (d as f64 + 0.5) * scale - 0.5;
            let first = (centre - radius).floor() as isize + 1;
            let last = (centre + radius).ceil() as isize - 1;
            let mut taps: Vec<(isize, f64)> = (first..=last)
                .map(|i| (i, 1.0 - (i as f64 - centre).abs() / radius))
                .filter(|&(_, wt)| wt > 0.0)
                .collect();
            let total: f64 = taps.iter().map(|t| t.1).sum();
            for t in &mut taps {
                t.1 /= total;
            }
            let n = src_len as isize;
            taps.into_iter()
                .filter_map(|(i, wt)| match edge {
                    Edge::Zero => (0..n).contains(&i).then_some((i as usize, wt as f32)),
                    Edge::Clamp => Some((i.clamp(0, n - 1) as usize, wt as f32)),
                })
                .collect()
        })
        .collect()
}

/// Resamples the `w x h` plane `src` (row-major, 8-bit or float) onto `out_w x out_h`
/// pixels covering `win`.
pub fn resample<T: Copy + Into<f32>>(
    src: &[T],
    (w, h): (usize, usize),
    win: Window,
    (out_w, out_h): (usize, usize),
    edge: Edge,
) -> Vec<f32> {
    assert_eq!(src.len(), w * h, "resample: plane size");
    if w == 0 || h == 0 {
        return vec![0.0; out_w * out_h];
    }
    let xs = axis_taps(win.x0, win.scale_x, out_w, w, edge);
    let ys = axis_taps(win.y0, win.scale_y, out_h, h, edge);
    // Horizontal pass over the source rows the vertical taps touch.
    let (r0, r1) = ys
        .iter()
        .flatten()
        .fold((h, 0), |(a, b), &(i, _)| (a.min(i), b.max(i + 1)));
    let rows = r1.saturating_sub(r0);
    let mut mid = vec![0f32; rows * out_w];
    for r in 0..rows {
        let line = &src[(r0 + r) * w..(r0 + r + 1) * w];
        for (o, taps) in mid[r * out_w..(r + 1) * out_w].iter_mut().zip(&xs) {
            *o = taps.iter().map(|&(i, wt)| line[i].into() * wt).sum();
        }
    }
    let mut out = vec![0f32; out_w * out_h];
    for (row, taps) in out.chunks_exact_mut(out_w.max(1)).zip(&ys) {
        for &(i, wt) in taps {
            let m = &mid[(i - r0) * out_w..(i - r0 + 1) * out_w];
            for (o, &v) in row.iter_mut().zip(m) {
                *o += v * wt;
            }
        }
    }
    out
}

/// The grid size of a `w x h` image of spacing `from_mm` at spacing `to_mm`
/// (at least one pixel each way).
pub fn size_at_spacing(w: usize, h: usize, from_mm: f64, to_mm: f64) -> (usize, usize) {
    let f = from_mm / to_mm;
    let n = |len: usize| ((len as f64 * f).round() as usize).max(1);
    (n(w), n(h))
}

#[cfg(test)]
mod tests {
    use super::*;
    use approx::assert_abs_diff_eq;

    fn plane(w: usize, h: usize) -> Vec<f32> {
        (0..w * h).map(|i| ((i * 37) % 101) as f32).collect()
    }

    #[test]
    fn identity_is_exact() {
        let p = plane(7, 5);
        let out = resample(&p, (7, 5), Window::whole(7, 5, 7, 5), (7, 5), Edge::Zero);
        assert_eq!(out, p);
    }

    #[test]
    fn enlarging_is_bilinear_with_half_pixel_centres() {
        // 2 -> 4 pixels: centres at -0.25, 0.25, 0.75, 1.25 in source pixels.
        let out = resample(
            &[10.0, 20.0],
            (2, 1),
            Window::whole(2, 1, 4, 1),
            (4, 1),
            Edge::Clamp,
        );
        for (o, e) in out.iter().zip([10.0, 12.5, 17.5, 20.0]) {
            assert_abs_diff_eq!(*o, e, epsilon = 1e-5);
        }
        let zero = resample(
            &[10.0, 20.0],
            (2, 1),
            Window::whole(2, 1, 4, 1),
            (4, 1),
            Edge::Zero,
        );
        assert_abs_diff_eq!(zero[0], 7.5, epsilon = 1e-5);
    }

    #[test]
    fn shrinking_by_an_integer_averages_with_a_triangle() {
        // 4 -> 2 pixels: centre 0.5 with radius 2 covers -1..=2 with weights 1,3,3,1 (/8 over 4 taps).
        let src = [0.0, 8.0, 16.0, 24.0];
        let out = resample(&src, (4, 1), Window::whole(4, 1, 2, 1), (2, 1), Edge::Clamp);
        let expect0 = (0.0 * 1.0 + 0.0 * 3.0 + 8.0 * 3.0 + 16.0 * 1.0) / 8.0;
        assert_abs_diff_eq!(out[0], expect0, epsilon = 1e-4);
        // A constant stays constant whatever the scale.
        let c = vec![5.0f32; 50 * 30];
        let out = resample(
            &c,
            (50, 30),
            Window::whole(50, 30, 17, 11),
            (17, 11),
            Edge::Clamp,
        );
        assert!(out.iter().all(|&v| (v - 5.0).abs() < 1e-4));
    }

    #[test]
    fn sizes_follow_the_spacing_ratio() {
        assert_eq!(size_at_spacing(1024, 600, 0.2, 0.2 / 0.66), (676, 396));
        assert_eq!(size_at_spacing(3, 3, 0.05, 1.0), (1, 1));
    }
}
