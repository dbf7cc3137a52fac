//! The evaluation's numbers: the summary (JSON), the per-image rows (CSV),
//! the sweep (CSV) and the terminal table.
use super::EvalOptions;
use super::metrics::{self, Choice, Counts, ImageScore, PixelHistogram, PrPoint, RocPoint};
use crate::lesions::{Froc, ImageLesions};
use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::path::Path;

pub const SUMMARY_JSON: &str = "summary.json";
pub const IMAGES_CSV: &str = "images.csv";
pub const SWEEP_CSV: &str = "sweep.csv";
pub const INDEX_HTML: &str = "index.html";

/// How many images each picked section of the index shows at most.
pub const PICKS: usize = 8;

/// One image's row (images.csv, summary.json, index.html).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ImageRecord {
    pub file: String,
    pub width: usize,
    pub height: usize,
    /// 1 when the mask has a positive pixel.
    pub truth: u8,
    /// The image score (see `image_score` in the summary).
    pub score: f64,
    /// 1 when more than H*W/750 pixels exceed the threshold.
    pub predicted: u8,
    /// TP, FP, FN or TN at image level.
    pub outcome: String,
    pub mask_pixels: u64,
    /// Pixels with p > threshold.
    pub predicted_pixels: u64,
    /// floor(H*W/750) + 1: predicted positive from this many pixels on.
    pub min_predicted_pixels: u64,
    pub tp: u64,
    pub fp: u64,
    #[serde(rename = "fn")]
    pub fn_: u64,
    pub tn: u64,
    /// Pixel F1 (Dice) of this image at the threshold (0 when the mask and
    /// the prediction are both empty).
    pub dice: f64,
    /// Pixel lesion IoU of this image at the threshold.
    pub iou: f64,
    pub max_probability: f64,
    /// Lesions of the ground truth (boxes, or regions of the mask).
    #[serde(default)]
    pub lesions: usize,
    /// Of those, the ones a candidate hits (at any candidate score).
    #[serde(default)]
    pub lesions_found: usize,
    /// The highest score of a candidate that hits a lesion (0: none).
    #[serde(default)]
    pub best_hit_score: f64,
    /// The highest score of a candidate that hits nothing (0: none).
    #[serde(default)]
    pub best_false_positive_score: f64,
    /// The panel, relative to the output folder ("" without panels).
    pub panel: String,
}

pub fn outcome(truth: bool, predicted: bool) -> &'static str {
    match (truth, predicted) {
        (true, true) => "TP",
        (false, true) => "FP",
        (true, false) => "FN",
        (false, false) => "TN",
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Source {
    pub checkpoint: String,
    pub data: String,
    pub split: String,
    /// The test-time augmentation (`none`, `flips`, `dihedral`).
    #[serde(default)]
    pub tta: String,
}

#[derive(Clone, Copy, Debug, Serialize, PartialEq)]
pub struct CountsOut {
    pub tp: u64,
    pub fp: u64,
    #[serde(rename = "fn")]
    pub fn_: u64,
    pub tn: u64,
}

impl From<Counts> for CountsOut {
    fn from(c: Counts) -> Self {
        CountsOut {
            tp: c.tp,
            fp: c.fp,
            fn_: c.fn_,
            tn: c.tn,
        }
    }
}

/// The metrics of one level (pixel or image) at the threshold, plus the
/// curve summaries and the chosen thresholds.
#[derive(Clone, Debug, Serialize)]
pub struct Level {
    pub counts: CountsOut,
    pub accuracy: f64,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    /// Pixel level only: lesion IoU, background IoU and their mean.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iou: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub background_iou: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mean_iou: Option<f64>,
    pub average_precision: f64,
    /// Image level only (null when the set lacks positives or negatives).
    pub roc_auc: Option<f64>,
    /// Highest grid threshold whose recall reaches the target (null: none).
    pub at_target_recall: Option<Choice>,
    /// Grid threshold of the highest F1 (null: F1 is 0 everywhere).
    pub max_f1: Option<Choice>,
}

impl Level {
    fn new(c: Counts, ap: f64) -> Level {
        Level {
            counts: c.into(),
            accuracy: c.accuracy(),
            precision: c.precision(),
            recall: c.recall(),
            f1: c.f1(),
            iou: None,
            background_iou: None,
            mean_iou: None,
            average_precision: ap,
            roc_auc: None,
            at_target_recall: None,
            max_f1: None,
        }
    }
}

/// One row of the 0.01-step sweep.
#[derive(Clone, Debug, Serialize)]
pub struct SweepRow {
    pub threshold: f64,
    pub pixel_tp: u64,
    pub pixel_fp: u64,
    pub pixel_fn: u64,
    pub pixel_tn: u64,
    pub pixel_precision: f64,
    pub pixel_recall: f64,
    pub pixel_f1: f64,
    pub pixel_iou: f64,
    pub image_tp: u64,
    pub image_fp: u64,
    pub image_fn: u64,
    pub image_tn: u64,
    pub image_precision: f64,
    pub image_recall: f64,
    pub image_f1: f64,
    pub image_fpr: f64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Curves {
    /// Grid thresholds where the pixel counts change, high to low.
    pub pixel_pr: Vec<PrPoint>,
    /// One point per distinct image score, high to low.
    pub image_pr: Vec<PrPoint>,
    /// From (0, 0) (threshold null: above every score) to (1, 1).
    pub image_roc: Vec<RocPoint>,
}

/// The images picked out in the index, by file name.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Picks {
    pub criterion: String,
    pub best: Vec<String>,
    pub worst: Vec<String>,
    pub false_positives: Vec<String>,
    pub false_negatives: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Definitions {
    pub pixel_rule: &'static str,
    pub image_rule: &'static str,
    pub image_score: &'static str,
    pub image_thresholds: &'static str,
    pub pixel_sweep: String,
    pub average_precision: &'static str,
    pub roc_auc: &'static str,
    pub mean_iou: &'static str,
    pub candidates: String,
    pub froc: &'static str,
}

#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub source: Source,
    pub images: usize,
    pub positive_images: usize,
    pub negative_images: usize,
    pub threshold: f32,
    pub target_recall: f64,
    pub image_score: ImageScore,
    pub bins: usize,
    pub definitions: Definitions,
    pub pixel: Level,
    pub image: Level,
    /// Thresholds 0.00, 0.01, ..., 1.00.
    pub sweep: Vec<SweepRow>,
    pub curves: Curves,
    /// Lesion level: candidates against the ground truth's lesions.
    pub lesion: Froc,
    pub picks: Picks,
    pub per_image: Vec<ImageRecord>,
    /// Files written, relative to the output folder.
    pub files: Vec<String>,
}

/// Builds the summary from the accumulated counts and rows.
pub fn summarize(
    opts: &EvalOptions,
    pixel_counts: Counts,
    hist: &PixelHistogram,
    records: Vec<ImageRecord>,
    lesions: &[ImageLesions],
) -> Summary {
    let bins = hist.bins();
    // Pixel level.
    let pixel_sweep = hist.sweep();
    let pixel_points: Vec<(f64, Counts)> = (0..=bins)
        .map(|k| (hist.threshold(k) as f64, pixel_sweep[k]))
        .collect();
    let (pixel_pr, pixel_ap) = metrics::pixel_pr(hist);
    let mut pixel = Level::new(pixel_counts, pixel_ap);
    pixel.iou = Some(pixel_counts.iou());
    pixel.background_iou = Some(pixel_counts.background_iou());
    pixel.mean_iou = Some(pixel_counts.mean_iou());
    pixel.at_target_recall = metrics::threshold_for_recall(&pixel_points, opts.target_recall);
    pixel.max_f1 = metrics::threshold_max_f1(&pixel_points);

    // Image level: counts at the threshold by the area rule, curves by score.
    let items: Vec<(bool, f64)> = records.iter().map(|r| (r.truth == 1, r.score)).collect();
    let mut ic = Counts::default();
    for r in &records {
        match (r.predicted == 1, r.truth == 1) {
            (true, true) => ic.tp += 1,
            (true, false) => ic.fp += 1,
            (false, true) => ic.fn_ += 1,
            (false, false) => ic.tn += 1,
        }
    }
    let (image_pr, image_ap) = metrics::image_pr(&items);
    let (image_roc, auc) = metrics::image_roc(&items);
    let image_points = metrics::image_sweep(&items, bins);
    let mut image = Level::new(ic, image_ap);
    image.roc_auc = auc;
    image.at_target_recall = metrics::threshold_for_recall(&image_points, opts.target_recall);
    image.max_f1 = metrics::threshold_max_f1(&image_points);

    let step = bins / 100;
    let sweep = (0..=100)
        .map(|i| {
            let k = i * step;
            let (p, (t, c)) = (pixel_sweep[k], image_points[k]);
            SweepRow {
                threshold: t,
                pixel_tp: p.tp,
                pixel_fp: p.fp,
                pixel_fn: p.fn_,
                pixel_tn: p.tn,
                pixel_precision: p.precision(),
                pixel_recall: p.recall(),
                pixel_f1: p.f1(),
                pixel_iou: p.iou(),
                image_tp: c.tp,
                image_fp: c.fp,
                image_fn: c.fn_,
                image_tn: c.tn,
                image_precision: c.precision(),
                image_recall: c.recall(),
                image_f1: c.f1(),
                image_fpr: c.fpr(),
            }
        })
        .collect();

    let positive_images = records.iter().filter(|r| r.truth == 1).count();
    Summary {
        source: Source::default(),
        images: records.len(),
        positive_images,
        negative_images: records.len() - positive_images,
        threshold: opts.threshold,
        target_recall: opts.target_recall,
        image_score: opts.image_score,
        bins,
        definitions: Definitions {
            pixel_rule: "a pixel is predicted positive when p > threshold (p == threshold is negative)",
            image_rule: "truly positive: the mask has a positive pixel; predicted positive: more than H*W/750 pixels have p > threshold",
            image_score: opts.image_score.describe(),
            image_thresholds: "image-level curves, AP, AUC and chosen thresholds rank images by the image score (positive when score > t); the counts at the threshold use the area rule",
            pixel_sweep: format!(
                "exact confusion counts at thresholds k/{bins} from per-class histograms (bin of p: the smallest k with p <= k/{bins}); pixel AP and curve are those of the scores rounded up to that grid"
            ),
            average_precision: "sum over operating points from high to low threshold of (R_n - R_(n-1)) * P_n, starting at recall 0, no interpolation (scikit-learn average_precision_score)",
            roc_auc: "exact area under the ROC curve, ties in the score count one half (scikit-learn roc_auc_score)",
            mean_iou: "(lesion IoU + background IoU) / 2, background IoU = tn / (tn + fp + fn)",
            candidates: format!(
                "peaks of the map (no 8-neighbour higher) with p >= {}, from the highest down, at least {} mm apart, at most {} per image; score = the peak's p, centre = the peak pixel's centre, box = the 4-connected region around the peak with p >= half the peak",
                opts.candidates.min_score,
                opts.candidates.min_distance_mm,
                opts.candidates.max_per_image
            ),
            froc: "lesions: the ground truth's boxes (sets prepared from boxes), else the 8-connected regions of the mask; a candidate hits every lesion holding its centre, a lesion is found once, a candidate hitting none is a false positive; one point per distinct candidate score t: sensitivity = lesions hit by candidates with score >= t / lesions, FP/image = false positives with score >= t / images; the sensitivity at F is the highest with at most F FP/image",
        },
        pixel,
        image,
        sweep,
        curves: Curves {
            pixel_pr,
            image_pr,
            image_roc,
        },
        lesion: crate::lesions::froc(lesions),
        picks: picks(&records),
        per_image: records,
        files: Vec::new(),
    }
}

/// The index's sections (see [`Picks::criterion`]).
pub fn picks(records: &[ImageRecord]) -> Picks {
    let mut pos: Vec<&ImageRecord> = records.iter().filter(|r| r.truth == 1).collect();
    // Best: highest Dice first (ties: higher score); worst: the reverse.
    pos.sort_by(|a, b| b.dice.total_cmp(&a.dice).then(b.score.total_cmp(&a.score)));
    let best = pos.iter().take(PICKS).map(|r| r.file.clone()).collect();
    let worst = pos
        .iter()
        .rev()
        .take(PICKS)
        .map(|r| r.file.clone())
        .collect();
    let mut fps: Vec<&ImageRecord> = records.iter().filter(|r| r.outcome == "FP").collect();
    fps.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut fns: Vec<&ImageRecord> = records.iter().filter(|r| r.outcome == "FN").collect();
    fns.sort_by(|a, b| a.score.total_cmp(&b.score));
    Picks {
        criterion: format!(
            "best/worst: images with lesions, by pixel Dice (F1) at the threshold, highest/lowest first (ties by score); false positives/negatives: image level at the threshold (area rule), most confident first (highest/lowest score); at most {PICKS} each"
        ),
        best,
        worst,
        false_positives: fps.iter().take(PICKS).map(|r| r.file.clone()).collect(),
        false_negatives: fns.iter().take(PICKS).map(|r| r.file.clone()).collect(),
    }
}

pub fn write_json(summary: &Summary, path: &Path) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(summary)?;
    crate::fsio::write_atomic(path, text.as_bytes(), false)
}

fn write_csv<T: Serialize>(rows: &[T], path: &Path) -> anyhow::Result<()> {
    let mut w =
        csv::Writer::from_path(path).with_context(|| format!("writing {}", path.display()))?;
    for r in rows {
        w.serialize(r)?;
    }
    w.flush()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Writes images.csv and sweep.csv into `out`; returns the names of the
/// files the summary lists (summary.json, written last, and these two).
pub fn write_tables(summary: &Summary, out: &Path) -> anyhow::Result<Vec<String>> {
    write_csv(&summary.per_image, &out.join(IMAGES_CSV))?;
    write_csv(&summary.sweep, &out.join(SWEEP_CSV))?;
    Ok(vec![
        SUMMARY_JSON.to_string(),
        IMAGES_CSV.to_string(),
        SWEEP_CSV.to_string(),
    ])
}

fn opt(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.4}"))
}

fn choice_row(s: &mut String, what: &str, level: &str, c: &Option<Choice>) {
    match c {
        Some(c) => writeln!(
            s,
            "  {what:<18} {level:<6} {:>9.3} {:>9.4} {:>9.4} {:>9.4}",
            c.threshold, c.precision, c.recall, c.f1
        ),
        None => writeln!(s, "  {what:<18} {level:<6} {:>9}", "none"),
    }
    .expect("writing to a String");
}

/// The terminal table.
pub fn table(s: &Summary) -> String {
    let mut o = String::new();
    let w = &mut o;
    let _ = writeln!(
        w,
        "{} images ({} with lesions, {} without){}; threshold {} (p > t)",
        s.images,
        s.positive_images,
        s.negative_images,
        if s.source.split.is_empty() {
            String::new()
        } else {
            format!(" of split {:?} in {}", s.source.split, s.source.data)
        },
        s.threshold
    );
    let _ = writeln!(w, "image score: {}", s.definitions.image_score);
    if !matches!(s.source.tta.as_str(), "" | "none") {
        let _ = writeln!(w, "test-time augmentation: {}", s.source.tta);
    }
    let _ = writeln!(
        w,
        "\n  {:<8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "level", "accuracy", "precision", "recall", "F1", "IoU", "mean IoU", "AP", "ROC AUC"
    );
    for (name, l) in [("pixel", &s.pixel), ("image", &s.image)] {
        let _ = writeln!(
            w,
            "  {:<8} {:>9.4} {:>9.4} {:>9.4} {:>9.4} {:>9} {:>9} {:>9.4} {:>9}",
            name,
            l.accuracy,
            l.precision,
            l.recall,
            l.f1,
            opt(l.iou),
            opt(l.mean_iou),
            l.average_precision,
            opt(l.roc_auc)
        );
    }
    let _ = writeln!(
        w,
        "\n  {:<8} {:>12} {:>12} {:>12} {:>12}",
        "counts", "TP", "FP", "FN", "TN"
    );
    for (name, l) in [("pixel", &s.pixel), ("image", &s.image)] {
        let c = l.counts;
        let _ = writeln!(
            w,
            "  {:<8} {:>12} {:>12} {:>12} {:>12}",
            name, c.tp, c.fp, c.fn_, c.tn
        );
    }
    let _ = writeln!(
        w,
        "\n  {:<18} {:<6} {:>9} {:>9} {:>9} {:>9}",
        "chosen threshold", "level", "threshold", "precision", "recall", "F1"
    );
    let target = format!("recall >= {}", s.target_recall);
    choice_row(w, &target, "pixel", &s.pixel.at_target_recall);
    choice_row(w, "max F1", "pixel", &s.pixel.max_f1);
    choice_row(w, &target, "image", &s.image.at_target_recall);
    choice_row(w, "max F1", "image", &s.image.max_f1);
    froc_rows(w, &s.lesion);
    o
}

/// The lesion-level lines of the table: sensitivity at each FP rate.
fn froc_rows(w: &mut String, f: &Froc) {
    let _ = writeln!(
        w,
        "\n  lesion FROC: {} lesions in {} images, {} candidates",
        f.lesions, f.images, f.candidates
    );
    let head: String = f
        .sensitivity_at
        .iter()
        .map(|(r, _)| format!(" {:>7}", format!("{r} FP")))
        .collect();
    let vals: String = f
        .sensitivity_at
        .iter()
        .map(|(_, v)| format!(" {v:>7.3}"))
        .collect();
    let _ = writeln!(w, "  {:<12}{head} {:>7}", "FP/image", "mean");
    let _ = writeln!(
        w,
        "  {:<12}{vals} {:>7.3}",
        "sensitivity", f.mean_sensitivity
    );
}
