//! CBIS-DDSM: the official case-description CSVs and `engine prepare cbis`.
//!
//! The CSVs (mass and calc, train and test) name their columns slightly
//! differently (`breast_density` / `breast density`, ...): columns are matched
//! after lower-casing and turning `_` into spaces. Path cells may be quoted and
//! end in a newline; they are trimmed.
//!
//! Paths: a CSV path is tried as is under the DICOM root. The TCIA download names
//! its folders differently below the case folder (dates and series names instead
//! of UIDs), so when the exact file is missing the case folder (the path's first
//! component, e.g. `Mass-Training_P_00001_LEFT_CC_1`) is searched: for a scan,
//! its single DICOM (or the one whose series is "full mammogram images"); for a
//! mask, the DICOM whose size equals the scan's (CBIS puts the ROI mask and the
//! small cropped image side by side, and some rows point at the wrong one).
//! A mask whose size matches no candidate is reported and left out; the scan is
//! then kept for image-level evaluation only (`mask_complete: false`).
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressStyle};

use super::dicom::{dicom_size, read_dicom, read_dicom_with_info, series_description};
use super::prepared::{Holdout, Prepared, SetWriter, split_patients};
use super::{DataError, Gray8};

/// One abnormality row of a case-description CSV.
#[derive(Debug, Clone, PartialEq)]
pub struct CbisRow {
    pub csv: PathBuf,
    pub patient: String,
    pub side: String,
    pub view: String,
    pub abnormality_id: String,
    /// `mass` or `calcification`.
    pub kind: String,
    pub pathology: String,
    /// Official split of the CSV: true for the training files.
    pub train: bool,
    pub image_path: String,
    pub mask_path: String,
}

fn norm(h: &str) -> String {
    h.trim().to_lowercase().replace('_', " ")
}

/// Read one case-description CSV.
pub fn read_csv(path: &Path) -> Result<Vec<CbisRow>, DataError> {
    let mut rd = csv::ReaderBuilder::new()
        .flexible(true)
        .from_path(path)
        .map_err(|e| DataError::invalid(path, format!("cannot read CSV: {e}")))?;
    let headers: Vec<String> = rd
        .headers()
        .map_err(|e| DataError::invalid(path, format!("cannot read CSV header: {e}")))?
        .iter()
        .map(norm)
        .collect();
    let col = |name: &str| -> Result<usize, DataError> {
        headers.iter().position(|h| h == name).ok_or_else(|| {
            DataError::invalid(
                path,
                format!("no column {name:?} (columns: {})", headers.join(", ")),
            )
        })
    };
    let c_patient = col("patient id")?;
    let c_side = col("left or right breast")?;
    let c_view = col("image view")?;
    let c_id = col("abnormality id")?;
    let c_kind = col("abnormality type")?;
    let c_path = col("pathology")?;
    let c_image = col("image file path")?;
    let c_mask = col("roi mask file path")?;
    let fname = path
        .file_name()
        .and_then(|f| f.to_str())
        .unwrap_or("")
        .to_lowercase();
    let mut rows = Vec::new();
    for (i, rec) in rd.records().enumerate() {
        let rec = rec.map_err(|e| DataError::invalid(path, format!("record {}: {e}", i + 1)))?;
        let get = |c: usize| rec.get(c).unwrap_or("").trim().to_string();
        let image_path = get(c_image).replace('\\', "/");
        // The split: from the file name, else from the path's case folder.
        let train = if fname.contains("train") {
            true
        } else if fname.contains("test") {
            false
        } else {
            image_path.contains("Training")
        };
        rows.push(CbisRow {
            csv: path.to_path_buf(),
            patient: get(c_patient),
            side: get(c_side),
            view: get(c_view),
            abnormality_id: get(c_id),
            kind: get(c_kind).to_lowercase(),
            pathology: get(c_path),
            train,
            image_path,
            mask_path: get(c_mask).replace('\\', "/"),
        });
    }
    Ok(rows)
}

fn dicoms_under(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            dicoms_under(&p, out);
        } else if p
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| e.eq_ignore_ascii_case("dcm"))
        {
            out.push(p);
        }
    }
}

/// The case folder's DICOM files, the exact path first when it exists.
fn candidates(root: &Path, rel: &str) -> Vec<PathBuf> {
    let mut v = Vec::new();
    let exact = root.join(rel);
    if exact.is_file() {
        v.push(exact.clone());
    }
    if let Some(first) = rel.split('/').next().filter(|f| !f.is_empty()) {
        let mut found = Vec::new();
        dicoms_under(&root.join(first), &mut found);
        v.extend(found.into_iter().filter(|p| *p != exact));
    }
    v
}

fn resolve_scan(root: &Path, rel: &str) -> Result<PathBuf, String> {
    let c = candidates(root, rel);
    if root.join(rel).is_file() {
        return Ok(root.join(rel));
    }
    match c.len() {
        0 => Err(format!("scan {rel:?} not found under {}", root.display())),
        1 => Ok(c[0].clone()),
        _ => c
            .iter()
            .find(|p| {
                series_description(p).is_some_and(|d| d.to_lowercase().contains("full mammogram"))
            })
            .cloned()
            .ok_or_else(|| {
                format!(
                    "scan {rel:?}: {} DICOM files in its case folder, none marked full mammogram",
                    c.len()
                )
            }),
    }
}

fn resolve_mask(root: &Path, rel: &str, size: (usize, usize)) -> Result<PathBuf, String> {
    let c = candidates(root, rel);
    if c.is_empty() {
        return Err(format!(
            "ROI mask {rel:?} not found under {}",
            root.display()
        ));
    }
    let mut seen = Vec::new();
    for p in &c {
        match dicom_size(p) {
            Ok(s) if s == size => return Ok(p.clone()),
            Ok(s) => seen.push(format!("{} is {}x{}", p.display(), s.0, s.1)),
            Err(e) => seen.push(e.to_string()),
        }
    }
    Err(format!(
        "ROI mask {rel:?} does not match its scan's size {}x{} ({}); not resized",
        size.0,
        size.1,
        seen.join("; ")
    ))
}

#[derive(Debug, Clone)]
pub struct CbisOptions {
    pub csv: Vec<PathBuf>,
    pub dicom_root: Option<PathBuf>,
    pub val: Holdout,
    pub seed: u64,
    /// Minimum side of ROI crops in millimetres.
    pub crop_mm: f64,
    /// Pixel spacing for scans whose header has none (instead of
    /// [`SPACING_MM`]); a header's own spacing always wins.
    pub spacing_mm: Option<f64>,
}

/// CBIS-DDSM's DICOM files carry no PixelSpacing: they are DDSM film scans,
/// digitised at 42 um (DBA), 43.5 um (Howtek) or 50 um (Lumisys) according
/// to the DDSM documentation. 50 um is the nominal value used when the scanner
/// is not known; the others differ from it by at most 16%, within the
/// training's scale augmentation.
pub const SPACING_MM: f64 = 0.05;

/// The CSVs of a CBIS-DDSM download: `INPUT/*case_description*.csv`.
pub fn find_csvs(input: &Path) -> Result<Vec<PathBuf>, DataError> {
    let rd = std::fs::read_dir(input).map_err(|e| DataError::io(input, e))?;
    let mut v: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let n = p
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("")
                .to_lowercase();
            n.ends_with(".csv") && n.contains("case_description")
        })
        .collect();
    v.sort();
    if v.is_empty() {
        return Err(DataError::invalid(
            input,
            "no *case_description*.csv files here (use --csv)",
        ));
    }
    Ok(v)
}

/// `engine prepare cbis`.
pub fn prepare(input: &Path, out: &Path, opt: &CbisOptions) -> Result<SetWriter, DataError> {
    let csvs = if opt.csv.is_empty() {
        find_csvs(input)?
    } else {
        opt.csv.clone()
    };
    let root = match &opt.dicom_root {
        Some(r) => r.clone(),
        None if input.join("CBIS-DDSM").is_dir() => input.join("CBIS-DDSM"),
        None => input.to_path_buf(),
    };
    let mut w = SetWriter::new(out, "cbis", opt.crop_mm)?;
    let mut rows = Vec::new();
    for c in &csvs {
        match read_csv(c) {
            Ok(r) => rows.extend(r),
            Err(e) => w.skip(c.display().to_string(), e.to_string()),
        }
    }
    // One scan per (patient, side, view): a scan with masses and calcifications is
    // listed in both CSVs, under two folder names.
    let mut scans: BTreeMap<String, Vec<CbisRow>> = BTreeMap::new();
    for r in rows {
        scans
            .entry(format!("{}_{}_{}", r.patient, r.side, r.view))
            .or_default()
            .push(r);
    }
    // Patients: test if any of their rows is in a test CSV (so no patient is in two
    // splits), else train/val by a seeded patient split.
    let mut test_patients = BTreeSet::new();
    let mut all_patients = BTreeSet::new();
    for rs in scans.values() {
        for r in rs {
            all_patients.insert(r.patient.clone());
            if !r.train {
                test_patients.insert(r.patient.clone());
            }
        }
    }
    let train_patients: Vec<String> = all_patients.difference(&test_patients).cloned().collect();
    let mut split = split_patients(&train_patients, opt.val, 0.0, opt.seed);
    for p in &test_patients {
        split.insert(p.clone(), "test".into());
    }
    let bar = ProgressBar::new(scans.len() as u64).with_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} {elapsed} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    for (name, rs) in &scans {
        bar.inc(1);
        bar.set_message(name.clone());
        let scan_path = match resolve_scan(&root, &rs[0].image_path) {
            Ok(p) => p,
            Err(e) => {
                w.skip(name.clone(), e);
                continue;
            }
        };
        let (scan, spacing) = match read_dicom_with_info(&scan_path) {
            Ok((g, info)) => (
                g,
                info.pixel_spacing_mm
                    .or(opt.spacing_mm)
                    .unwrap_or(SPACING_MM),
            ),
            Err(e) => {
                w.skip(name.clone(), e.to_string());
                continue;
            }
        };
        let mut mask = Gray8::new(scan.width, scan.height);
        let mut rois = Vec::new();
        let mut complete = true;
        for r in rs {
            let one = resolve_mask(&root, &r.mask_path, (scan.width, scan.height))
                .and_then(|p| read_dicom(&p).map_err(|e| e.to_string()));
            match one {
                Ok(m) => {
                    let mut any = false;
                    for (u, &v) in mask.pixels.iter_mut().zip(&m.pixels) {
                        // ROI masks are 0/255; anything above mid-grey is lesion.
                        if v >= 128 {
                            *u = 255;
                            any = true;
                        }
                    }
                    let single = Gray8 {
                        width: m.width,
                        height: m.height,
                        pixels: m.pixels.iter().map(|&v| (v >= 128) as u8).collect(),
                    };
                    match single.nonzero_bbox() {
                        Some(b) if any => rois.push(b),
                        _ => {
                            complete = false;
                            w.skip(
                                format!("{name} abnormality {}", r.abnormality_id),
                                "ROI mask is empty",
                            );
                        }
                    }
                }
                Err(e) => {
                    complete = false;
                    w.skip(format!("{name} abnormality {}", r.abnormality_id), e);
                }
            }
        }
        let patient = &rs[0].patient;
        let mut classes: Vec<String> = rs.iter().map(|r| r.kind.clone()).collect();
        classes.sort();
        classes.dedup();
        let rel = scan_path
            .strip_prefix(&root)
            .unwrap_or(&scan_path)
            .display()
            .to_string();
        if let Err(e) = w.add(Prepared {
            name,
            split: &split[patient],
            patient,
            source: rel,
            scan,
            mask,
            rois,
            abnormal: true,
            mask_complete: complete,
            classes,
            trim: true,
            spacing_mm: spacing,
            lesion_boxes: None,
        }) {
            w.skip(name.clone(), e.to_string());
        }
    }
    bar.finish_and_clear();
    w.finish()?;
    Ok(w)
}
