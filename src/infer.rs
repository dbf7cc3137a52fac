//! `engine infer`: a probability map per input (16-bit grey PNG), a binary
//! mask at the threshold, and a heatmap overlay on the scan.
//!
//! The maps come from the core's `engine_core::infer`, whose readbacks are
//! asynchronous so that they can run in a browser; the functions here wait
//! on them (the native edge) and read and write files.
use crate::data::Gray8;
use crate::data::read::read_gray8;
use crate::gpu::Gpu;
use crate::lesions::Candidate;
use crate::model::Model;
use crate::predictor::Predictor;
use anyhow::Context;
pub use engine_core::infer::{
    MARGIN, Spacings, TileOptions, draw_candidate, heat, overlay_rgb, scale_input,
};
use std::path::{Path, PathBuf};

/// Probabilities for a batch in inference mode (running statistics).
pub fn predict(
    gpu: &Gpu,
    model: &Model,
    images: &[f32],
    n: usize,
    h: usize,
    w: usize,
) -> anyhow::Result<Vec<f32>> {
    pollster::block_on(engine_core::infer::predict(gpu, model, images, n, h, w))
}

/// The probability map (row-major, the scan's size) of one scan, run at
/// the scan's own pixels.
pub fn probability_map(
    gpu: &Gpu,
    model: &Model,
    scan: &Gray8,
    tiles: &TileOptions,
) -> anyhow::Result<Vec<f32>> {
    pollster::block_on(engine_core::infer::probability_map(gpu, model, scan, tiles))
}

/// The probability map of one scan on the scan's pixels, run at the
/// model's spacing (`engine_core::infer::probability_map_at`).
pub fn probability_map_at(
    gpu: &Gpu,
    model: &Model,
    scan: &Gray8,
    spacings: Option<Spacings>,
    tiles: &TileOptions,
) -> anyhow::Result<Vec<f32>> {
    pollster::block_on(engine_core::infer::probability_map_at(
        gpu, model, scan, spacings, tiles,
    ))
}

/// The predictor's probability map of one scan (`Predictor::probability_map`),
/// its new kernels compiled in the background meanwhile where that helps
/// (`crate::prewarm`). `declared`: the spacing the scan's file declares;
/// `flag`: `--pixel-spacing`.
pub fn predictor_map(
    gpu: &Gpu,
    predictor: &Predictor,
    scan: &Gray8,
    (declared, flag): (Option<f64>, Option<f64>),
    tiles: &TileOptions,
) -> anyhow::Result<Vec<f32>> {
    if crate::prewarm::useful(gpu) {
        let size = (scan.width, scan.height);
        let kernels = predictor.kernels_for(gpu, size, (declared, flag), tiles)?;
        crate::prewarm::start(gpu, kernels);
    }
    pollster::block_on(predictor.probability_map(gpu, scan, declared, flag, tiles))
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
