//! The prepared ("combined") format that `engine prepare` and `engine synth`
//! write and `engine train` reads.
//!
//! ```text
//! DIR/manifest.json          every image: file, split, patient, source, crop, size, positives
//! DIR/train/NAME.png         full (background-trimmed) images of the training patients
//! DIR/val/NAME.png           ... validation patients
//! DIR/test/NAME.png          ... test patients
//! DIR/train_crops/NAME_roiK.png  ROI-centred crops of training images (lesion K)
//! ```
//!
//! Every PNG is RGB 8-bit: R = scan, G = union of the lesion masks (0 or 255),
//! B = 0. Splits are by patient: all images of a patient are in one split.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::{DataError, Gray8};

pub const MANIFEST: &str = "manifest.json";
pub const FORMAT: &str = "mammo-combined-v1";

/// One image of the manifest.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Entry {
    /// Path relative to the set's directory, e.g. `train/mdb001.png`.
    pub file: String,
    /// `train`, `val` or `test`.
    pub split: String,
    pub patient: String,
    /// The original file(s) the image was made from.
    pub source: String,
    /// True for an ROI-centred crop (in `train_crops/`).
    pub crop: bool,
    pub width: usize,
    pub height: usize,
    /// Pixels inside the lesion mask.
    pub positive_pixels: usize,
    /// Image-level label from the ground truth (true even when no mask could be drawn).
    pub abnormal: bool,
    /// False when the ground truth has a lesion without a location (MIAS rows without
    /// coordinates kept with `--keep-uncoordinated`): the mask is then incomplete, so
    /// the image is fit for image-level evaluation only, never for training.
    #[serde(default = "yes")]
    pub mask_complete: bool,
    /// Lesion classes (MIAS: CIRC, CALC, ...; CBIS: mass, calcification).
    #[serde(default)]
    pub classes: Vec<String>,
    /// Physical size of a pixel in millimetres (square pixels); absent in
    /// sets prepared before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pixel_spacing_mm: Option<f64>,
    /// The ground truth's lesion boxes `[x0, y0, x1, y1]` in this image's
    /// pixels (sets prepared from boxes, `engine prepare coco`): lesion-level
    /// evaluation counts a hit inside the box. Absent: the lesions are the
    /// connected regions of the mask.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lesion_boxes: Option<Vec<[f64; 4]>>,
}

fn yes() -> bool {
    true
}

/// Something that was not written, and why.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Skipped {
    pub item: String,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    /// `mias`, `cbis` or `synth`.
    pub source: String,
    pub images: Vec<Entry>,
    #[serde(default)]
    pub skipped: Vec<Skipped>,
}

/// Where a sample's pixels come from.
#[derive(Debug, Clone)]
pub enum SampleSource {
    /// A combined PNG on disk.
    File(PathBuf),
    /// An image and its 0/1 mask in memory (e.g. synthetic phantoms in tests).
    Memory(Arc<(Gray8, Gray8)>),
}

/// One training or evaluation image.
#[derive(Debug, Clone)]
pub struct Sample {
    pub id: String,
    pub source: SampleSource,
    pub split: String,
    pub patient: String,
    pub crop: bool,
    /// Fraction of positive pixels in the whole image (from the manifest).
    pub positive_fraction: f64,
    pub abnormal: bool,
    pub mask_complete: bool,
    /// (width, height) the manifest records for the file, if any.
    pub size: Option<(usize, usize)>,
    /// Pixel spacing in millimetres, if known.
    pub spacing_mm: Option<f64>,
    /// The ground truth's lesion boxes, for sets prepared from boxes.
    pub lesion_boxes: Option<Vec<[f64; 4]>>,
    /// The data set it belongs to when training on several (`engine train
    /// --data A --data B`: the folders' names); empty for one.
    pub set: String,
}

impl Sample {
    /// A sample held in memory; `mask` holds 0 or 1 (any non-zero counts as 1).
    pub fn in_memory(id: impl Into<String>, image: Gray8, mut mask: Gray8) -> Sample {
        for v in &mut mask.pixels {
            *v = (*v != 0) as u8;
        }
        let pos = mask.count_nonzero();
        let frac = pos as f64 / mask.pixels.len().max(1) as f64;
        Sample {
            id: id.into(),
            source: SampleSource::Memory(Arc::new((image, mask))),
            split: "train".into(),
            patient: String::new(),
            crop: false,
            positive_fraction: frac,
            abnormal: pos > 0,
            mask_complete: true,
            size: None,
            spacing_mm: None,
            lesion_boxes: None,
            set: String::new(),
        }
    }

    /// The scan and its 0/1 mask.
    pub fn load(&self) -> Result<(Gray8, Gray8), DataError> {
        match &self.source {
            SampleSource::File(p) => load_combined(p),
            SampleSource::Memory(a) => Ok((a.0.clone(), a.1.clone())),
        }
    }

    /// Bytes the decoded image and mask take in memory (for the loader's cache).
    pub fn decoded_bytes_hint(&self) -> Option<usize> {
        match &self.source {
            SampleSource::Memory(a) => Some(a.0.pixels.len() * 2),
            SampleSource::File(_) => None,
        }
    }
}

/// A prepared directory.
#[derive(Debug, Clone)]
pub struct PreparedSet {
    pub dir: PathBuf,
    pub manifest: Manifest,
}

impl PreparedSet {
    pub fn open(dir: &Path) -> Result<PreparedSet, DataError> {
        let path = dir.join(MANIFEST);
        let not_prepared = |what: &str| DataError::NotPrepared {
            dir: dir.to_path_buf(),
            what: what.into(),
        };
        if !dir.is_dir() {
            return Err(not_prepared(if dir.exists() {
                "not a folder"
            } else {
                "no such folder"
            }));
        }
        if !path.exists() {
            return Err(not_prepared(&format!("no {MANIFEST}")));
        }
        let text = std::fs::read_to_string(&path).map_err(|e| DataError::io(&path, e))?;
        let manifest: Manifest = serde_json::from_str(&text)
            .map_err(|e| DataError::invalid(&path, format!("not a prepared-set manifest: {e}")))?;
        if manifest.format != FORMAT {
            return Err(DataError::unsupported(
                &path,
                format!("manifest format {:?}, expected {FORMAT:?}", manifest.format),
            ));
        }
        Ok(PreparedSet {
            dir: dir.to_path_buf(),
            manifest,
        })
    }

    fn sample(&self, e: &Entry) -> Sample {
        Sample {
            id: e.file.clone(),
            source: SampleSource::File(self.dir.join(&e.file)),
            split: e.split.clone(),
            patient: e.patient.clone(),
            crop: e.crop,
            positive_fraction: e.positive_pixels as f64 / (e.width * e.height).max(1) as f64,
            abnormal: e.abnormal,
            mask_complete: e.mask_complete,
            size: Some((e.width, e.height)),
            spacing_mm: e.pixel_spacing_mm,
            lesion_boxes: e.lesion_boxes.clone(),
            set: String::new(),
        }
    }

    /// Samples of a split: `train`, `val`, `test` give the full images of that
    /// split; `train_crops` (generally `SPLIT_crops`) gives the ROI crops.
    pub fn split(&self, name: &str) -> Vec<Sample> {
        let (split, crops) = match name.strip_suffix("_crops") {
            Some(s) => (s, true),
            None => (name, false),
        };
        self.manifest
            .images
            .iter()
            .filter(|e| e.split == split && e.crop == crops)
            .map(|e| self.sample(e))
            .collect()
    }

    /// Everything `engine train` uses: the training split's full images and crops
    /// (the loader mixes them for the positive-pixel target).
    pub fn training(&self) -> Vec<Sample> {
        let mut v = self.split("train");
        v.extend(self.split("train_crops"));
        v
    }
}

/// Read a combined PNG: (scan, mask with 0 or 1).
pub fn load_combined(path: &Path) -> Result<(Gray8, Gray8), DataError> {
    super::read::check_budget(path, super::read::max_pixels())?;
    let img = image::ImageReader::open(path)
        .map_err(|e| DataError::io(path, e))?
        .with_guessed_format()
        .map_err(|e| DataError::io(path, e))?
        .decode()
        .map_err(|e| DataError::decode(path, format!("cannot decode combined PNG: {e}")))?;
    let rgb = match img {
        image::DynamicImage::ImageRgb8(b) => b,
        other => {
            return Err(DataError::invalid(
                path,
                format!(
                    "a combined image must be 8-bit RGB (R = scan, G = mask), found {:?}",
                    other.color()
                ),
            ));
        }
    };
    let (w, h) = (rgb.width() as usize, rgb.height() as usize);
    let raw = rgb.into_raw();
    let mut scan = Gray8::new(w, h);
    let mut mask = Gray8::new(w, h);
    for (i, px) in raw.chunks_exact(3).enumerate() {
        scan.pixels[i] = px[0];
        mask.pixels[i] = (px[1] >= 128) as u8;
    }
    Ok((scan, mask))
}

/// Write a combined PNG (mask: any non-zero value is a lesion pixel).
pub fn write_combined(path: &Path, scan: &Gray8, mask: &Gray8) -> Result<(), DataError> {
    if (scan.width, scan.height) != (mask.width, mask.height) {
        return Err(DataError::invalid(
            path,
            format!(
                "scan {}x{} and mask {}x{} differ",
                scan.width, scan.height, mask.width, mask.height
            ),
        ));
    }
    let mut raw = Vec::with_capacity(scan.pixels.len() * 3);
    for (&s, &m) in scan.pixels.iter().zip(&mask.pixels) {
        raw.extend_from_slice(&[s, if m != 0 { 255 } else { 0 }, 0]);
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| DataError::write(dir, e))?;
    }
    let img = image::RgbImage::from_raw(scan.width as u32, scan.height as u32, raw)
        .expect("3 bytes per pixel");
    crate::fsio::save_png(path, &img.into()).map_err(|e| DataError::write(path, e.root_cause()))
}

/// Intensity above which a pixel counts as tissue when trimming the background.
pub const TRIM_LEVEL: u8 = 16;

/// The box `(x0, y0, x1, y1)` left after trimming the black background: leading and
/// trailing rows/columns where fewer than 0.2% of the pixels (at least 1) exceed
/// [`TRIM_LEVEL`] are dropped, so isolated noise does not stop the trim. The mask's
/// own box is always kept.
pub fn trim_box(scan: &Gray8, mask: &Gray8) -> (usize, usize, usize, usize) {
    let (w, h) = (scan.width, scan.height);
    let mut rows = vec![0usize; h];
    let mut cols = vec![0usize; w];
    for (y, row) in scan.pixels.chunks_exact(w.max(1)).enumerate() {
        for (x, &v) in row.iter().enumerate() {
            if v > TRIM_LEVEL {
                rows[y] += 1;
                cols[x] += 1;
            }
        }
    }
    let need_row = (w / 500).max(1);
    let need_col = (h / 500).max(1);
    let span = |counts: &[usize], need: usize| {
        let a = counts.iter().position(|&c| c >= need);
        let b = counts.iter().rposition(|&c| c >= need);
        match (a, b) {
            (Some(a), Some(b)) => (a, b + 1),
            _ => (0, counts.len()),
        }
    };
    let (mut x0, mut x1) = span(&cols, need_col);
    let (mut y0, mut y1) = span(&rows, need_row);
    if let Some((mx0, my0, mx1, my1)) = mask.nonzero_bbox() {
        x0 = x0.min(mx0);
        y0 = y0.min(my0);
        x1 = x1.max(mx1);
        y1 = y1.max(my1);
    }
    (x0, y0, x1, y1)
}

/// The crop box around one ROI: twice its bounding box, at least `min_side` in each
/// direction, centred on the ROI, shifted to stay inside the image and clipped to it.
pub fn roi_crop_box(
    roi: (usize, usize, usize, usize),
    width: usize,
    height: usize,
    min_side: usize,
) -> (usize, usize, usize, usize) {
    let (x0, y0, x1, y1) = roi;
    let place = |a: usize, b: usize, len: usize| {
        let side = (2 * (b - a)).max(min_side).min(len);
        let centre = (a + b) / 2;
        let start = centre.saturating_sub(side / 2).min(len - side);
        (start, start + side)
    };
    let (cx0, cx1) = place(x0, x1, width);
    let (cy0, cy1) = place(y0, y1, height);
    (cx0, cy0, cx1, cy1)
}

/// Which of the patients not in test are held out for validation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Holdout {
    /// This fraction of all patients.
    Fraction(f64),
    /// Part `index` (0-based) of `count` equal parts of the non-test
    /// patients: the `count` preparations share one test split, and their
    /// validation splits cover every other patient exactly once
    /// (cross-validation).
    Fold { index: usize, count: usize },
}

/// Assign patients to train/val/test: a seeded shuffle of the sorted patient ids,
/// then `round(test * n)` to test, the validation patients of `val` next,
/// the rest to train. The test split depends only on `test` and `seed`.
pub fn split_patients(
    patients: &[String],
    val: Holdout,
    test: f64,
    seed: u64,
) -> BTreeMap<String, String> {
    let mut ids: Vec<String> = patients.to_vec();
    ids.sort();
    ids.dedup();
    ids.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    let n = ids.len();
    let n_test = ((test * n as f64).round() as usize).min(n);
    let rest = n - n_test;
    // Positions among the non-test patients that go to validation.
    let (v0, v1) = match val {
        Holdout::Fraction(f) => (0, ((f * n as f64).round() as usize).min(rest)),
        Holdout::Fold { index, count } => (index * rest / count, (index + 1) * rest / count),
    };
    ids.into_iter()
        .enumerate()
        .map(|(i, p)| {
            let s = match i.checked_sub(n_test) {
                None => "test",
                Some(j) if (v0..v1).contains(&j) => "val",
                Some(_) => "train",
            };
            (p, s.to_string())
        })
        .collect()
}

/// Collects what a preparation run writes and prints its summary.
pub struct SetWriter {
    pub dir: PathBuf,
    pub manifest: Manifest,
    /// Minimum side of an ROI crop in millimetres.
    pub crop_mm: f64,
}

/// Default minimum side of ROI crops, in millimetres. A crop should fill the
/// training window with tissue: the window of a 320-pixel crop at MIAS's
/// model spacing (0.2 mm / 0.66) is 97 mm. (The paper's 1280 pixels at
/// ~50 um are 64 mm, smaller than its own 48 mm windows only by luck of
/// its 640-pixel crops at 75 um.)
pub const CROP_MM: f64 = 100.0;

/// A full image to write, with the boxes of its individual lesions (for crops).
pub struct Prepared<'a> {
    pub name: &'a str,
    pub split: &'a str,
    pub patient: &'a str,
    pub source: String,
    pub scan: Gray8,
    pub mask: Gray8,
    pub rois: Vec<(usize, usize, usize, usize)>,
    pub abnormal: bool,
    pub mask_complete: bool,
    pub classes: Vec<String>,
    /// Trim the black background (off for synthetic sets that have none to trim).
    pub trim: bool,
    /// Pixel spacing in millimetres.
    pub spacing_mm: f64,
    /// Lesion boxes `[x0, y0, x1, y1]` of a box ground truth, in the
    /// untrimmed image's pixels (None: the mask's regions are the lesions).
    pub lesion_boxes: Option<Vec<[f64; 4]>>,
}

impl SetWriter {
    pub fn new(dir: &Path, source: &str, crop_mm: f64) -> Result<SetWriter, DataError> {
        std::fs::create_dir_all(dir).map_err(|e| DataError::write(dir, e))?;
        Ok(SetWriter {
            dir: dir.to_path_buf(),
            manifest: Manifest {
                format: FORMAT.into(),
                source: source.into(),
                images: vec![],
                skipped: vec![],
            },
            crop_mm,
        })
    }

    pub fn skip(&mut self, item: impl Into<String>, reason: impl Into<String>) {
        self.manifest.skipped.push(Skipped {
            item: item.into(),
            reason: reason.into(),
        });
    }

    /// Trim, write the full image and (for the training split) its ROI crops.
    pub fn add(&mut self, p: Prepared<'_>) -> Result<(), DataError> {
        let (x0, y0, x1, y1) = if p.trim {
            trim_box(&p.scan, &p.mask)
        } else {
            (0, 0, p.scan.width, p.scan.height)
        };
        let (w, h) = (x1 - x0, y1 - y0);
        let scan = p.scan.crop(x0, y0, w, h);
        let mask = p.mask.crop(x0, y0, w, h);
        let file = format!("{}/{}.png", p.split, p.name);
        write_combined(&self.dir.join(&file), &scan, &mask)?;
        let entry = Entry {
            file,
            split: p.split.into(),
            patient: p.patient.into(),
            source: p.source.clone(),
            crop: false,
            width: w,
            height: h,
            positive_pixels: mask.count_nonzero(),
            abnormal: p.abnormal,
            mask_complete: p.mask_complete,
            classes: p.classes.clone(),
            pixel_spacing_mm: Some(p.spacing_mm),
            lesion_boxes: p.lesion_boxes.as_ref().map(|bs| {
                let (dx, dy) = (x0 as f64, y0 as f64);
                bs.iter()
                    .map(|b| [b[0] - dx, b[1] - dy, b[2] - dx, b[3] - dy])
                    .collect()
            }),
        };
        self.manifest.images.push(entry);
        let crop_min = (self.crop_mm / p.spacing_mm).round().max(1.0) as usize;
        if p.split != "train" || !p.mask_complete {
            return Ok(());
        }
        for (k, roi) in p.rois.iter().enumerate() {
            // ROI boxes are in the untrimmed frame: move them into the trimmed one.
            let r = (
                roi.0.saturating_sub(x0).min(w),
                roi.1.saturating_sub(y0).min(h),
                roi.2.saturating_sub(x0).min(w),
                roi.3.saturating_sub(y0).min(h),
            );
            if r.2 <= r.0 || r.3 <= r.1 {
                continue;
            }
            let (cx0, cy0, cx1, cy1) = roi_crop_box(r, w, h, crop_min);
            let (cw, ch) = (cx1 - cx0, cy1 - cy0);
            // A crop that is (nearly) the whole image would only duplicate it.
            if cw * ch * 10 >= w * h * 9 {
                continue;
            }
            let cscan = scan.crop(cx0, cy0, cw, ch);
            let cmask = mask.crop(cx0, cy0, cw, ch);
            let file = format!("{}_crops/{}_roi{}.png", p.split, p.name, k);
            write_combined(&self.dir.join(&file), &cscan, &cmask)?;
            self.manifest.images.push(Entry {
                file,
                split: p.split.into(),
                patient: p.patient.into(),
                source: p.source.clone(),
                crop: true,
                width: cw,
                height: ch,
                positive_pixels: cmask.count_nonzero(),
                abnormal: true,
                mask_complete: true,
                classes: p.classes.clone(),
                pixel_spacing_mm: Some(p.spacing_mm),
                lesion_boxes: None,
            });
        }
        Ok(())
    }

    /// Write manifest.json.
    pub fn finish(&self) -> Result<(), DataError> {
        let path = self.dir.join(MANIFEST);
        let text = serde_json::to_string_pretty(&self.manifest)
            .map_err(|e| DataError::invalid(&path, format!("cannot serialise manifest: {e}")))?;
        crate::fsio::write_atomic(&path, text.as_bytes(), true)
            .map_err(|e| DataError::write(&path, e.root_cause()))
    }

    /// The summary printed at the end of a preparation run.
    pub fn summary(&self) -> String {
        summarize(&self.manifest)
    }
}

/// Images, positives and positive-pixel fractions per split, and the skip list.
pub fn summarize(m: &Manifest) -> String {
    let mut s = String::new();
    for split in ["train", "val", "test"] {
        for crop in [false, true] {
            let es: Vec<&Entry> = m
                .images
                .iter()
                .filter(|e| e.split == split && e.crop == crop)
                .collect();
            if es.is_empty() {
                continue;
            }
            let pos = es.iter().filter(|e| e.abnormal).count();
            let px: usize = es.iter().map(|e| e.positive_pixels).sum();
            let all: usize = es.iter().map(|e| e.width * e.height).sum();
            let incomplete = es.iter().filter(|e| !e.mask_complete).count();
            s += &format!(
                "{:<12} {:>5} images, {:>5} positive, positive pixels {:.4}%{}\n",
                if crop {
                    format!("{split}_crops")
                } else {
                    split.to_string()
                },
                es.len(),
                pos,
                100.0 * px as f64 / all.max(1) as f64,
                if incomplete > 0 {
                    format!(", {incomplete} image-level only (no mask)")
                } else {
                    String::new()
                }
            );
        }
    }
    let patients: std::collections::BTreeSet<&str> =
        m.images.iter().map(|e| e.patient.as_str()).collect();
    s += &format!("{} patients\n", patients.len());
    if m.skipped.is_empty() {
        s += "skipped: nothing\n";
    } else {
        s += &format!("skipped: {}\n", m.skipped.len());
        for k in &m.skipped {
            s += &format!("  {}: {}\n", k.item, k.reason);
        }
    }
    s
}

#[cfg(test)]
mod split_tests {
    use super::*;

    fn patients(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("p{i:03}")).collect()
    }

    fn with(split: &BTreeMap<String, String>, name: &str) -> Vec<String> {
        split
            .iter()
            .filter(|(_, s)| s.as_str() == name)
            .map(|(p, _)| p.clone())
            .collect()
    }

    #[test]
    fn a_fraction_holds_out_rounded_shares() {
        let s = split_patients(&patients(108), Holdout::Fraction(0.15), 0.2, 0);
        assert_eq!(with(&s, "test").len(), 22);
        assert_eq!(with(&s, "val").len(), 16);
        assert_eq!(with(&s, "train").len(), 70);
    }

    #[test]
    fn folds_share_the_test_split_and_cover_the_rest_once() {
        let ps = patients(108);
        let plain = split_patients(&ps, Holdout::Fraction(0.15), 0.2, 7);
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        for index in 0..5 {
            let s = split_patients(&ps, Holdout::Fold { index, count: 5 }, 0.2, 7);
            assert_eq!(with(&s, "test"), with(&plain, "test"), "fold {index}");
            let val = with(&s, "val");
            // 86 non-test patients in five parts of 17 or 18.
            assert!(
                (17..=18).contains(&val.len()),
                "fold {index}: {}",
                val.len()
            );
            assert_eq!(with(&s, "train").len(), 86 - val.len());
            for p in val {
                *seen.entry(p).or_default() += 1;
            }
        }
        assert_eq!(seen.len(), 86);
        assert!(seen.values().all(|&c| c == 1));
        assert!(with(&plain, "test").iter().all(|p| !seen.contains_key(p)));
    }
}
