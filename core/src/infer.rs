//! A probability map for a scan of any size: the network's input scaling,
//! the move to the model's pixel spacing and back, padding and tiling, and
//! the heat overlay. Runs on native adapters and in a browser alike; its
//! readbacks are asynchronous (native callers wait at their edge).
//!
//! The network is fully convolutional. Its resizes target sizes computed
//! from the input (H/8, H/4, H), so the input is padded with black to a
//! multiple of 32: then every resize is an exact x2/x4 and a tile whose
//! offset is a multiple of 32 sees the same sampling grid as the whole scan.
//! Scans larger than `TileOptions::max_pixels` run as overlapping tiles;
//! each tile keeps only its core, `margin` pixels away from its borders.
use crate::gpu::{Gpu, KernelSource, Tensor};
use crate::graph::Graph;
use crate::image::Gray8;
use crate::lesions::Candidate;
use crate::model::Model;
use crate::ops::elementwise;
use crate::resample::{Edge, Window, resample, size_at_spacing};
pub use crate::spacing::Spacings;

/// Scales 8-bit grey values as docs/MODEL.md says: (x - 127) / 255.
pub fn scale_input(pixels: &[u8]) -> Vec<f32> {
    pixels.iter().map(|&v| (v as f32 - 127.0) / 255.0).collect()
}

/// Probabilities for a batch in inference mode (running statistics).
pub async fn predict(
    gpu: &Gpu,
    model: &Model,
    images: &[f32],
    n: usize,
    h: usize,
    w: usize,
) -> anyhow::Result<Vec<f32>> {
    let x = gpu.upload(&[n, 1, h, w], images)?;
    let p = probabilities(gpu, model, x)?;
    Ok(gpu.read_async(&p).await?)
}

/// The network's probabilities for `x`, in inference mode, on the GPU.
fn probabilities(gpu: &Gpu, model: &Model, x: Tensor) -> anyhow::Result<Tensor> {
    let logits = if gpu.variants().baseline() {
        // The first-generation path: the tape in eval mode, nothing fused.
        let mut g = Graph::new(gpu, false);
        let x = g.input(x);
        let out = model.forward(&mut g, x)?;
        g.take(out)
    } else {
        model.forward_folded(gpu, x)?
    };
    Ok(elementwise::sigmoid(gpu, &logits)?)
}

/// The kernels that running `model` on inputs of these sizes (height,
/// width) would create and that `gpu` has not created yet, found by a dry
/// run (`Gpu::dry_run`): nothing is computed.
pub fn kernels_for(
    gpu: &Gpu,
    model: &Model,
    sizes: &[(usize, usize)],
) -> anyhow::Result<Vec<KernelSource>> {
    let (run, kernels) = gpu.dry_run(|| {
        sizes.iter().try_for_each(|&(h, w)| -> anyhow::Result<()> {
            probabilities(gpu, model, gpu.empty(&[1, 1, h, w])?)?;
            Ok(())
        })
    });
    run.map(|_| kernels)
}

/// How a scan is split into tiles.
#[derive(Clone, Copy, Debug)]
pub struct TileOptions {
    /// Scans with more (padded) pixels than this run as tiles.
    pub max_pixels: usize,
    /// Side of a tile's kept core (rounded up to a multiple of 32).
    pub tile: usize,
    /// Context on each side of the core (rounded up to a multiple of 32).
    pub margin: usize,
}

impl Default for TileOptions {
    fn default() -> Self {
        TileOptions {
            max_pixels: 2048 * 2048,
            tile: 1024,
            margin: MARGIN,
        }
    }
}

/// Default tile context. Measured on a trained width-0.25 model: see the
/// tiling test, which checks the tiled map against the untiled one.
pub const MARGIN: usize = 256;

const ALIGN: usize = 32;

/// The probability map (row-major, the scan's size) of one scan, run at
/// the scan's own pixels.
pub async fn probability_map(
    gpu: &Gpu,
    model: &Model,
    scan: &Gray8,
    tiles: &TileOptions,
) -> anyhow::Result<Vec<f32>> {
    let x = scale_input(&scan.pixels);
    map_scaled(gpu, model, &x, (scan.width, scan.height), tiles).await
}

/// The probability map of one scan, on the scan's pixels: the scan is
/// resampled to the model's spacing, run, and the map resampled back
/// (docs/MODEL.md, "Pixel spacing"). `None`: run at the scan's pixels.
pub async fn probability_map_at(
    gpu: &Gpu,
    model: &Model,
    scan: &Gray8,
    spacings: Option<Spacings>,
    tiles: &TileOptions,
) -> anyhow::Result<Vec<f32>> {
    let (w, h) = (scan.width, scan.height);
    let Some(s) = resampled(spacings) else {
        return probability_map(gpu, model, scan, tiles).await;
    };
    let (w2, h2) = size_at_spacing(w, h, s.input_mm, s.model_mm);
    let grey = resample(
        &scan.pixels,
        (w, h),
        Window::whole(w, h, w2, h2),
        (w2, h2),
        Edge::Zero,
    );
    let x: Vec<f32> = grey.iter().map(|&v| (v - 127.0) / 255.0).collect();
    let p = map_scaled(gpu, model, &x, (w2, h2), tiles).await?;
    Ok(resample(
        &p,
        (w2, h2),
        Window::whole(w2, h2, w, h),
        (w, h),
        Edge::Clamp,
    ))
}

/// The spacings when the scan must be resampled (they differ by more than
/// 0.1%), else None: the scan runs at its own pixels.
fn resampled(spacings: Option<Spacings>) -> Option<Spacings> {
    spacings.filter(|s| (s.input_mm / s.model_mm - 1.0).abs() > 1e-3)
}

/// The size (width, height) at which `probability_map_at` runs a scan of
/// `(w, h)` pixels.
pub fn size_at_model((w, h): (usize, usize), spacings: Option<Spacings>) -> (usize, usize) {
    match resampled(spacings) {
        Some(s) => size_at_spacing(w, h, s.input_mm, s.model_mm),
        None => (w, h),
    }
}

/// The probability map of an input already scaled as the network expects.
async fn map_scaled(
    gpu: &Gpu,
    model: &Model,
    scaled: &[f32],
    (w, h): (usize, usize),
    tiles: &TileOptions,
) -> anyhow::Result<Vec<f32>> {
    let (hp, wp) = (h.next_multiple_of(ALIGN), w.next_multiple_of(ALIGN));
    // Black padding, scaled like the scan.
    let pad_value = scale_input(&[0])[0];
    let mut x = vec![pad_value; hp * wp];
    for (r, row) in scaled.chunks(w).enumerate() {
        x[r * wp..r * wp + w].copy_from_slice(row);
    }
    let full = if hp * wp <= tiles.max_pixels {
        predict(gpu, model, &x, 1, hp, wp).await?
    } else {
        let mut out = vec![0.0f32; hp * wp];
        for t in scan_tiles(hp, wp, tiles) {
            let ([y0, y1, x0, x1], [ty0, ty1, tx0, tx1]) = (t.core, t.context);
            let (th, tw) = (ty1 - ty0, tx1 - tx0);
            let mut tile = Vec::with_capacity(th * tw);
            for r in ty0..ty1 {
                tile.extend_from_slice(&x[r * wp + tx0..r * wp + tx1]);
            }
            let p = predict(gpu, model, &tile, 1, th, tw).await?;
            for r in y0..y1 {
                let src = (r - ty0) * tw + (x0 - tx0);
                out[r * wp + x0..r * wp + x1].copy_from_slice(&p[src..src + (x1 - x0)]);
            }
        }
        out
    };
    Ok(full
        .chunks(wp)
        .take(h)
        .flat_map(|row| row[..w].iter().copied())
        .collect())
}

/// One tile of a scan too large to run whole: its kept core and the
/// context it runs with, each `[row0, row1, col0, col1]` of the padded scan.
struct ScanTile {
    core: [usize; 4],
    context: [usize; 4],
}

fn scan_tiles(hp: usize, wp: usize, tiles: &TileOptions) -> Vec<ScanTile> {
    let core = tiles.tile.max(1).next_multiple_of(ALIGN);
    let margin = tiles.margin.next_multiple_of(ALIGN);
    let mut out = Vec::new();
    for y0 in (0..hp).step_by(core) {
        for x0 in (0..wp).step_by(core) {
            let (y1, x1) = ((y0 + core).min(hp), (x0 + core).min(wp));
            let (ty0, tx0) = (y0.saturating_sub(margin), x0.saturating_sub(margin));
            let (ty1, tx1) = ((y1 + margin).min(hp), (x1 + margin).min(wp));
            out.push(ScanTile {
                core: [y0, y1, x0, x1],
                context: [ty0, ty1, tx0, tx1],
            });
        }
    }
    out
}

/// The network input sizes (height, width) that `map_scaled` runs for a
/// scaled scan of `(w, h)` pixels: the padded scan, or its tiles.
pub fn network_inputs((w, h): (usize, usize), tiles: &TileOptions) -> Vec<(usize, usize)> {
    let (hp, wp) = (h.next_multiple_of(ALIGN), w.next_multiple_of(ALIGN));
    if hp * wp <= tiles.max_pixels {
        return vec![(hp, wp)];
    }
    let mut sizes: Vec<_> = scan_tiles(hp, wp, tiles)
        .iter()
        .map(|t| (t.context[1] - t.context[0], t.context[3] - t.context[2]))
        .collect();
    sizes.sort_unstable();
    sizes.dedup();
    sizes
}

/// Fewest pixels above the threshold that make an image predicted positive
/// (docs/MODEL.md's image-level rule): `floor(H*W/750) + 1` ("more than
/// H*W/750").
pub fn area_min_pixels(pixels: usize) -> usize {
    pixels / 750 + 1
}

/// The [`area_min_pixels`] largest probabilities of a map (NaN counts as
/// 0), the smallest of them last; empty for an empty map.
pub fn area_top(prob: &[f32]) -> Vec<f32> {
    if prob.is_empty() {
        return Vec::new();
    }
    let k = area_min_pixels(prob.len()).min(prob.len());
    let mut v: Vec<f32> = prob
        .iter()
        .map(|&p| if p.is_nan() { 0.0 } else { p })
        .collect();
    // Descending: the k largest end up first, the k-th at k - 1.
    v.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
    v.truncate(k);
    v
}

/// The image score of that rule: the k-th largest probability (the last
/// of [`area_top`]), so an image is positive at `t` exactly when its score
/// exceeds `t` (0 for an empty map).
pub fn area_score(prob: &[f32]) -> f64 {
    area_top(prob).last().map_or(0.0, |&p| p as f64)
}

/// The heat colour of probability p (blue -> cyan -> yellow -> red), as
/// RGB in [0, 1]; used by the overlays and by `engine eval`'s panels.
pub fn heat(p: f32) -> [f32; 3] {
    let p = if p.is_nan() { 0.0 } else { p.clamp(0.0, 1.0) };
    let stops = [
        [0.0, 0.0, 1.0],
        [0.0, 1.0, 1.0],
        [1.0, 1.0, 0.0],
        [1.0, 0.0, 0.0],
    ];
    let x = p * 3.0;
    let k = (x.floor() as usize).min(2);
    let f = x - k as f32;
    let (a, b) = (stops[k], stops[k + 1]);
    std::array::from_fn(|c| a[c] + (b[c] - a[c]) * f)
}

/// Draws a candidate on an RGB image: its box in cyan, lines about 0.3% of
/// the image's longer side thick (at least 1 pixel), so that it shows on a
/// 5000-pixel scan shrunk to a screen.
pub fn draw_candidate(rgb: &mut [u8], w: usize, h: usize, c: &Candidate) {
    const CYAN: [u8; 3] = [0, 255, 255];
    let t = (w.max(h) / 300).max(1) as isize;
    let clampx = |v: f64| (v.round() as isize).clamp(0, w as isize - 1);
    let clampy = |v: f64| (v.round() as isize).clamp(0, h as isize - 1);
    let (x0, y0) = (clampx(c.bbox[0]), clampy(c.bbox[1]));
    let (x1, y1) = (clampx(c.bbox[2] - 1.0), clampy(c.bbox[3] - 1.0));
    let mut put = |x: isize, y: isize| {
        if (0..w as isize).contains(&x) && (0..h as isize).contains(&y) {
            let i = (y as usize * w + x as usize) * 3;
            rgb[i..i + 3].copy_from_slice(&CYAN);
        }
    };
    for k in 0..t {
        for x in x0 - t + 1..=x1 + t - 1 {
            put(x, y0 - k);
            put(x, y1 + k);
        }
        for y in y0 - t + 1..=y1 + t - 1 {
            put(x0 - k, y);
            put(x1 + k, y);
        }
    }
}

/// The heat overlay (RGB, row-major): the scan in grey, tinted by the heat
/// colour where p rises above a quarter.
pub fn overlay_rgb(img: &Gray8, prob: &[f32]) -> Vec<u8> {
    let mut rgb = Vec::with_capacity(img.pixels.len() * 3);
    for (&g, &p) in img.pixels.iter().zip(prob) {
        let c = heat(p);
        let a = ((p - 0.25) / 0.75).clamp(0.0, 1.0) * 0.6;
        for ch in c {
            rgb.push(((1.0 - a) * g as f32 + a * 255.0 * ch).round() as u8);
        }
    }
    rgb
}
