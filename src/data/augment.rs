//! The paper's online augmentation, image and mask together.
//!
//! Per sample: a square crop of side `size * scale * N(1, 0.025)` at a uniformly
//! random position (where the image is smaller than the crop, the image lies
//! inside it and the rest reads black), resized to `size x size`, then random
//! horizontal and vertical flips and a random number of 90-degree rotations.
//!
//! - The image is resized bilinearly with half-pixel centres (the rule of
//!   docs/MODEL.md's `resize`), reading 0 outside the image.
//! - The mask is resized without eroding its edges: an output pixel is positive
//!   when any source pixel under its footprint is positive. So no lesion pixel is
//!   lost and an edge moves outward by less than one output pixel.
//!
//! `scale` is the number of source pixels per network pixel: the model's
//! pixel spacing over the image's (docs/MODEL.md, "Pixel spacing"), or the
//! paper's `1 / 0.66` ([`CROP_SCALE`]) where the spacing is unknown.
//! Without augmentation (evaluation) the crop is the centred square of side
//! `size * scale`, with no flips or rotations.
use rand::Rng;
use rand_distr::{Distribution, Normal};

use super::Gray8;
use super::resample::{Edge, Window, resample};

/// The side of the crop relative to the output, as in the paper's code: the
/// scale when the image's pixel spacing is unknown.
pub const CROP_SCALE: f64 = 1.0 / 0.66;

/// Everything random about one sample's augmentation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AugmentParams {
    /// Top-left corner of the crop window in source pixels (may be negative).
    pub x0: f64,
    pub y0: f64,
    /// Side of the square crop window in source pixels.
    pub side: f64,
    pub flip_h: bool,
    pub flip_v: bool,
    /// Number of 90-degree counter-clockwise rotations (0..4).
    pub rot90: u8,
}

/// Draw the random parameters for a `width x height` image and output `size`,
/// at `scale` source pixels per output pixel.
pub fn sample_params<R: Rng>(
    rng: &mut R,
    width: usize,
    height: usize,
    size: usize,
    scale: f64,
) -> AugmentParams {
    let normal = Normal::new(1.0, 0.025).unwrap_or_else(|_| unreachable!("fixed valid parameters"));
    let side = (size as f64 * scale * normal.sample(rng)).max(1.0);
    let mut place = |len: usize| {
        let slack = len as f64 - side;
        // slack < 0: the crop is larger than the image; the image lies inside it.
        if slack >= 0.0 {
            rng.random_range(0.0..=slack)
        } else {
            rng.random_range(slack..=0.0)
        }
    };
    let x0 = place(width);
    let y0 = place(height);
    AugmentParams {
        x0,
        y0,
        side,
        flip_h: rng.random(),
        flip_v: rng.random(),
        rot90: rng.random_range(0..4),
    }
}

/// The deterministic evaluation crop: centred, side `size * scale`, no flips.
pub fn eval_params(width: usize, height: usize, size: usize, scale: f64) -> AugmentParams {
    let side = size as f64 * scale;
    AugmentParams {
        x0: (width as f64 - side) / 2.0,
        y0: (height as f64 - side) / 2.0,
        side,
        flip_h: false,
        flip_v: false,
        rot90: 0,
    }
}

/// Resample the window `(x0, y0, side)` of `src` to `size x size` (the
/// filter of [`super::resample`]: bilinear when enlarging, an average under
/// each output pixel when shrinking; 0 outside the image). Values stay in
/// 0..=255.
pub fn resample_image(src: &Gray8, x0: f64, y0: f64, side: f64, size: usize) -> Vec<f32> {
    let scale = side / size as f64;
    let win = Window {
        x0,
        y0,
        scale_x: scale,
        scale_y: scale,
    };
    resample(
        &src.pixels,
        (src.width, src.height),
        win,
        (size, size),
        Edge::Zero,
    )
}

/// Resample a 0/1 mask to `size x size`: an output pixel is 1 when any source
/// pixel under its footprint `[x0 + d*s, x0 + (d+1)*s)` is non-zero.
pub fn resample_mask(src: &Gray8, x0: f64, y0: f64, side: f64, size: usize) -> Vec<u8> {
    let scale = side / size as f64;
    // Per output index: the source pixel range its footprint overlaps, clipped.
    // The epsilon keeps a footprint that merely touches a pixel boundary from
    // counting the neighbour.
    let ranges = |origin: f64, len: usize| -> Vec<(usize, usize)> {
        (0..size)
            .map(|d| {
                let a = origin + d as f64 * scale + 1e-9;
                let b = origin + (d + 1) as f64 * scale - 1e-9;
                let i0 = a.floor().max(0.0);
                let i1 = b.ceil().min(len as f64);
                if i1 <= i0 {
                    (0, 0)
                } else {
                    (i0 as usize, i1 as usize)
                }
            })
            .collect()
    };
    let xr = ranges(x0, src.width);
    let yr = ranges(y0, src.height);
    // Prefix sums per row make each footprint test O(rows under it). They cover
    // only the window's columns and rows: full-field scans are ~12 Mpixel.
    let (cx0, cx1) = (
        xr.iter().map(|r| r.0).min().unwrap_or(0),
        xr.iter().map(|r| r.1).max().unwrap_or(0),
    );
    let (cy0, cy1) = (
        yr.iter().map(|r| r.0).min().unwrap_or(0),
        yr.iter().map(|r| r.1).max().unwrap_or(0),
    );
    let cw = cx1.saturating_sub(cx0);
    let mut prefix = vec![0u32; (cw + 1) * cy1.saturating_sub(cy0)];
    for y in cy0..cy1 {
        let p = &mut prefix[(y - cy0) * (cw + 1)..(y - cy0 + 1) * (cw + 1)];
        let row = &src.pixels[y * src.width + cx0..y * src.width + cx1];
        for (x, &v) in row.iter().enumerate() {
            p[x + 1] = p[x] + (v != 0) as u32;
        }
    }
    let w = cw;
    let mut out = vec![0u8; size * size];
    for (oy, &(ya, yb)) in yr.iter().enumerate() {
        if ya == yb {
            continue;
        }
        for (ox, &(xa, xb)) in xr.iter().enumerate() {
            if xa == xb {
                continue;
            }
            let (xa, xb) = (xa - cx0, xb - cx0);
            let hit =
                (ya - cy0..yb - cy0).any(|y| prefix[y * (w + 1) + xb] > prefix[y * (w + 1) + xa]);
            out[oy * size + ox] = hit as u8;
        }
    }
    out
}

/// Flip and rotate a square `size x size` buffer as `p` says: first the
/// horizontal flip, then the vertical flip, then `rot90` counter-clockwise turns.
pub fn flip_rotate<T: Copy + Default>(data: &[T], size: usize, p: &AugmentParams) -> Vec<T> {
    let n = size;
    let mut out = vec![T::default(); n * n];
    for y in 0..n {
        for x in 0..n {
            let (mut sx, mut sy) = (x, y);
            // Output (x, y) after k CCW turns came from (n-1-y, x) of the previous
            // stage, applied in reverse order of the forward operations.
            for _ in 0..p.rot90 {
                (sx, sy) = (n - 1 - sy, sx);
            }
            if p.flip_v {
                sy = n - 1 - sy;
            }
            if p.flip_h {
                sx = n - 1 - sx;
            }
            out[y * n + x] = data[sy * n + sx];
        }
    }
    out
}

/// Crop, resize, flip and rotate one image and its 0/1 mask. Returns the image
/// in 0..=255 and the mask in {0, 1}, both `size x size`.
pub fn apply(scan: &Gray8, mask: &Gray8, p: &AugmentParams, size: usize) -> (Vec<f32>, Vec<u8>) {
    let img = resample_image(scan, p.x0, p.y0, p.side, size);
    let m = resample_mask(mask, p.x0, p.y0, p.side, size);
    if !p.flip_h && !p.flip_v && p.rot90 == 0 {
        return (img, m);
    }
    (flip_rotate(&img, size, p), flip_rotate(&m, size, p))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(rot90: u8, flip_h: bool, flip_v: bool) -> AugmentParams {
        AugmentParams {
            x0: 0.0,
            y0: 0.0,
            side: 4.0,
            flip_h,
            flip_v,
            rot90,
        }
    }

    #[test]
    fn flips_and_rotations_move_pixels_as_expected() {
        // 3x3: value = index; (x, y) = (2, 0) is 2.
        let d: Vec<u8> = (0..9).collect();
        assert_eq!(
            flip_rotate(&d, 3, &params(0, true, false)),
            vec![2, 1, 0, 5, 4, 3, 8, 7, 6]
        );
        assert_eq!(
            flip_rotate(&d, 3, &params(0, false, true)),
            vec![6, 7, 8, 3, 4, 5, 0, 1, 2]
        );
        // One CCW turn: the top row (0 1 2) becomes the left column read bottom-up.
        assert_eq!(
            flip_rotate(&d, 3, &params(1, false, false)),
            vec![2, 5, 8, 1, 4, 7, 0, 3, 6]
        );
        // Four turns are the identity; two turns equal both flips.
        assert_eq!(flip_rotate(&d, 3, &params(4 % 4, false, false)), d);
        assert_eq!(
            flip_rotate(&d, 3, &params(2, false, false)),
            flip_rotate(&d, 3, &params(0, true, true))
        );
    }

    #[test]
    fn identity_resample_is_exact() {
        let g = Gray8 {
            width: 4,
            height: 4,
            pixels: (0..16).map(|v| v * 10).collect(),
        };
        let out = resample_image(&g, 0.0, 0.0, 4.0, 4);
        assert_eq!(out, g.pixels.iter().map(|&v| v as f32).collect::<Vec<_>>());
        // 4 -> 2: a triangle of radius 2 source pixels around centre 0.5,
        // weights 1/8, 3/8, 3/8, 1/8 at -1..=2 per axis (0 outside the image).
        let out = resample_image(&g, 0.0, 0.0, 4.0, 2);
        let row = |r: f32| (3.0 * (40.0 * r) + 3.0 * (40.0 * r + 10.0) + (40.0 * r + 20.0)) / 8.0;
        let expect = (3.0 * row(0.0) + 3.0 * row(1.0) + row(2.0)) / 8.0;
        approx::assert_abs_diff_eq!(out[0], expect, epsilon = 1e-4);
        let m = Gray8 {
            width: 4,
            height: 4,
            pixels: vec![0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        };
        assert_eq!(resample_mask(&m, 0.0, 0.0, 4.0, 4), m.pixels);
        // Downscale 2x: the single pixel at (1,1) survives in output (0,0) only.
        assert_eq!(resample_mask(&m, 0.0, 0.0, 4.0, 2), vec![1, 0, 0, 0]);
        // Outside the image everything is 0.
        assert_eq!(resample_mask(&m, 10.0, 10.0, 4.0, 2), vec![0; 4]);
        assert_eq!(resample_image(&g, -10.0, -10.0, 4.0, 2), vec![0.0; 4]);
    }
}
