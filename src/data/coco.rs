//! COCO detection exports (the JSON and its images folder, as CVAT, Label
//! Studio, Roboflow and most annotation tools write them) and `engine
//! prepare coco`.
//!
//! - Every box `[x, y, width, height]` (pixels of its image, origin top-left)
//!   becomes a lesion: its target mask is the ellipse inscribed in the box
//!   (`--box-mask ellipse`, the default) or the box itself (`--box-mask box`),
//!   and the box is kept in the manifest for lesion-level evaluation.
//! - An image without annotations is a normal film.
//! - Pixels need not be square: `--pixel-spacing ROW,COL` gives each axis'
//!   spacing, and every image is resampled to square pixels at the coarser of
//!   the two (no detail is invented), boxes with it. CBIS-DDSM's 800x800
//!   export stretches scans of about 240 x 150 mm to a square: 0.3,0.1875.
//! - The patient of an image is the first capture group of `--patient-regex`
//!   (or its whole match) on the file name; splits keep patients together.
//!
//! Everything about the JSON is checked before any image is written
//! (malformed JSON, a box outside its image, an unknown category, a file
//! name the regex does not match): an error names the JSON file and the
//! item. An image that is missing or unreadable is reported and skipped, as
//! `prepare mias|cbis` do.
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressStyle};
use regex::Regex;
use serde::Deserialize;

use super::prepared::{Holdout, Prepared, SetWriter, split_patients};
use super::read::read_gray8;
use super::resample::{Edge, Window, resample};
use super::{DataError, Gray8};

/// The default `--patient-regex`: the text before the first `_`
/// (CBIS-DDSM's `00001_LEFT_CC.jpg` is patient `00001`).
pub const PATIENT_REGEX: &str = "^([^_]+)_";

/// The annotation file looked for in `--input` when `--annotations` is not given
/// (Roboflow's name); otherwise the folder's only `.json` file.
pub const ANNOTATIONS: &str = "_annotations.coco.json";

/// How a box becomes a target mask.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BoxMask {
    /// The ellipse inscribed in the box (masses are round; a box's corners are not lesion).
    Ellipse,
    /// Every pixel of the box.
    Box,
}

/// Options of `engine prepare coco`.
#[derive(Debug, Clone)]
pub struct CocoOptions {
    /// The COCO JSON; None: `INPUT/_annotations.coco.json` or INPUT's only `.json`.
    pub annotations: Option<PathBuf>,
    pub val: Holdout,
    pub test: f64,
    pub seed: u64,
    pub crop_mm: f64,
    /// Pixel spacing (row, column) in millimetres of the images as stored.
    pub spacing_mm: (f64, f64),
    pub box_mask: BoxMask,
    pub patient_regex: String,
}

#[derive(Debug, Deserialize)]
struct CocoFile {
    images: Vec<CocoImage>,
    #[serde(default)]
    annotations: Vec<CocoAnnotation>,
    categories: Vec<CocoCategory>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct CocoImage {
    pub id: u64,
    pub file_name: String,
    pub width: usize,
    pub height: usize,
}

#[derive(Debug, Clone, Deserialize)]
pub struct CocoAnnotation {
    #[serde(default)]
    pub id: Option<u64>,
    pub image_id: u64,
    pub category_id: u64,
    pub bbox: [f64; 4],
}

#[derive(Debug, Clone, Deserialize)]
pub struct CocoCategory {
    pub id: u64,
    pub name: String,
}

/// One image of the export with its boxes, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct CocoItem {
    pub file_name: String,
    pub patient: String,
    pub width: usize,
    pub height: usize,
    /// `[x0, y0, x1, y1]` in the image's own pixels.
    pub boxes: Vec<[f64; 4]>,
    /// Category names of its boxes, deduplicated in order.
    pub classes: Vec<String>,
}

/// Reads and checks a COCO detection JSON: every annotation names a known
/// image and category and has a box of positive size inside its image, and
/// every file name yields a patient. Items come in the JSON's image order.
pub fn read_annotations(path: &Path, patient_regex: &str) -> Result<Vec<CocoItem>, DataError> {
    let text = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    let file: CocoFile = serde_json::from_slice(&text)
        .map_err(|e| DataError::invalid(path, format!("not a COCO detection file: {e}")))?;
    let re = Regex::new(patient_regex)
        .map_err(|e| DataError::invalid(path, format!("--patient-regex: {e}")))?;
    let categories: BTreeMap<u64, String> = file
        .categories
        .iter()
        .map(|c| (c.id, c.name.clone()))
        .collect();
    let mut index = BTreeMap::new();
    let mut items = Vec::with_capacity(file.images.len());
    for im in &file.images {
        if im.width == 0 || im.height == 0 {
            return Err(DataError::invalid(
                path,
                format!(
                    "image {} ({}) has size {}x{}",
                    im.id, im.file_name, im.width, im.height
                ),
            ));
        }
        if index.insert(im.id, items.len()).is_some() {
            return Err(DataError::invalid(
                path,
                format!("image id {} appears twice", im.id),
            ));
        }
        items.push(CocoItem {
            file_name: im.file_name.clone(),
            patient: patient_of(&re, &im.file_name).ok_or_else(|| {
                DataError::invalid(
                    path,
                    format!(
                        "file name {:?} does not match --patient-regex {patient_regex:?} (its first group, or the whole match, is the patient)",
                        im.file_name
                    ),
                )
            })?,
            width: im.width,
            height: im.height,
            boxes: vec![],
            classes: vec![],
        });
    }
    for (k, a) in file.annotations.iter().enumerate() {
        let name = format!(
            "annotation {}",
            a.id.map_or(format!("#{k}"), |i| i.to_string())
        );
        let Some(&i) = index.get(&a.image_id) else {
            return Err(DataError::invalid(
                path,
                format!(
                    "{name} names image {}, which is not in \"images\"",
                    a.image_id
                ),
            ));
        };
        let Some(class) = categories.get(&a.category_id) else {
            return Err(DataError::invalid(
                path,
                format!(
                    "{name} has category {}, which is not in \"categories\" (known: {})",
                    a.category_id,
                    categories
                        .keys()
                        .map(|k| k.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        };
        let item = &mut items[i];
        let b = checked_box(&a.bbox, item.width, item.height).map_err(|why| {
            DataError::invalid(
                path,
                format!(
                    "{name} on {} ({}x{}): bbox {:?} {why}",
                    item.file_name, item.width, item.height, a.bbox
                ),
            )
        })?;
        item.boxes.push(b);
        if !item.classes.contains(class) {
            item.classes.push(class.clone());
        }
    }
    Ok(items)
}

/// The patient of a file name: the regex's first group, or its whole match.
fn patient_of(re: &Regex, file_name: &str) -> Option<String> {
    let c = re.captures(file_name)?;
    let m = c.get(1).or_else(|| c.get(0))?;
    (!m.as_str().is_empty()).then(|| m.as_str().to_string())
}

/// A COCO box as `[x0, y0, x1, y1]`, or why it is not a box inside a
/// `width x height` image. Exporters round: ends up to half a pixel outside
/// are clipped, not refused.
fn checked_box(b: &[f64; 4], width: usize, height: usize) -> Result<[f64; 4], String> {
    let [x, y, w, h] = *b;
    if !b.iter().all(|v| v.is_finite()) {
        return Err("is not finite".into());
    }
    if w <= 0.0 || h <= 0.0 {
        return Err("has no area".into());
    }
    let (wf, hf) = (width as f64, height as f64);
    const SLACK: f64 = 0.5;
    if x < -SLACK || y < -SLACK || x + w > wf + SLACK || y + h > hf + SLACK {
        return Err("lies outside the image".into());
    }
    Ok([x.max(0.0), y.max(0.0), (x + w).min(wf), (y + h).min(hf)])
}

/// The annotation file of `--input`.
fn find_annotations(input: &Path) -> Result<PathBuf, DataError> {
    let named = input.join(ANNOTATIONS);
    if named.is_file() {
        return Ok(named);
    }
    let rd = std::fs::read_dir(input).map_err(|e| DataError::io(input, e))?;
    let jsons: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension()
                .is_some_and(|x| x.eq_ignore_ascii_case("json"))
        })
        .collect();
    match jsons.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(DataError::invalid(
            input,
            format!("no {ANNOTATIONS} and no other .json file: give --annotations FILE"),
        )),
        _ => Err(DataError::invalid(
            input,
            format!(
                "{} .json files and no {ANNOTATIONS}: give --annotations FILE",
                jsons.len()
            ),
        )),
    }
}

/// A scan of spacing `(row, col)` resampled to square pixels at the coarser
/// spacing; returns the image, its spacing and the factors (x, y) that map
/// the source's pixel coordinates onto it.
pub fn to_square_pixels(scan: &Gray8, (row_mm, col_mm): (f64, f64)) -> (Gray8, f64, (f64, f64)) {
    let s = row_mm.max(col_mm);
    let (fx, fy) = (col_mm / s, row_mm / s);
    let out_w = ((scan.width as f64 * fx).round() as usize).max(1);
    let out_h = ((scan.height as f64 * fy).round() as usize).max(1);
    if (out_w, out_h) == (scan.width, scan.height) {
        return (scan.clone(), s, (1.0, 1.0));
    }
    let win = Window::whole(scan.width, scan.height, out_w, out_h);
    let plane = resample(
        &scan.pixels,
        (scan.width, scan.height),
        win,
        (out_w, out_h),
        Edge::Clamp,
    );
    let pixels = plane
        .iter()
        .map(|v| v.round().clamp(0.0, 255.0) as u8)
        .collect();
    let img = Gray8 {
        width: out_w,
        height: out_h,
        pixels,
    };
    let factors = (
        out_w as f64 / scan.width as f64,
        out_h as f64 / scan.height as f64,
    );
    (img, s, factors)
}

/// Sets the pixels of box `[x0, y0, x1, y1]` (as `shape`) to 255: those whose
/// centre `(i + 0.5, j + 0.5)` lies inside. A box too small to hold a pixel
/// centre marks the pixel under its centre, so that no lesion vanishes.
pub fn draw_box(mask: &mut Gray8, b: [f64; 4], shape: BoxMask) {
    let [x0, y0, x1, y1] = b;
    let (cx, cy) = ((x0 + x1) / 2.0, (y0 + y1) / 2.0);
    let (ax, ay) = ((x1 - x0) / 2.0, (y1 - y0) / 2.0);
    let inside = |px: f64, py: f64| match shape {
        BoxMask::Box => px >= x0 && px < x1 && py >= y0 && py < y1,
        BoxMask::Ellipse => {
            let (u, v) = ((px - cx) / ax, (py - cy) / ay);
            u * u + v * v <= 1.0
        }
    };
    let clampi = |v: f64, len: usize| (v.max(0.0) as usize).min(len);
    let mut any = false;
    for y in clampi(y0.floor(), mask.height)..clampi(y1.ceil(), mask.height) {
        for x in clampi(x0.floor(), mask.width)..clampi(x1.ceil(), mask.width) {
            if inside(x as f64 + 0.5, y as f64 + 0.5) {
                mask.set(x, y, 255);
                any = true;
            }
        }
    }
    if !any && mask.width > 0 && mask.height > 0 {
        let x = clampi(cx.floor(), mask.width - 1);
        let y = clampi(cy.floor(), mask.height - 1);
        mask.set(x, y, 255);
    }
}

/// `engine prepare coco`: returns the writer (manifest + summary).
pub fn prepare(input: &Path, out: &Path, opt: &CocoOptions) -> Result<SetWriter, DataError> {
    let json = match &opt.annotations {
        Some(p) => p.clone(),
        None => find_annotations(input)?,
    };
    let items = read_annotations(&json, &opt.patient_regex)?;
    let patients: Vec<String> = items.iter().map(|i| i.patient.clone()).collect();
    let split = split_patients(&patients, opt.val, opt.test, opt.seed);
    let mut w = SetWriter::new(out, "coco", opt.crop_mm)?;
    let bar = ProgressBar::new(items.len() as u64).with_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut names = BTreeSet::new();
    for item in &items {
        bar.inc(1);
        let path = input.join(&item.file_name);
        let name = unique_name(&item.file_name, &mut names);
        match read_item(&path, item, opt) {
            Ok(SquareItem {
                scan,
                mask,
                boxes,
                spacing_mm,
            }) => w
                .add(Prepared {
                    name: &name,
                    split: &split[&item.patient],
                    patient: &item.patient,
                    source: item.file_name.clone(),
                    scan,
                    mask,
                    rois: boxes.iter().map(|b| outer_box(*b)).collect(),
                    abnormal: !boxes.is_empty(),
                    mask_complete: true,
                    classes: item.classes.clone(),
                    trim: true,
                    spacing_mm,
                    lesion_boxes: Some(boxes),
                })
                .inspect_err(|_| bar.abandon())?,
            Err(e) => {
                bar.suspend(|| eprintln!("skipped {e}"));
                w.skip(item.file_name.clone(), e.reason());
            }
        }
    }
    bar.finish_and_clear();
    w.finish()?;
    Ok(w)
}

/// One image ready to write: the scan at square pixels, its mask, its
/// boxes in the new pixels, and its spacing.
struct SquareItem {
    scan: Gray8,
    mask: Gray8,
    boxes: Vec<[f64; 4]>,
    spacing_mm: f64,
}

fn read_item(path: &Path, item: &CocoItem, opt: &CocoOptions) -> Result<SquareItem, DataError> {
    let raw = read_gray8(path)?;
    if (raw.width, raw.height) != (item.width, item.height) {
        return Err(DataError::invalid(
            path,
            format!(
                "the image is {}x{} but the annotations say {}x{}",
                raw.width, raw.height, item.width, item.height
            ),
        ));
    }
    let (scan, spacing, (fx, fy)) = to_square_pixels(&raw, opt.spacing_mm);
    let boxes: Vec<[f64; 4]> = item
        .boxes
        .iter()
        .map(|b| [b[0] * fx, b[1] * fy, b[2] * fx, b[3] * fy])
        .collect();
    let mut mask = Gray8::new(scan.width, scan.height);
    for b in &boxes {
        draw_box(&mut mask, *b, opt.box_mask);
    }
    Ok(SquareItem {
        scan,
        mask,
        boxes,
        spacing_mm: spacing,
    })
}

/// The whole pixels a box touches, `(x0, y0, x1, y1)` with exclusive ends.
fn outer_box(b: [f64; 4]) -> (usize, usize, usize, usize) {
    let f = |v: f64| v.max(0.0) as usize;
    (
        f(b[0].floor()),
        f(b[1].floor()),
        f(b[2].ceil()),
        f(b[3].ceil()),
    )
}

/// The prepared name of an image: its file name without extension, with
/// path separators replaced, made unique by a suffix.
fn unique_name(file_name: &str, seen: &mut BTreeSet<String>) -> String {
    let stem = Path::new(file_name)
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or(file_name)
        .replace(['/', '\\'], "_");
    let mut name = stem.clone();
    let mut k = 1;
    while !seen.insert(name.clone()) {
        name = format!("{stem}-{k}");
        k += 1;
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ellipse_and_box_masks_are_exact() {
        // Box [1, 1, 7, 5]: 6 x 4 pixels; the inscribed ellipse has semi-axes 3 and 2.
        let mut m = Gray8::new(8, 6);
        draw_box(&mut m, [1.0, 1.0, 7.0, 5.0], BoxMask::Box);
        assert_eq!(m.count_nonzero(), 24);
        assert_eq!(m.nonzero_bbox(), Some((1, 1, 7, 5)));
        let mut e = Gray8::new(8, 6);
        draw_box(&mut e, [1.0, 1.0, 7.0, 5.0], BoxMask::Ellipse);
        // Centres (x+0.5, y+0.5) with ((x+0.5-4)/3)^2 + ((y+0.5-3)/2)^2 <= 1.
        let expected: usize = (0..6)
            .flat_map(|y| (0..8).map(move |x| (x, y)))
            .filter(|&(x, y)| {
                let (u, v) = ((x as f64 + 0.5 - 4.0) / 3.0, (y as f64 + 0.5 - 3.0) / 2.0);
                u * u + v * v <= 1.0
            })
            .count();
        assert_eq!(e.count_nonzero(), expected);
        // By hand: rows y = 1, 4 (v^2 = 0.5625) keep the 4 centres with u^2 <= 0.4375,
        // rows y = 2, 3 (v^2 = 0.0625) all 6: 20 pixels.
        assert_eq!(expected, 20);
        assert_eq!(e.get(0, 0), 0);
        assert_eq!(e.get(1, 1), 0, "a box's corner is not in its ellipse");
        assert_eq!(e.get(3, 2), 255);
        // A box smaller than a pixel still marks one.
        let mut t = Gray8::new(4, 4);
        draw_box(&mut t, [2.1, 1.2, 2.3, 1.4], BoxMask::Ellipse);
        assert_eq!(t.count_nonzero(), 1);
        assert_eq!(t.get(2, 1), 255);
    }

    #[test]
    fn boxes_are_checked_against_their_image() {
        assert_eq!(
            checked_box(&[1.0, 2.0, 3.0, 4.0], 10, 10),
            Ok([1.0, 2.0, 4.0, 6.0])
        );
        assert_eq!(
            checked_box(&[-0.25, 0.0, 10.5, 4.0], 10, 10),
            Ok([0.0, 0.0, 10.0, 4.0])
        );
        assert!(
            checked_box(&[5.0, 5.0, 6.0, 1.0], 10, 10)
                .unwrap_err()
                .contains("outside")
        );
        assert!(
            checked_box(&[-2.0, 5.0, 1.0, 1.0], 10, 10)
                .unwrap_err()
                .contains("outside")
        );
        assert!(
            checked_box(&[1.0, 1.0, 0.0, 1.0], 10, 10)
                .unwrap_err()
                .contains("no area")
        );
        assert!(checked_box(&[f64::NAN, 1.0, 1.0, 1.0], 10, 10).is_err());
    }

    #[test]
    fn patients_come_from_the_regex() {
        let re = Regex::new(PATIENT_REGEX).unwrap();
        assert_eq!(
            patient_of(&re, "00001_LEFT_CC.jpg").as_deref(),
            Some("00001")
        );
        assert_eq!(
            patient_of(&re, "00001_LEFT_CC_jpg.rf.3f2a.jpg").as_deref(),
            Some("00001")
        );
        assert_eq!(patient_of(&re, "nounderscore.jpg"), None);
        let whole = Regex::new("^case[0-9]+").unwrap();
        assert_eq!(
            patient_of(&whole, "case12-a.png").as_deref(),
            Some("case12")
        );
    }

    #[test]
    fn square_pixels_at_the_coarser_spacing() {
        let g = Gray8 {
            width: 8,
            height: 4,
            pixels: vec![100; 32],
        };
        let (s, mm, (fx, fy)) = to_square_pixels(&g, (0.3, 0.15));
        assert_eq!((s.width, s.height), (4, 4));
        assert_eq!(mm, 0.3);
        assert_eq!((fx, fy), (0.5, 1.0));
        assert!(s.pixels.iter().all(|&v| v == 100));
        let (same, mm, f) = to_square_pixels(&g, (0.2, 0.2));
        assert_eq!(same, g);
        assert_eq!((mm, f), (0.2, (1.0, 1.0)));
    }
}
