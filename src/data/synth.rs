//! Synthetic phantom mammograms with exact masks, for users without real data
//! and for tests.
//!
//! A phantom is a breast-shaped region against a black background, attached to
//! the left or right edge, filled with multi-octave value-noise texture that fades
//! towards the skin line. Lesions:
//! - masses: a bright blob whose radius varies smoothly with angle (a few low
//!   harmonics); spiculated masses add thin bright spicules radiating outwards;
//! - calcification clusters: 4-14 tiny, very bright specks (1-2 px radius).
//!
//! The mask is exactly the set of pixels a lesion brightened.
//! Generation is seeded: the same (seed, index, options) give the same phantom.
use std::f64::consts::PI;
use std::path::Path;

use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::prepared::{Holdout, Prepared, SetWriter, split_patients};
use super::{DataError, Gray8};

/// The nominal pixel spacing of the phantoms: they are drawn at the scale of
/// mini-MIAS (lesions of 5-40 pixels, 1-8 mm there).
pub const SPACING_MM: f64 = 0.2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LesionKind {
    Mass,
    SpiculatedMass,
    Calcifications,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Lesion {
    pub kind: LesionKind,
    /// Bounding box of the lesion's mask (exclusive ends).
    pub bbox: (usize, usize, usize, usize),
    /// The lesion's own 0/1 mask (full image size).
    pub mask: Gray8,
}

#[derive(Debug, Clone)]
pub struct Phantom {
    pub image: Gray8,
    /// Union of the lesion masks, 0 or 1.
    pub mask: Gray8,
    pub lesions: Vec<Lesion>,
    /// True when the breast is attached to the right edge.
    pub right: bool,
}

#[derive(Debug, Clone)]
pub struct SynthOptions {
    pub width: usize,
    pub height: usize,
    /// Probability that a phantom has lesions at all (else it is normal).
    pub lesion_probability: f64,
    /// Lesions per abnormal phantom: 1..=max_lesions.
    pub max_lesions: usize,
    /// Which kinds may appear.
    pub masses: bool,
    pub calcifications: bool,
}

impl SynthOptions {
    pub fn square(size: usize) -> Self {
        SynthOptions {
            width: size,
            height: size,
            lesion_probability: 0.8,
            max_lesions: 2,
            masses: true,
            calcifications: true,
        }
    }
}

/// Derive an independent seed for item `i` (splitmix64 finaliser).
pub fn mix_seed(seed: u64, i: u64) -> u64 {
    let mut z = seed ^ i.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// `n` square phantoms of side `size` (default options), seeded.
pub fn generate(n: usize, size: usize, seed: u64) -> Vec<Phantom> {
    let opt = SynthOptions::square(size);
    (0..n)
        .map(|i| phantom(&opt, mix_seed(seed, i as u64)))
        .collect()
}

/// Smooth value noise in [0, 1): random values on a grid of `cell` pixels,
/// interpolated with smoothstep weights.
fn value_noise(rng: &mut ChaCha8Rng, w: usize, h: usize, cell: f64, out: &mut [f32], amp: f32) {
    let gw = (w as f64 / cell).ceil() as usize + 2;
    let gh = (h as f64 / cell).ceil() as usize + 2;
    let grid: Vec<f32> = (0..gw * gh).map(|_| rng.random::<f32>()).collect();
    let smooth = |t: f64| (t * t * (3.0 - 2.0 * t)) as f32;
    let xs: Vec<(usize, f32)> = (0..w)
        .map(|x| {
            let g = x as f64 / cell;
            (g as usize, smooth(g.fract()))
        })
        .collect();
    for y in 0..h {
        let g = y as f64 / cell;
        let (gy, fy) = (g as usize, smooth(g.fract()));
        for (x, &(gx, fx)) in xs.iter().enumerate() {
            let a = grid[gy * gw + gx] * (1.0 - fx) + grid[gy * gw + gx + 1] * fx;
            let b = grid[(gy + 1) * gw + gx] * (1.0 - fx) + grid[(gy + 1) * gw + gx + 1] * fx;
            out[y * w + x] += amp * (a * (1.0 - fy) + b * fy);
        }
    }
}

/// One phantom.
pub fn phantom(opt: &SynthOptions, seed: u64) -> Phantom {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (w, h) = (opt.width.max(8), opt.height.max(8));
    let right = rng.random::<bool>();
    // Breast: half-ellipse against the chest wall (the left or right edge).
    let a = w as f64 * rng.random_range(0.6..0.85);
    let b = h as f64 * rng.random_range(0.38..0.47);
    let cy = h as f64 * rng.random_range(0.47..0.53);
    let cx = if right { w as f64 - 0.5 } else { -0.5 };
    let mut tex = vec![0f32; w * h];
    let base_cell = (w.min(h) as f64 / 3.0).max(4.0);
    for (o, amp) in [(1.0, 0.5f32), (2.0, 0.25), (4.0, 0.15), (8.0, 0.1)] {
        value_noise(&mut rng, w, h, (base_cell / o).max(1.5), &mut tex, amp);
    }
    let density = rng.random_range(0.6..1.0f32);
    let mut field = vec![0f32; w * h];
    let mut inside = vec![0f32; w * h]; // normalised radius, > 1 outside the breast
    for y in 0..h {
        for x in 0..w {
            let r = (((x as f64 - cx) / a).powi(2) + ((y as f64 - cy) / b).powi(2)).sqrt();
            inside[y * w + x] = r as f32;
            if r < 1.0 {
                // Fatty near the skin, glandular (brighter, textured) near the chest wall.
                let fade = (1.0 - r.powi(6)) as f32;
                let gland = (1.0 - r as f32).clamp(0.0, 1.0);
                let t = tex[y * w + x];
                field[y * w + x] =
                    fade * (60.0 + 70.0 * density * gland + 60.0 * t) + rng.random_range(-3.0..3.0);
            }
        }
    }
    let mut lesions = Vec::new();
    let kinds: Vec<LesionKind> = [
        (opt.masses, LesionKind::Mass),
        (opt.masses, LesionKind::SpiculatedMass),
        (opt.calcifications, LesionKind::Calcifications),
    ]
    .iter()
    .filter(|(on, _)| *on)
    .map(|(_, k)| *k)
    .collect();
    if !kinds.is_empty() && rng.random_bool(opt.lesion_probability.clamp(0.0, 1.0)) {
        let n = rng.random_range(1..=opt.max_lesions.max(1));
        for _ in 0..n {
            let kind = kinds[rng.random_range(0..kinds.len())];
            // Centre well inside the breast.
            let (px, py) = loop {
                let t = rng.random_range(-PI / 2.0..PI / 2.0);
                let r = rng.random_range(0.15..0.65);
                let x = cx + if right { -1.0 } else { 1.0 } * r * a * t.cos();
                let y = cy + r * b * t.sin();
                if x >= 0.0 && y >= 0.0 && x < w as f64 && y < h as f64 {
                    break (x, y);
                }
            };
            let lesion = match kind {
                LesionKind::Calcifications => calcifications(&mut rng, w, h, px, py, &mut field),
                _ => mass(
                    &mut rng,
                    w,
                    h,
                    px,
                    py,
                    kind == LesionKind::SpiculatedMass,
                    &mut field,
                ),
            };
            if let Some(l) = lesion {
                lesions.push(l);
            }
        }
    }
    let image = Gray8 {
        width: w,
        height: h,
        pixels: field
            .iter()
            .zip(&inside)
            .map(|(&v, &r)| {
                if r >= 1.0 && v == 0.0 {
                    0
                } else {
                    v.round().clamp(0.0, 255.0) as u8
                }
            })
            .collect(),
    };
    let mut mask = Gray8::new(w, h);
    for l in &lesions {
        for (m, &v) in mask.pixels.iter_mut().zip(&l.mask.pixels) {
            *m |= v;
        }
    }
    Phantom {
        image,
        mask,
        lesions,
        right,
    }
}

fn finish_lesion(kind: LesionKind, mask: Gray8) -> Option<Lesion> {
    let bbox = mask.nonzero_bbox()?;
    Some(Lesion { kind, bbox, mask })
}

fn mass(
    rng: &mut ChaCha8Rng,
    w: usize,
    h: usize,
    px: f64,
    py: f64,
    spiculated: bool,
    field: &mut [f32],
) -> Option<Lesion> {
    // At least 4 px so that tiny phantoms (64x64) still show a clear lesion.
    let r0 = (w.min(h) as f64 * rng.random_range(0.045..0.09)).max(4.0);
    let harmonics: Vec<(f64, f64, f64)> = (2..5)
        .map(|k| {
            (
                k as f64,
                rng.random_range(0.0..0.12),
                rng.random_range(0.0..2.0 * PI),
            )
        })
        .collect();
    let radius = |t: f64| {
        r0 * (1.0
            + harmonics
                .iter()
                .map(|(k, a, p)| a * (k * t + p).cos())
                .sum::<f64>())
    };
    let contrast = rng.random_range(55.0..85.0f32);
    let mut mask = Gray8::new(w, h);
    let reach = r0 * 2.6;
    let (x0, x1) = (
        (px - reach).max(0.0) as usize,
        ((px + reach).ceil() as usize).min(w),
    );
    let (y0, y1) = (
        (py - reach).max(0.0) as usize,
        ((py + reach).ceil() as usize).min(h),
    );
    for y in y0..y1 {
        for x in x0..x1 {
            let (dx, dy) = (x as f64 - px, y as f64 - py);
            let d = (dx * dx + dy * dy).sqrt();
            let rt = radius(dy.atan2(dx));
            if d <= rt {
                let q = (d / rt) as f32;
                field[y * w + x] += contrast * (1.0 - 0.35 * q * q);
                mask.pixels[y * w + x] = 1;
            }
        }
    }
    if spiculated {
        let n = rng.random_range(7..14);
        for _ in 0..n {
            let t = rng.random_range(0.0..2.0 * PI);
            let len = r0 * rng.random_range(0.6..1.4);
            let start = radius(t) * 0.9;
            let steps = ((len * 2.0).ceil() as usize).max(1);
            for s in 0..=steps {
                let d = start + len * s as f64 / steps as f64;
                let (x, y) = ((px + d * t.cos()).round(), (py + d * t.sin()).round());
                if x < 0.0 || y < 0.0 || x >= w as f64 || y >= h as f64 {
                    break;
                }
                let i = y as usize * w + x as usize;
                if mask.pixels[i] == 0 {
                    field[i] += contrast * 0.6 * (1.0 - s as f32 / (steps as f32 + 1.0));
                    mask.pixels[i] = 1;
                }
            }
        }
    }
    let kind = if spiculated {
        LesionKind::SpiculatedMass
    } else {
        LesionKind::Mass
    };
    finish_lesion(kind, mask)
}

fn calcifications(
    rng: &mut ChaCha8Rng,
    w: usize,
    h: usize,
    px: f64,
    py: f64,
    field: &mut [f32],
) -> Option<Lesion> {
    let spread = (w.min(h) as f64 * rng.random_range(0.02..0.05)).max(3.0);
    let n = rng.random_range(4..15);
    let mut mask = Gray8::new(w, h);
    for _ in 0..n {
        let (sx, sy) = (
            px + rng.random_range(-spread..spread),
            py + rng.random_range(-spread..spread),
        );
        let r = rng.random_range(0.6..1.6f64);
        let ri = r.ceil() as i64;
        for dy in -ri..=ri {
            for dx in -ri..=ri {
                let (x, y) = (sx.round() as i64 + dx, sy.round() as i64 + dy);
                if x < 0
                    || y < 0
                    || x >= w as i64
                    || y >= h as i64
                    || ((dx * dx + dy * dy) as f64) > r * r
                {
                    continue;
                }
                let i = y as usize * w + x as usize;
                if mask.pixels[i] == 0 {
                    field[i] = field[i].max(0.0) + 130.0;
                    mask.pixels[i] = 1;
                }
            }
        }
    }
    finish_lesion(LesionKind::Calcifications, mask)
}

/// `engine synth --layout combined`: `n` phantoms in the prepared format, split by
/// "patient" (two phantoms per patient, like left/right films).
pub fn write_combined_set(
    out: &Path,
    n: usize,
    opt: &SynthOptions,
    seed: u64,
) -> Result<SetWriter, DataError> {
    let patients: Vec<String> = (0..n).map(|i| format!("S{:04}", i / 2 + 1)).collect();
    let split = split_patients(&patients, Holdout::Fraction(0.15), 0.15, seed);
    let crop_px = 1280.min(opt.width.min(opt.height) / 2).max(16);
    let mut w = SetWriter::new(out, "synth", crop_px as f64 * SPACING_MM)?;
    for (i, patient) in patients.iter().enumerate() {
        let p = phantom(opt, mix_seed(seed, i as u64));
        let name = format!("synth{:04}", i + 1);
        let mut mask = p.mask.clone();
        mask.pixels.iter_mut().for_each(|v| *v *= 255);
        w.add(Prepared {
            name: &name,
            split: &split[patient],
            patient,
            source: format!("synth seed {seed} index {i}"),
            scan: p.image,
            mask,
            rois: p.lesions.iter().map(|l| l.bbox).collect(),
            abnormal: !p.lesions.is_empty(),
            mask_complete: true,
            classes: p.lesions.iter().map(|l| format!("{:?}", l.kind)).collect(),
            trim: false,
            spacing_mm: SPACING_MM,
            lesion_boxes: None,
        })?;
    }
    w.finish()?;
    Ok(w)
}

// ---- CBIS-DDSM-like layout -------------------------------------------------

const MASS_HEADER: [&str; 14] = [
    "patient_id",
    "breast_density",
    "left or right breast",
    "image view",
    "abnormality id",
    "abnormality type",
    "mass shape",
    "mass margins",
    "assessment",
    "pathology",
    "subtlety",
    "image file path",
    "cropped image file path",
    "ROI mask file path",
];
// The calc files spell one column differently ("breast density"), as the real ones do.
const CALC_HEADER: [&str; 14] = [
    "patient_id",
    "breast density",
    "left or right breast",
    "image view",
    "abnormality id",
    "abnormality type",
    "calc type",
    "calc distribution",
    "assessment",
    "pathology",
    "subtlety",
    "image file path",
    "cropped image file path",
    "ROI mask file path",
];

fn uid(rng: &mut ChaCha8Rng) -> String {
    format!(
        "1.3.6.1.4.1.9590.100.1.2.{}{}",
        rng.random_range(100_000_000u64..999_999_999),
        rng.random_range(100_000_000u64..999_999_999)
    )
}

/// Write a single-frame greyscale DICOM (Explicit VR Little Endian, uncompressed).
/// 16-bit when `sixteen` (values scaled by 257 from 8 bits, as a 16-bit scanner
/// would span the range), else 8-bit.
pub fn write_dicom(
    path: &Path,
    g: &Gray8,
    sixteen: bool,
    sop_uid: &str,
    description: &str,
) -> Result<(), DataError> {
    let el = |group, elem, vr, v: PrimitiveValue| DataElement::new(Tag(group, elem), vr, v);
    let bits: u16 = if sixteen { 16 } else { 8 };
    let data: Vec<u8> = if sixteen {
        g.pixels
            .iter()
            .flat_map(|&v| (v as u16 * 257).to_le_bytes())
            .collect()
    } else {
        g.pixels.clone()
    };
    let obj = InMemDicomObject::from_element_iter([
        el(
            0x0008,
            0x0016,
            VR::UI,
            PrimitiveValue::from("1.2.840.10008.5.1.4.1.1.7"),
        ),
        el(0x0008, 0x0018, VR::UI, PrimitiveValue::from(sop_uid)),
        el(0x0008, 0x0060, VR::CS, PrimitiveValue::from("MG")),
        el(0x0008, 0x103E, VR::LO, PrimitiveValue::from(description)),
        el(0x0028, 0x0002, VR::US, PrimitiveValue::from(1u16)),
        el(0x0028, 0x0004, VR::CS, PrimitiveValue::from("MONOCHROME2")),
        el(
            0x0028,
            0x0010,
            VR::US,
            PrimitiveValue::from(g.height as u16),
        ),
        el(0x0028, 0x0011, VR::US, PrimitiveValue::from(g.width as u16)),
        el(0x0028, 0x0100, VR::US, PrimitiveValue::from(bits)),
        el(0x0028, 0x0101, VR::US, PrimitiveValue::from(bits)),
        el(0x0028, 0x0102, VR::US, PrimitiveValue::from(bits - 1)),
        el(0x0028, 0x0103, VR::US, PrimitiveValue::from(0u16)),
        el(
            0x7FE0,
            0x0010,
            if sixteen { VR::OW } else { VR::OB },
            PrimitiveValue::from(data),
        ),
    ]);
    let file = obj
        .with_meta(FileMetaTableBuilder::new().transfer_syntax("1.2.840.10008.1.2.1"))
        .map_err(|e| DataError::invalid(path, format!("cannot build DICOM meta: {e}")))?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| DataError::write(dir, e))?;
    }
    file.write_to_file(path)
        .map_err(|e| DataError::write(path, e))
}

/// `engine synth --layout cbis`: a CBIS-DDSM-like tree under `out`:
/// `out/CBIS-DDSM/<Type>-<Training|Test>_P_NNNNN_<SIDE>_<VIEW>[_K]/<uid>/<uid>/00000K.dcm`
/// and the four case-description CSVs, with every phantom abnormal (CBIS has only
/// abnormal cases). Returns the number of scans and of abnormality rows.
pub fn write_cbis_tree(
    out: &Path,
    n: usize,
    opt: &SynthOptions,
    seed: u64,
) -> Result<(usize, usize), DataError> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let opt = SynthOptions {
        lesion_probability: 1.0,
        ..opt.clone()
    };
    let mut rows: Vec<(bool, bool, Vec<String>)> = Vec::new(); // (is_mass, is_train, row)
    let root = out.join("CBIS-DDSM");
    for i in 0..n {
        let p = phantom(&opt, mix_seed(seed, i as u64));
        // Two views per patient.
        let patient = format!("P_{:05}", i / 2 + 1);
        let view = if i % 2 == 0 { "CC" } else { "MLO" };
        let side = if p.right { "RIGHT" } else { "LEFT" };
        let train = (i / 2) % 5 != 4; // every fifth patient is a test case
        let split = if train { "Training" } else { "Test" };
        // CBIS names the folder after the abnormality type; a scan with a mass and
        // calcifications appears under both (the same scan in two folders).
        let mut written: Vec<(bool, String)> = Vec::new();
        for (k, l) in p.lesions.iter().enumerate() {
            let is_mass = l.kind != LesionKind::Calcifications;
            let ty = if is_mass { "Mass" } else { "Calc" };
            let case = format!("{ty}-{split}_{patient}_{side}_{view}");
            let full_rel = match written.iter().find(|(m, _)| *m == is_mass) {
                Some((_, rel)) => rel.clone(),
                None => {
                    let rel = format!("{case}/{}/{}/000000.dcm", uid(&mut rng), uid(&mut rng));
                    write_dicom(
                        &root.join(&rel),
                        &p.image,
                        true,
                        &uid(&mut rng),
                        "full mammogram images",
                    )?;
                    written.push((is_mass, rel.clone()));
                    rel
                }
            };
            let roi_case = format!("{case}_{}", k + 1);
            let study = uid(&mut rng);
            let mask_rel = format!("{roi_case}/{study}/{}/000000.dcm", uid(&mut rng));
            let crop_rel = format!("{roi_case}/{study}/{}/000001.dcm", uid(&mut rng));
            let mut m = l.mask.clone();
            m.pixels.iter_mut().for_each(|v| *v *= 255);
            write_dicom(
                &root.join(&mask_rel),
                &m,
                false,
                &uid(&mut rng),
                "ROI mask images",
            )?;
            let (x0, y0, x1, y1) = l.bbox;
            write_dicom(
                &root.join(&crop_rel),
                &p.image.crop(x0, y0, x1 - x0, y1 - y0),
                true,
                &uid(&mut rng),
                "cropped images",
            )?;
            let pathology = if rng.random_bool(0.4) {
                "MALIGNANT"
            } else {
                "BENIGN"
            };
            let (shape_or_type, margins_or_dist) = match l.kind {
                LesionKind::Mass => ("OVAL", "CIRCUMSCRIBED"),
                LesionKind::SpiculatedMass => ("IRREGULAR", "SPICULATED"),
                LesionKind::Calcifications => ("PLEOMORPHIC", "CLUSTERED"),
            };
            rows.push((
                is_mass,
                train,
                vec![
                    patient.clone(),
                    rng.random_range(1..5).to_string(),
                    side.into(),
                    view.into(),
                    (k + 1).to_string(),
                    if is_mass { "mass" } else { "calcification" }.into(),
                    shape_or_type.into(),
                    margins_or_dist.into(),
                    rng.random_range(2..6).to_string(),
                    pathology.into(),
                    rng.random_range(1..6).to_string(),
                    full_rel,
                    crop_rel,
                    // Real CBIS cells hold quoted paths ending in a newline.
                    format!("{mask_rel}\n"),
                ],
            ));
        }
    }
    let n_rows = rows.len();
    for (is_mass, train) in [(true, true), (true, false), (false, true), (false, false)] {
        let name = format!(
            "{}_case_description_{}_set.csv",
            if is_mass { "mass" } else { "calc" },
            if train { "train" } else { "test" }
        );
        let path = out.join(name);
        let mut wr = csv::Writer::from_path(&path).map_err(|e| DataError::write(&path, e))?;
        let header = if is_mass { MASS_HEADER } else { CALC_HEADER };
        wr.write_record(header)
            .map_err(|e| DataError::write(&path, e))?;
        for (_, _, r) in rows.iter().filter(|(m, t, _)| *m == is_mass && *t == train) {
            wr.write_record(r).map_err(|e| DataError::write(&path, e))?;
        }
        wr.flush().map_err(|e| DataError::write(&path, e))?;
    }
    Ok((n, n_rows))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phantoms_are_seeded_and_masks_match_lesions() {
        let a = generate(6, 64, 7);
        let b = generate(6, 64, 7);
        let c = generate(6, 64, 8);
        assert_eq!(
            a.iter().map(|p| &p.image).collect::<Vec<_>>(),
            b.iter().map(|p| &p.image).collect::<Vec<_>>()
        );
        assert_ne!(a[0].image, c[0].image);
        for p in &a {
            assert_eq!(p.mask.count_nonzero() > 0, !p.lesions.is_empty());
            // Every lesion pixel is brighter than the black background.
            for (i, &m) in p.mask.pixels.iter().enumerate() {
                if m == 1 {
                    assert!(p.image.pixels[i] > 20, "lesion pixel {i} too dark");
                }
            }
        }
    }

    #[test]
    fn lesions_are_brighter_than_surroundings() {
        let opt = SynthOptions {
            lesion_probability: 1.0,
            ..SynthOptions::square(128)
        };
        let mut brighter = 0;
        for i in 0..20 {
            let p = phantom(&opt, mix_seed(1, i));
            let (mut ins, mut n_in) = (0f64, 0usize);
            for (k, &m) in p.mask.pixels.iter().enumerate() {
                if m == 1 {
                    ins += p.image.pixels[k] as f64;
                    n_in += 1;
                }
            }
            // Mean over the breast (non-black) outside lesions.
            let (mut out, mut n_out) = (0f64, 0usize);
            for (k, &m) in p.mask.pixels.iter().enumerate() {
                if m == 0 && p.image.pixels[k] > 0 {
                    out += p.image.pixels[k] as f64;
                    n_out += 1;
                }
            }
            if ins / n_in as f64 > out / n_out as f64 + 20.0 {
                brighter += 1;
            }
        }
        assert_eq!(brighter, 20);
    }
}
