//! `engine infer`: a probability map per input (16-bit grey PNG), a binary
//! mask at the threshold, and a heatmap overlay on the scan.
//!
//! The network is fully convolutional. Its resizes target sizes computed
//! from the input (H/8, H/4, H), so the input is padded with black to a
//! multiple of 32: then every resize is an exact x2/x4 and a tile whose
//! offset is a multiple of 32 sees the same sampling grid as the whole scan.
//! Scans larger than `TileOptions::max_pixels` run as overlapping tiles;
//! each tile keeps only its core, `margin` pixels away from its borders.
use crate::data::Gray8;
use crate::data::read::read_gray8;
use crate::data::resample::{Edge, Window, resample, size_at_spacing};
use crate::gpu::Gpu;
use crate::graph::Graph;
use crate::lesions::Candidate;
use crate::model::Model;
use crate::ops::elementwise;
pub use crate::spacing::Spacings;
use anyhow::Context;
use std::path::{Path, PathBuf};

/// Scales 8-bit grey values as docs/MODEL.md says: (x - 127) / 255.
pub fn scale_input(pixels: &[u8]) -> Vec<f32> {
    pixels.iter().map(|&v| (v as f32 - 127.0) / 255.0).collect()
}

/// Probabilities for a batch in inference mode (running statistics).
pub fn predict(
    gpu: &Gpu,
    model: &Model,
    images: &[f32],
    n: usize,
    h: usize,
    w: usize,
) -> anyhow::Result<Vec<f32>> {
    let x = gpu.upload(&[n, 1, h, w], images)?;
    let logits = if gpu.variants().baseline() {
        // The first-generation path: the tape in eval mode, nothing fused.
        let mut g = Graph::new(gpu, false);
        let x = g.input(x);
        let out = model.forward(&mut g, x)?;
        g.take(out)
    } else {
        model.forward_folded(gpu, x)?
    };
    let p = elementwise::sigmoid(gpu, &logits)?;
    Ok(gpu.read(&p)?)
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
pub fn probability_map(
    gpu: &Gpu,
    model: &Model,
    scan: &Gray8,
    tiles: &TileOptions,
) -> anyhow::Result<Vec<f32>> {
    let x = scale_input(&scan.pixels);
    map_scaled(gpu, model, &x, (scan.width, scan.height), tiles)
}

/// The probability map of one scan, on the scan's pixels: the scan is
/// resampled to the model's spacing, run, and the map resampled back
/// (docs/MODEL.md, "Pixel spacing"). `None`: run at the scan's pixels.
pub fn probability_map_at(
    gpu: &Gpu,
    model: &Model,
    scan: &Gray8,
    spacings: Option<Spacings>,
    tiles: &TileOptions,
) -> anyhow::Result<Vec<f32>> {
    let Some(s) = spacings.filter(|s| (s.input_mm / s.model_mm - 1.0).abs() > 1e-3) else {
        return probability_map(gpu, model, scan, tiles);
    };
    let (w, h) = (scan.width, scan.height);
    let (w2, h2) = size_at_spacing(w, h, s.input_mm, s.model_mm);
    let grey = resample(
        &scan.pixels,
        (w, h),
        Window::whole(w, h, w2, h2),
        (w2, h2),
        Edge::Zero,
    );
    let x: Vec<f32> = grey.iter().map(|&v| (v - 127.0) / 255.0).collect();
    let p = map_scaled(gpu, model, &x, (w2, h2), tiles)?;
    Ok(resample(
        &p,
        (w2, h2),
        Window::whole(w2, h2, w, h),
        (w, h),
        Edge::Clamp,
    ))
}

/// The probability map of an input already scaled as the network expects.
fn map_scaled(
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
        predict(gpu, model, &x, 1, hp, wp)?
    } else {
        let core = tiles.tile.max(1).next_multiple_of(ALIGN);
        let margin = tiles.margin.next_multiple_of(ALIGN);
        let mut out = vec![0.0f32; hp * wp];
        for y0 in (0..hp).step_by(core) {
            for x0 in (0..wp).step_by(core) {
                let (y1, x1) = ((y0 + core).min(hp), (x0 + core).min(wp));
                let (ty0, tx0) = (y0.saturating_sub(margin), x0.saturating_sub(margin));
                let (ty1, tx1) = ((y1 + margin).min(hp), (x1 + margin).min(wp));
                let (th, tw) = (ty1 - ty0, tx1 - tx0);
                let mut tile = Vec::with_capacity(th * tw);
                for r in ty0..ty1 {
                    tile.extend_from_slice(&x[r * wp + tx0..r * wp + tx1]);
                }
                let p = predict(gpu, model, &tile, 1, th, tw)?;
                for r in y0..y1 {
                    let src = (r - ty0) * tw + (x0 - tx0);
                    out[r * wp + x0..r * wp + x1].copy_from_slice(&p[src..src + (x1 - x0)]);
                }
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

/// The written files of one input.
pub struct Outputs {
    pub probability: PathBuf,
    pub mask: PathBuf,
    pub overlay: PathBuf,
    /// The probability map as float32 `.npy` (H x W), when asked for.
    pub npy: Option<PathBuf>,
    pub max_probability: f32,
    pub positive_pixels: usize,
}

/// The scan of an input: channel 1 of the project's combined format (RGB
/// PNG with the mask in channel 2 and black in channel 3), else the reader's
/// 8-bit grey (colour images go to luma).
pub fn read_scan(path: &Path) -> anyhow::Result<Gray8> {
    let is_png = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("png"));
    crate::data::read::check_budget(path, crate::data::read::max_pixels())?;
    if is_png
        && let Ok(image::DynamicImage::ImageRgb8(rgb)) = image::open(path)
        && rgb.pixels().all(|p| p[2] == 0)
    {
        return Ok(crate::data::prepared::load_combined(path)?.0);
    }
    Ok(read_gray8(path)?)
}

/// [`read_scan`] and the pixel spacing the file declares (DICOM headers;
/// None for other formats).
pub fn read_scan_with_spacing(path: &Path) -> anyhow::Result<(Gray8, Option<f64>)> {
    if crate::data::read::is_dicom(path) {
        let (g, info) = crate::data::read::read_with_info(path)?;
        return Ok((g, info.dicom.and_then(|d| d.pixel_spacing_mm)));
    }
    Ok((read_scan(path)?, None))
}

/// Runs the model on one image file and writes its outputs into `out_dir`
/// (named after the file's stem).
#[allow(clippy::too_many_arguments)]
pub fn infer_file(
    gpu: &Gpu,
    model: &Model,
    input: &Path,
    out_dir: &Path,
    threshold: f32,
    spacings: Option<Spacings>,
    tiles: &TileOptions,
    npy: bool,
) -> anyhow::Result<Outputs> {
    let img = read_scan(input)?;
    let (h, w) = (img.height, img.width);
    let prob = probability_map_at(gpu, model, &img, spacings, tiles)
        .with_context(|| format!("{}: inference on {w}x{h}", input.display()))?;
    let stem = input
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("image");
    write_outputs(&out_dir.join(stem), &img, &prob, threshold, npy, &[])
}

/// The output path `STEM_suffix` (e.g. `out/a/1-1` + `prob.png`).
pub fn output_path(stem: &Path, suffix: &str) -> PathBuf {
    let mut s = stem.as_os_str().to_owned();
    s.push("_");
    s.push(suffix);
    PathBuf::from(s)
}

/// Writes `STEM_prob.png` (16-bit), `STEM_mask.png` (p > threshold),
/// `STEM_overlay.png` (with the boxes of the candidates scoring above the
/// threshold) and, with `npy`, `STEM_prob.npy`, creating the folder of
/// `stem` when needed.
pub fn write_outputs(
    stem: &Path,
    img: &Gray8,
    prob: &[f32],
    threshold: f32,
    npy: bool,
    candidates: &[Candidate],
) -> anyhow::Result<Outputs> {
    let (h, w) = (img.height, img.width);
    if let Some(dir) = stem.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let probability = output_path(stem, "prob.png");
    let mask = output_path(stem, "mask.png");
    let overlay = output_path(stem, "overlay.png");
    let p16: Vec<u16> = prob
        .iter()
        .map(|&p| (p.clamp(0.0, 1.0) * 65535.0).round() as u16)
        .collect();
    let bad = prob.iter().filter(|p| !p.is_finite()).count();
    if bad > 0 {
        anyhow::bail!(
            "{}: the probability map holds {bad} NaN or infinite values: nothing written (check the checkpoint)",
            stem.display()
        );
    }
    save_png(
        &probability,
        image::ImageBuffer::<image::Luma<u16>, _>::from_raw(w as u32, h as u32, p16)
            .expect("size matches")
            .into(),
    )?;
    let m: Vec<u8> = prob
        .iter()
        .map(|&p| if p > threshold { 255 } else { 0 })
        .collect();
    let positive_pixels = m.iter().filter(|&&v| v > 0).count();
    save_png(
        &mask,
        image::GrayImage::from_raw(w as u32, h as u32, m)
            .expect("size matches")
            .into(),
    )?;
    let mut rgb = overlay_rgb(img, prob);
    for c in candidates.iter().filter(|c| c.score > threshold) {
        draw_candidate(&mut rgb, w, h, c);
    }
    save_png(
        &overlay,
        image::RgbImage::from_raw(w as u32, h as u32, rgb)
            .expect("size matches")
            .into(),
    )?;
    let npy = if npy {
        let path = output_path(stem, "prob.npy");
        write_npy(&path, prob, h, w)?;
        Some(path)
    } else {
        None
    };
    Ok(Outputs {
        npy,
        probability,
        mask,
        overlay,
        max_probability: prob.iter().cloned().fold(0.0, f32::max),
        positive_pixels,
    })
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

/// Writes an H x W float32 array in NumPy's `.npy` format (C order),
/// atomically.
pub fn write_npy(path: &Path, data: &[f32], h: usize, w: usize) -> anyhow::Result<()> {
    use npyz::WriterBuilder;
    crate::fsio::write_atomic_with(path, false, |file| {
        let mut writer = npyz::WriteOptions::<f32>::new()
            .default_dtype()
            .shape(&[h as u64, w as u64])
            .writer(file)
            .begin_nd()?;
        writer.extend(data.iter().copied())?;
        writer.finish()?;
        Ok(())
    })
}

/// Writes a PNG atomically: a full disk leaves no truncated image.
fn save_png(path: &Path, img: image::DynamicImage) -> anyhow::Result<()> {
    crate::fsio::save_png(path, &img)
}

#[cfg(test)]
mod tests {
    #[test]
    fn npy_round_trips_shape_and_values() {
        let dir = std::env::temp_dir().join(format!("engine-npy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("p.npy");
        let data: Vec<f32> = (0..6).map(|i| i as f32 / 8.0).collect();
        super::write_npy(&path, &data, 2, 3).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let npy = npyz::NpyFile::new(&bytes[..]).unwrap();
        assert_eq!(npy.shape(), &[2, 3]);
        assert_eq!(npy.into_vec::<f32>().unwrap(), data);
        std::fs::remove_dir_all(&dir).ok();
    }
}
