//! `engine infer` over files and folders: input discovery (recursive,
//! `--glob`), output names that mirror each input's path relative to the
//! folder it came from and never collide, `--shard I/N`, `--skip-existing`,
//! and `results.csv` / `results.json` with one row per input.
//!
//! Exit codes ([`crate::error::exit_code`] and [`BatchReport::exit_code`]):
//! 0 every input done; 2 bad input (an unreadable `--out`, a missing
//! checkpoint, no inputs, or any input that could not be read); 1 an
//! internal error (GPU, inference, writing) on any input. Per-file failures
//! never stop the other inputs.
use crate::data::read::is_dicom;
use crate::error::bad;
use crate::eval::metrics::{self, ImageScore};
use crate::infer::{TileOptions, output_path};
use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

/// File extensions picked up in folders (case-insensitive). Files without
/// an extension are picked up when they are DICOM (the "DICM" marker).
pub const EXTENSIONS: &[&str] = &["dcm", "dicom", "png", "pgm", "pnm", "jpg", "jpeg"];

/// One input and where its outputs go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Input {
    /// Position of this input's row in the unsharded results: command-line
    /// arguments that do not exist come first, then the inputs in order.
    pub index: usize,
    pub path: PathBuf,
    /// Output stem relative to `--out`: the input's path relative to the
    /// folder it came from (its own folder for a file named on the command
    /// line), without the extension; `-2`, `-3`, ... appended when an
    /// earlier input already has that stem.
    pub stem: PathBuf,
}

/// `*` (within one path component), `**` (any number of components), `?`.
/// A pattern without `/` is matched against the file name only; one with
/// `/` against the path relative to the folder searched.
pub fn glob_match(pattern: &str, rel_path: &str) -> bool {
    let text = if pattern.contains('/') {
        rel_path
    } else {
        rel_path.rsplit('/').next().unwrap_or(rel_path)
    };
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    glob_chars(&p, &t)
}

fn glob_chars(p: &[char], t: &[char]) -> bool {
    match p.first() {
        None => t.is_empty(),
        Some('*') if p.get(1) == Some(&'*') => {
            let rest = &p[2..];
            if rest.first() == Some(&'/') && glob_chars(&rest[1..], t) {
                return true;
            }
            (0..=t.len()).any(|i| glob_chars(rest, &t[i..]))
        }
        Some('*') => {
            for i in 0..=t.len() {
                if i > 0 && t[i - 1] == '/' {
                    break;
                }
                if glob_chars(&p[1..], &t[i..]) {
                    return true;
                }
            }
            false
        }
        Some('?') => !t.is_empty() && t[0] != '/' && glob_chars(&p[1..], &t[1..]),
        Some(&c) => !t.is_empty() && t[0] == c && glob_chars(&p[1..], &t[1..]),
    }
}

fn has_image_extension(path: &Path) -> bool {
    match path.extension().and_then(|e| e.to_str()) {
        Some(e) => EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e)),
        None => matches!(
            crate::data::read::detect_format(path),
            Ok(crate::data::read::Format::Dicom)
        ),
    }
}

/// Files under `dir`, recursively, sorted by path; hidden entries and
/// anything under `exclude` (the output folder) are left out. Linked
/// folders are followed, each real folder once (no cycles).
fn walk(dir: &Path, exclude: Option<&Path>, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    walk_once(dir, exclude, out, &mut HashSet::new())
}

fn walk_once(
    dir: &Path,
    exclude: Option<&Path>,
    out: &mut Vec<PathBuf>,
    seen: &mut HashSet<PathBuf>,
) -> anyhow::Result<()> {
    if !seen.insert(dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf())) {
        return Ok(());
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading folder {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            !p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with('.'))
        })
        .collect();
    entries.sort();
    for p in entries {
        if let Some(ex) = exclude
            && p.canonicalize().is_ok_and(|c| c.starts_with(ex))
        {
            continue;
        }
        if p.is_dir() {
            walk_once(&p, exclude, out, seen)?;
        } else if p.is_file() {
            out.push(p);
        }
    }
    Ok(())
}

fn slash_path(p: &Path) -> String {
    p.components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join("/")
}

/// Command-line arguments that are neither files nor folders, with the reason.
pub type Missing = Vec<(PathBuf, String)>;

/// The inputs of `args` (files and folders) in a deterministic order:
/// arguments in order, each folder's files sorted by path. `glob` filters
/// the files found in folders (files named on the command line are always
/// taken). Missing arguments come back as failures (path, reason). The same
/// file reached twice is taken once.
pub fn collect_inputs(
    args: &[PathBuf],
    glob: Option<&str>,
    exclude: Option<&Path>,
) -> anyhow::Result<(Vec<Input>, Missing)> {
    let exclude = exclude.and_then(|e| e.canonicalize().ok());
    let mut found: Vec<(PathBuf, PathBuf)> = Vec::new();
    let mut missing = Vec::new();
    for arg in args {
        if arg.is_dir() {
            let mut files = Vec::new();
            walk(arg, exclude.as_deref(), &mut files)?;
            for f in files {
                let rel = f.strip_prefix(arg).unwrap_or(&f).to_path_buf();
                if glob.is_some_and(|g| !glob_match(g, &slash_path(&rel))) {
                    continue;
                }
                if has_image_extension(&f) {
                    found.push((f, rel));
                }
            }
        } else if arg.is_file() {
            let name = arg.file_name().map(PathBuf::from).unwrap_or_default();
            found.push((arg.clone(), name));
        } else {
            missing.push((arg.clone(), "no such file or folder".to_string()));
        }
    }
    let mut seen = HashSet::new();
    let mut stems: HashMap<PathBuf, usize> = HashMap::new();
    let mut inputs = Vec::new();
    for (path, rel) in found {
        let key = path.canonicalize().unwrap_or_else(|_| path.clone());
        if !seen.insert(key) {
            continue;
        }
        let base = rel.with_extension("");
        let mut stem = base.clone();
        let mut k = 1;
        while stems.contains_key(&stem) {
            k += 1;
            let mut s = base.as_os_str().to_owned();
            s.push(format!("-{k}"));
            stem = PathBuf::from(s);
        }
        stems.insert(stem.clone(), inputs.len());
        inputs.push(Input {
            index: missing.len() + inputs.len(),
            path,
            stem,
        });
    }
    Ok((inputs, missing))
}

/// Status of a row.
pub const OK: &str = "ok";
pub const BAD_INPUT: &str = "bad input";
pub const ERROR: &str = "error";

/// One row of `results.csv`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Row {
    /// Position in the unsharded results (shards merge back by it).
    pub index: usize,
    /// The input path as given or found.
    pub file: String,
    /// Output stem relative to `--out` (outputs are `OUTPUT_prob.png`, ...).
    pub output: String,
    /// ok, bad input or error.
    pub status: String,
    pub width: Option<usize>,
    pub height: Option<usize>,
    pub max_probability: Option<f32>,
    /// Pixels with p > threshold.
    pub pixels_above_threshold: Option<u64>,
    /// `engine eval`'s image score (`--image-score`).
    pub image_score: Option<f64>,
    /// `engine eval`'s image-level decision: 1 when more than H*W/750
    /// pixels exceed the threshold.
    pub image_predicted: Option<u8>,
    /// Millimetres per pixel the input was taken to have (empty for a
    /// checkpoint that records no spacing: run at the input's pixels).
    #[serde(default)]
    pub pixel_spacing_mm: Option<f64>,
    /// Where that spacing came from: file, flag or assumed.
    #[serde(default)]
    pub spacing_source: String,
    /// Candidate lesions found (listed in `OUTPUT_candidates.json`,
    /// candidates.csv and detections.json).
    #[serde(default)]
    pub candidates: Option<usize>,
    /// The highest candidate's score.
    #[serde(default)]
    pub top_candidate_score: Option<f32>,
    /// Wall time of this input (read, network, writing).
    pub seconds: f64,
    /// The reason of a failure ("" when ok).
    pub error: String,
}

impl Row {
    fn failed(input: &Input, status: &str, err: &anyhow::Error, seconds: f64) -> Row {
        Row {
            index: input.index,
            file: input.path.display().to_string(),
            output: slash_path(&input.stem),
            status: status.into(),
            width: None,
            height: None,
            max_probability: None,
            pixels_above_threshold: None,
            image_score: None,
            image_predicted: None,
            pixel_spacing_mm: None,
            spacing_source: String::new(),
            candidates: None,
            top_candidate_score: None,
            seconds,
            // The row names the file: the reason alone.
            error: crate::error::without_path(err, &input.path),
        }
    }
}

/// Settings of a batch.
#[derive(Clone, Debug)]
pub struct BatchOptions {
    pub threshold: f32,
    pub image_score: ImageScore,
    pub tiles: TileOptions,
    pub npy: bool,
    /// Write DICOM results (Segmentation, Parametric Map) for DICOM inputs.
    pub dicom: crate::dicom_out::DicomKinds,
    /// Describes the model in DICOM results (e.g. the checkpoint's name).
    pub model_name: String,
    /// `--pixel-spacing`: for inputs whose file declares none.
    pub pixel_spacing: Option<f64>,
    /// How candidate lesions are read off the maps.
    pub candidates: crate::lesions::CandidateOptions,
}

impl BatchOptions {
    /// What the DICOM results of an input need.
    pub fn dicom_options(&self) -> crate::dicom_out::DicomOptions {
        crate::dicom_out::DicomOptions {
            kinds: self.dicom,
            threshold: self.threshold,
            model_name: self.model_name.clone(),
        }
    }
}

/// The files an input's row promises (for `--skip-existing`).
pub fn expected_outputs(out: &Path, input: &Input, opts: &BatchOptions) -> Vec<PathBuf> {
    let stem = out.join(&input.stem);
    let mut v = vec![
        output_path(&stem, "prob.png"),
        output_path(&stem, "mask.png"),
        output_path(&stem, "overlay.png"),
        output_path(&stem, CANDIDATES_SUFFIX),
    ];
    if opts.npy {
        v.push(output_path(&stem, "prob.npy"));
    }
    if opts.dicom.any() && is_dicom(&input.path) {
        v.extend(opts.dicom.suffixes().iter().map(|x| output_path(&stem, x)));
    }
    v
}

/// Runs one input and writes its outputs under `out`.
pub fn run_one(
    gpu: &crate::Gpu,
    predictor: &crate::predictor::Predictor,
    input: &Input,
    out: &Path,
    opts: &BatchOptions,
) -> Row {
    let started = std::time::Instant::now();
    let (scan, declared) = match crate::infer::read_scan_with_spacing(&input.path) {
        Ok(s) => s,
        Err(e) => return Row::failed(input, BAD_INPUT, &e, started.elapsed().as_secs_f64()),
    };
    let spacing = predictor.input_spacing(declared, opts.pixel_spacing);
    let result = (|| -> anyhow::Result<Row> {
        let prob = crate::infer::predictor_map(
            gpu,
            predictor,
            &scan,
            (declared, opts.pixel_spacing),
            &opts.tiles,
        )
        .with_context(|| format!("inference on {}x{}", scan.width, scan.height))?;
        let stem = out.join(&input.stem);
        // Without any spacing the candidates' distance is in pixels.
        let mm = spacing.map(|s| s.input_mm).unwrap_or(1.0);
        let found =
            crate::lesions::candidates(&prob, scan.width, scan.height, mm, &opts.candidates);
        let o = crate::infer::write_outputs(&stem, &scan, &prob, opts.threshold, opts.npy, &found)?;
        let sidecar = ScanCandidates {
            file: input.path.display().to_string(),
            width: scan.width,
            height: scan.height,
            pixel_spacing_mm: spacing.map(|s| s.input_mm),
            candidates: found.clone(),
        };
        crate::fsio::write_atomic(
            &output_path(&stem, CANDIDATES_SUFFIX),
            serde_json::to_string_pretty(&sidecar)?.as_bytes(),
            false,
        )?;
        if opts.dicom.any() && is_dicom(&input.path) {
            crate::dicom_out::write_results(
                &input.path,
                &stem,
                &scan,
                &prob,
                &opts.dicom_options(),
            )
            .context("writing the DICOM results")?;
        }
        Ok(Row {
            index: input.index,
            file: input.path.display().to_string(),
            output: slash_path(&input.stem),
            status: OK.into(),
            width: Some(scan.width),
            height: Some(scan.height),
            max_probability: Some(o.max_probability),
            pixels_above_threshold: Some(o.positive_pixels as u64),
            image_score: Some(opts.image_score.score(&prob)),
            image_predicted: Some(metrics::image_predicted(&prob, opts.threshold) as u8),
            pixel_spacing_mm: spacing.map(|s| s.input_mm),
            spacing_source: spacing
                .map(|s| s.origin.name().to_string())
                .unwrap_or_default(),
            candidates: Some(found.len()),
            top_candidate_score: found.first().map(|c| c.score),
            seconds: 0.0,
            error: String::new(),
        })
    })();
    let secs = started.elapsed().as_secs_f64();
    match result {
        Ok(mut r) => {
            r.seconds = secs;
            r
        }
        Err(e) => Row::failed(input, ERROR, &e, secs),
    }
}

/// The suffix of an input's candidate list (`OUTPUT_candidates.json`).
pub const CANDIDATES_SUFFIX: &str = "candidates.json";

/// `OUTPUT_candidates.json`: one scan's candidate lesions, highest first,
/// in the input's pixels (see `crate::lesions` for how they are found).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ScanCandidates {
    pub file: String,
    pub width: usize,
    pub height: usize,
    pub pixel_spacing_mm: Option<f64>,
    pub candidates: Vec<crate::lesions::Candidate>,
}

/// One detection of a COCO results file (`detections.json`), which
/// pycocotools' `COCO.loadRes` reads: `bbox` is `[x, y, width, height]`
/// in the input's pixels. `file_name` is extra, for matching by name.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CocoDetection {
    pub image_id: u64,
    pub category_id: u64,
    pub bbox: [f64; 4],
    pub score: f32,
    pub file_name: String,
}

/// How detections.json numbers images and names the category.
#[derive(Clone, Debug)]
pub struct CocoIds {
    /// Image ids by file name (from `--coco-images`); empty: an input's
    /// position in results.csv, counted from 1.
    pub by_file_name: BTreeMap<String, u64>,
    pub category_id: u64,
}

impl Default for CocoIds {
    fn default() -> Self {
        CocoIds {
            by_file_name: BTreeMap::new(),
            category_id: 1,
        }
    }
}

impl CocoIds {
    /// The ids of a COCO JSON's `images` (by file name, also by its last
    /// path component) and its first category.
    pub fn read(path: &Path) -> anyhow::Result<CocoIds> {
        #[derive(Deserialize)]
        struct Img {
            id: u64,
            file_name: String,
        }
        #[derive(Deserialize)]
        struct Cat {
            id: u64,
        }
        #[derive(Deserialize)]
        struct File {
            images: Vec<Img>,
            #[serde(default)]
            categories: Vec<Cat>,
        }
        let text = std::fs::read(path).map_err(|e| crate::data::DataError::io(path, e))?;
        let f: File = serde_json::from_slice(&text).map_err(|e| {
            crate::error::bad(format!(
                "{}: not a COCO file with \"images\": {e}",
                path.display()
            ))
        })?;
        Ok(CocoIds {
            by_file_name: f
                .images
                .into_iter()
                .map(|i| (base_name(&i.file_name), i.id))
                .collect(),
            category_id: f.categories.first().map_or(1, |c| c.id),
        })
    }

    /// The image id of row `row`, or why there is none.
    fn image_id(&self, row: &Row) -> Result<u64, String> {
        if self.by_file_name.is_empty() {
            return Ok(row.index as u64 + 1);
        }
        let name = base_name(&row.file);
        self.by_file_name
            .get(&name)
            .copied()
            .ok_or_else(|| format!("{}: no image named {name:?} in --coco-images", row.file))
    }
}

fn base_name(p: &str) -> String {
    Path::new(p)
        .file_name()
        .map_or(p.to_string(), |n| n.to_string_lossy().into_owned())
}

fn read_scan_candidates(out: &Path, row: &Row) -> anyhow::Result<ScanCandidates> {
    let path = output_path(&out.join(&row.output), CANDIDATES_SUFFIX);
    let text = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_slice(&text).with_context(|| format!("reading {}", path.display()))
}

/// A row's candidates (none for a failed row).
pub fn read_candidates(out: &Path, row: &Row) -> anyhow::Result<Vec<crate::lesions::Candidate>> {
    if row.status != OK {
        return Ok(Vec::new());
    }
    Ok(read_scan_candidates(out, row)?.candidates)
}

/// Writes `candidates.csv` (one line per candidate) and `detections.json`
/// (COCO results) for the ok rows, from their `OUTPUT_candidates.json`;
/// their names take the shard's suffix like results.csv. Returns the
/// detections' count.
pub fn write_detections(
    out: &Path,
    rows: &[Row],
    shard: Option<crate::shard::Shard>,
    ids: &CocoIds,
) -> anyhow::Result<usize> {
    #[derive(Serialize)]
    struct Line<'a> {
        file: &'a str,
        rank: usize,
        score: f32,
        centre_x: f64,
        centre_y: f64,
        box_x: f64,
        box_y: f64,
        box_width: f64,
        box_height: f64,
    }
    let csv_path = out.join(crate::shard::Shard::file_name(shard, "candidates", "csv"));
    let mut w = csv::Writer::from_path(&csv_path)
        .with_context(|| format!("writing {}", csv_path.display()))?;
    let mut dets = Vec::new();
    for row in rows.iter().filter(|r| r.status == OK) {
        let sc = read_scan_candidates(out, row)?;
        let image_id = ids.image_id(row).map_err(crate::error::bad)?;
        for (rank, c) in sc.candidates.iter().enumerate() {
            let [x0, y0, x1, y1] = c.bbox;
            w.serialize(Line {
                file: &row.file,
                rank: rank + 1,
                score: c.score,
                centre_x: c.x,
                centre_y: c.y,
                box_x: x0,
                box_y: y0,
                box_width: x1 - x0,
                box_height: y1 - y0,
            })?;
            dets.push(CocoDetection {
                image_id,
                category_id: ids.category_id,
                bbox: [x0, y0, x1 - x0, y1 - y0],
                score: c.score,
                file_name: base_name(&row.file),
            });
        }
    }
    w.flush()
        .with_context(|| format!("writing {}", csv_path.display()))?;
    let json_path = out.join(crate::shard::Shard::file_name(shard, "detections", "json"));
    crate::fsio::write_atomic(&json_path, serde_json::to_string(&dets)?.as_bytes(), false)?;
    Ok(dets.len())
}

/// Reads a results CSV (for `--skip-existing` and merging shards).
pub fn read_rows(path: &Path) -> anyhow::Result<Vec<Row>> {
    let mut r =
        csv::Reader::from_path(path).with_context(|| format!("reading {}", path.display()))?;
    r.deserialize()
        .map(|x| x.with_context(|| format!("reading {}", path.display())))
        .collect()
}

/// Combines the `results-shard-I-of-N.csv` files of all N shards in `out`
/// into `out/results.csv`, rows in the order of the unsharded run; returns
/// the rows. Errors (a shard missing, mixed N, rows missing) are
/// [`crate::error::BadInput`].
pub fn merge_shards(out: &Path) -> anyhow::Result<Vec<Row>> {
    let mut shards: BTreeMap<usize, PathBuf> = BTreeMap::new();
    let mut count: Option<usize> = None;
    let entries = std::fs::read_dir(out).map_err(|e| bad(format!("{}: {e}", out.display())))?;
    for e in entries.filter_map(|e| e.ok()) {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name
            .strip_prefix("results-shard-")
            .and_then(|r| r.strip_suffix(".csv"))
        else {
            continue;
        };
        let Some((i, n)) = rest
            .split_once("-of-")
            .and_then(|(i, n)| Some((i.parse::<usize>().ok()?, n.parse::<usize>().ok()?)))
        else {
            continue;
        };
        if count.is_some_and(|c| c != n) {
            return Err(bad(format!(
                "{} holds shards of different counts ({} and {n})",
                out.display(),
                count.unwrap_or(0)
            )));
        }
        count = Some(n);
        shards.insert(i, e.path());
    }
    let n = count.ok_or_else(|| {
        bad(format!(
            "{} has no results-shard-I-of-N.csv files",
            out.display()
        ))
    })?;
    let missing: Vec<String> = (0..n)
        .filter(|i| !shards.contains_key(i))
        .map(|i| format!("{i}/{n}"))
        .collect();
    if !missing.is_empty() {
        return Err(bad(format!("missing shards: {}", missing.join(", "))));
    }
    let mut rows = Vec::new();
    for path in shards.values() {
        rows.extend(read_rows(path)?);
    }
    rows.sort_by_key(|r| r.index);
    if let Some((k, r)) = rows.iter().enumerate().find(|(k, r)| r.index != *k) {
        return Err(bad(format!(
            "the shards' rows do not make one run: row {k} has index {} ({}); was a shard run on other inputs?",
            r.index, r.file
        )));
    }
    let path = out.join("results.csv");
    let mut w =
        csv::Writer::from_path(&path).with_context(|| format!("writing {}", path.display()))?;
    for r in &rows {
        w.serialize(r)?;
    }
    w.flush()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(rows)
}

/// `results.json`: the settings and the rows.
#[derive(Debug, Serialize, Deserialize)]
pub struct ResultsJson {
    pub checkpoint: String,
    pub threshold: f32,
    pub image_score: String,
    /// The test-time augmentation (`none`, `flips`, `dihedral`).
    pub tta: String,
    pub shard: Option<String>,
    pub inputs: usize,
    pub ok: usize,
    pub failed: usize,
    pub rows: Vec<Row>,
    /// Each row's candidate lesions (empty for a failed row).
    #[serde(default)]
    pub candidates: Vec<Vec<crate::lesions::Candidate>>,
}

/// What a batch did.
#[derive(Debug, Default)]
pub struct BatchReport {
    pub rows: Vec<Row>,
    pub skipped: usize,
    pub results: PathBuf,
}

impl BatchReport {
    /// 0 when every row is ok; 1 when any input failed internally; else 2
    /// when any input was bad.
    pub fn exit_code(&self) -> i32 {
        if self.rows.iter().any(|r| r.status == ERROR) {
            1
        } else if self.rows.iter().any(|r| r.status == BAD_INPUT) {
            2
        } else {
            0
        }
    }
}

/// The ok rows of an earlier results file, by input file.
fn ok_rows_by_file(results: &Path) -> anyhow::Result<BTreeMap<String, Row>> {
    Ok(read_rows(results)?
        .into_iter()
        .filter(|r| r.status == OK)
        .map(|r| (r.file.clone(), r))
        .collect())
}

/// An earlier ok row of `input` whose outputs all still exist (`--skip-existing`).
fn reusable_row(
    previous: &BTreeMap<String, Row>,
    input: &Input,
    out: &Path,
    opts: &BatchOptions,
) -> Option<Row> {
    let row = previous.get(&input.path.display().to_string())?;
    let outputs_exist = expected_outputs(out, input, opts)
        .iter()
        .all(|p| p.is_file());
    (row.output == slash_path(&input.stem) && outputs_exist).then(|| Row {
        index: input.index,
        ..row.clone()
    })
}

/// The batch's progress bar on stderr (hidden when `shown` is false).
fn progress_bar(len: usize, shown: bool) -> indicatif::ProgressBar {
    let bar = if shown {
        indicatif::ProgressBar::new(len as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "infer {bar:30} {pos}/{len} images  {per_sec}  ETA {eta}",
        )
        .expect("valid template"),
    );
    bar
}

/// One input's line: its summary on stdout when ok, its error on stderr.
fn print_row(row: &Row, threshold: f32, outputs: &Path) {
    if row.status != OK {
        eprintln!("{}: {}: {}", row.file, row.status, row.error);
        return;
    }
    let call = if row.image_predicted == Some(1) {
        "positive"
    } else {
        "negative"
    };
    println!(
        "{}: max probability {:.3}, {} pixels above {threshold}, image {call} (score {:.3}), {} candidate lesions ({:.2} s); wrote {}_*",
        row.file,
        row.max_probability.unwrap_or(0.0),
        row.pixels_above_threshold.unwrap_or(0),
        row.image_score.unwrap_or(0.0),
        row.candidates.unwrap_or(0),
        row.seconds,
        outputs.display()
    );
}

/// Everything `engine infer` does after the GPU and the model are ready:
/// runs `inputs` (already sharded), reusing ok rows of an earlier
/// `results` file when `skip_existing` and their outputs exist, and
/// writes the results file (one row per input, flushed as each finishes).
#[allow(clippy::too_many_arguments)]
pub fn run_batch(
    gpu: &crate::Gpu,
    predictor: &crate::predictor::Predictor,
    inputs: &[Input],
    missing: &[(PathBuf, String)],
    out: &Path,
    results: &Path,
    opts: &BatchOptions,
    skip_existing: bool,
    progress: bool,
) -> anyhow::Result<BatchReport> {
    let previous = if skip_existing && results.is_file() {
        ok_rows_by_file(results)?
    } else {
        BTreeMap::new()
    };
    let bar = progress_bar(inputs.len(), progress);
    let mut report = BatchReport {
        results: results.to_path_buf(),
        ..Default::default()
    };
    // Rows are written as they come (flushed), in input order, so that an
    // interrupted batch keeps the rows of its finished inputs.
    let mut writer = csv::Writer::from_path(results)
        .with_context(|| format!("writing {}", results.display()))?;
    let mut record = |row: Row, report: &mut BatchReport| -> anyhow::Result<()> {
        writer.serialize(&row)?;
        writer
            .flush()
            .with_context(|| format!("writing {}", results.display()))?;
        report.rows.push(row);
        Ok(())
    };
    for (i, (path, why)) in missing.iter().enumerate() {
        let row = Row::failed(
            &Input {
                index: i,
                path: path.clone(),
                stem: PathBuf::new(),
            },
            BAD_INPUT,
            &anyhow::anyhow!("{why}"),
            0.0,
        );
        bar.suspend(|| eprintln!("{}: {}: {}", row.file, row.status, row.error));
        record(row, &mut report)?;
    }
    for input in inputs {
        if let Some(row) = reusable_row(&previous, input, out, opts) {
            record(row, &mut report)?;
            report.skipped += 1;
            bar.inc(1);
            continue;
        }
        gpu.pool().reset_peak();
        let row = run_one(gpu, predictor, input, out, opts);
        bar.suspend(|| print_row(&row, opts.threshold, &out.join(&input.stem)));
        record(row, &mut report)?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(report)
}
