//! Trivial detectors to read a model's numbers beside: maps made from the
//! scan alone, run through the same candidates, FROC and metrics as a
//! model's maps (`engine eval --baseline NAME`).
use crate::data::Gray8;

/// A map made from the scan alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Baseline {
    /// p = grey / 255: bright pixels first.
    Grey,
    /// The scan smoothed over a 10 mm window (a box filter applied three
    /// times, close to a Gaussian of sigma 5 mm), / 255: its peaks are the
    /// brightest blobs, the first guess at a mass.
    SmoothedGrey,
}

/// Standard deviation of the smoothed-grey filter, in millimetres.
pub const SMOOTHING_SIGMA_MM: f64 = 5.0;

impl Baseline {
    pub fn name(self) -> &'static str {
        match self {
            Baseline::Grey => "grey",
            Baseline::SmoothedGrey => "smoothed-grey",
        }
    }

    /// The map of `scan` (`spacing_mm` per pixel).
    pub fn map(self, scan: &Gray8, spacing_mm: f64) -> Vec<f32> {
        let grey: Vec<f32> = scan.pixels.iter().map(|&v| v as f32 / 255.0).collect();
        match self {
            Baseline::Grey => grey,
            Baseline::SmoothedGrey => {
                // Three box passes of width 2r+1 have variance 3 * ((2r+1)^2 - 1) / 12.
                let sigma_px = SMOOTHING_SIGMA_MM / spacing_mm;
                let r = ((((4.0 * sigma_px * sigma_px) + 1.0).sqrt() - 1.0) / 2.0).round() as usize;
                let mut m = grey;
                for _ in 0..3 {
                    m = box_blur(&m, scan.width, scan.height, r);
                }
                m
            }
        }
    }
}

/// The mean over a `(2r+1)^2` window, clipped at the borders (the mean of
/// the pixels inside), separably with running sums.
pub fn box_blur(src: &[f32], w: usize, h: usize, r: usize) -> Vec<f32> {
    let pass = |src: &[f32], len: usize, stride: usize, lines: usize, line_stride: usize| {
        let mut out = vec![0f32; src.len()];
        for l in 0..lines {
            let at = |i: usize| l * line_stride + i * stride;
            let mut prefix = vec![0f64; len + 1];
            for i in 0..len {
                prefix[i + 1] = prefix[i] + src[at(i)] as f64;
            }
            for i in 0..len {
                let (a, b) = (i.saturating_sub(r), (i + r + 1).min(len));
                out[at(i)] = ((prefix[b] - prefix[a]) / (b - a) as f64) as f32;
            }
        }
        out
    };
    let rows = pass(src, w, 1, h, w);
    pass(&rows, h, w, w, 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn box_blur_is_the_clipped_window_mean() {
        let (w, h) = (5, 4);
        let src: Vec<f32> = (0..w * h).map(|i| ((i * 7) % 11) as f32).collect();
        let out = box_blur(&src, w, h, 1);
        for y in 0..h {
            for x in 0..w {
                let mut sum = 0.0;
                let mut n = 0.0;
                for yy in y.saturating_sub(1)..(y + 2).min(h) {
                    for xx in x.saturating_sub(1)..(x + 2).min(w) {
                        sum += src[yy * w + xx];
                        n += 1.0;
                    }
                }
                approx::assert_abs_diff_eq!(out[y * w + x], sum / n, epsilon = 1e-5);
            }
        }
    }

    #[test]
    fn smoothed_grey_peaks_at_a_bright_blob() {
        let mut g = Gray8::new(60, 60);
        for y in 25..35 {
            for x in 40..50 {
                g.set(x, y, 200);
            }
        }
        g.set(5, 5, 255); // one bright pixel: smoothed away
        let m = Baseline::SmoothedGrey.map(&g, 1.0);
        let best = (0..m.len()).max_by(|&a, &b| m[a].total_cmp(&m[b])).unwrap();
        let (x, y) = (best % 60, best / 60);
        assert!(
            (40..50).contains(&x) && (25..35).contains(&y),
            "peak at {x},{y}"
        );
        assert_eq!(Baseline::Grey.map(&g, 1.0)[5 * 60 + 5], 1.0);
    }
}
