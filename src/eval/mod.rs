//! `engine eval`: a checkpoint on a prepared split. Pixel- and image-level
//! metrics at a threshold, a threshold sweep with precision-recall and ROC
//! curves, the thresholds that reach a target recall or maximise F1, and
//! the pictures: curve plots and one panel per image with an HTML index.
//!
//! Full scans run through [`crate::infer::probability_map`], the same fully
//! convolutional path as `engine infer`. Metric definitions: [`metrics`].
//!
//! Exit codes ([`crate::error::exit_code`]): 0 success, 2 bad input
//! (missing or corrupt checkpoint or data, bad arguments; clap's own usage
//! errors are 2 too), 1 internal error (GPU, inference, writing the outputs).
pub mod baseline;
pub mod metrics;
pub mod panels;
pub mod plots;
pub mod report;
pub mod shard;

use crate::data::Gray8;
use crate::data::prepared::Sample;
use crate::error::bad;
use crate::gpu::Gpu;
use crate::infer::TileOptions;
use crate::lesions::{self, CandidateOptions, ImageLesions};
use crate::predictor::Predictor;
use anyhow::Context;
use baseline::Baseline;
use metrics::{Counts, ImageScore, PixelHistogram};
use report::{ImageRecord, Summary};
use std::path::Path;

/// Settings of one evaluation.
#[derive(Clone, Debug)]
pub struct EvalOptions {
    pub threshold: f32,
    pub target_recall: f64,
    pub image_score: ImageScore,
    pub bins: usize,
    pub panel_size: usize,
    pub panels: bool,
    pub tiles: TileOptions,
    /// Spacing of images whose manifest records none (`--pixel-spacing`).
    pub pixel_spacing: Option<f64>,
    /// How candidate lesions are read off the maps (lesion-level FROC).
    pub candidates: CandidateOptions,
}

impl Default for EvalOptions {
    fn default() -> Self {
        EvalOptions {
            threshold: 0.5,
            target_recall: 0.9,
            image_score: ImageScore::Area,
            bins: 1000,
            panel_size: 512,
            panels: true,
            tiles: TileOptions::default(),
            pixel_spacing: None,
            candidates: CandidateOptions::default(),
        }
    }
}

impl EvalOptions {
    /// Checks the settings (errors are [`BadInput`]).
    pub fn validate(&self) -> anyhow::Result<()> {
        if !(0.0..=1.0).contains(&self.threshold) {
            return Err(bad(format!(
                "--threshold {} is not in [0, 1]",
                self.threshold
            )));
        }
        if !(self.target_recall > 0.0 && self.target_recall <= 1.0) {
            return Err(bad(format!(
                "--target-recall {} is not in (0, 1]",
                self.target_recall
            )));
        }
        if self.bins == 0 || !self.bins.is_multiple_of(100) {
            return Err(bad(format!(
                "--bins {} is not a positive multiple of 100",
                self.bins
            )));
        }
        let c = &self.candidates;
        if !(c.min_distance_mm >= 0.0 && c.min_distance_mm.is_finite()) {
            return Err(bad(format!(
                "--min-distance-mm {} is not a distance",
                c.min_distance_mm
            )));
        }
        if !(0.0..=1.0).contains(&c.min_score) || c.max_per_image == 0 {
            return Err(bad(format!(
                "--min-candidate-score {} must be in [0, 1] and --max-candidates {} at least 1",
                c.min_score, c.max_per_image
            )));
        }
        if self.panel_size < 16 {
            return Err(bad("--panel-size must be at least 16"));
        }
        Ok(())
    }
}

/// Accumulates per-image results; [`Accumulator::finish`] makes the summary.
pub struct Accumulator {
    opts: EvalOptions,
    hist: PixelHistogram,
    pixel: Counts,
    records: Vec<ImageRecord>,
    /// Each record's candidates matched against its lesions.
    lesions: Vec<ImageLesions>,
    /// Position of each record's image in the full list (for shards).
    indices: Vec<usize>,
}

impl Accumulator {
    pub fn new(opts: EvalOptions) -> Self {
        Accumulator {
            hist: PixelHistogram::new(opts.bins),
            opts,
            pixel: Counts::default(),
            records: Vec::new(),
            lesions: Vec::new(),
            indices: Vec::new(),
        }
    }

    /// Adds one image: its probability map and 0/1 mask (same size), and
    /// its ground truth's lesions with the map's candidates.
    pub fn add(
        &mut self,
        file: &str,
        mask: &Gray8,
        prob: &[f32],
        lesions: ImageLesions,
    ) -> &ImageRecord {
        let index = self.records.len();
        self.add_at(index, file, mask, prob, lesions)
    }

    /// [`Accumulator::add`] for the image at position `index` of the full
    /// list (a shard holds every N-th image).
    pub fn add_at(
        &mut self,
        index: usize,
        file: &str,
        mask: &Gray8,
        prob: &[f32],
        lesions: ImageLesions,
    ) -> &ImageRecord {
        self.indices.push(index);
        let t = self.opts.threshold;
        let c = metrics::pixel_counts(prob, &mask.pixels, t);
        self.pixel.tp += c.tp;
        self.pixel.fp += c.fp;
        self.pixel.fn_ += c.fn_;
        self.pixel.tn += c.tn;
        self.hist.add(prob, &mask.pixels);
        let truth = c.tp + c.fn_ > 0;
        let predicted = metrics::image_predicted(prob, t);
        self.records.push(ImageRecord {
            file: file.to_string(),
            width: mask.width,
            height: mask.height,
            truth: truth as u8,
            score: self.opts.image_score.score(prob),
            predicted: predicted as u8,
            outcome: report::outcome(truth, predicted).into(),
            mask_pixels: c.tp + c.fn_,
            predicted_pixels: c.tp + c.fp,
            min_predicted_pixels: metrics::area_min_pixels(prob.len()) as u64,
            tp: c.tp,
            fp: c.fp,
            fn_: c.fn_,
            tn: c.tn,
            dice: c.f1(),
            iou: c.iou(),
            max_probability: prob.iter().copied().fold(0.0f32, f32::max) as f64,
            lesions: lesions.lesions,
            lesions_found: found_lesions(&lesions),
            best_hit_score: best_score(&lesions, true),
            best_false_positive_score: best_score(&lesions, false),
            panel: String::new(),
        });
        self.lesions.push(lesions);
        self.records.last().expect("just pushed")
    }

    pub fn records(&self) -> &[ImageRecord] {
        &self.records
    }

    pub fn records_mut(&mut self) -> &mut [ImageRecord] {
        &mut self.records
    }

    pub fn finish(self) -> Summary {
        report::summarize(
            &self.opts,
            self.pixel,
            &self.hist,
            self.records,
            &self.lesions,
        )
    }
}

/// The highest score of a candidate that hits a lesion (`hit`) or none.
fn best_score(l: &ImageLesions, hit: bool) -> f64 {
    l.candidates
        .iter()
        .filter(|c| c.hits.is_empty() != hit)
        .map(|c| c.score as f64)
        .fold(0.0, f64::max)
}

/// Lesions of one image hit by any of its candidates.
fn found_lesions(l: &ImageLesions) -> usize {
    let hit: std::collections::BTreeSet<usize> = l
        .candidates
        .iter()
        .flat_map(|c| c.hits.iter().copied())
        .collect();
    hit.len()
}

/// The candidates of `prob` (at the image's pixels, `spacing_mm` each),
/// and them matched against the image's lesions.
pub fn lesions_of(
    s: &Sample,
    mask: &Gray8,
    prob: &[f32],
    spacing_mm: f64,
    opts: &CandidateOptions,
) -> (Vec<lesions::Candidate>, ImageLesions) {
    let cands = lesions::candidates(prob, mask.width, mask.height, spacing_mm, opts);
    let truth = lesions::Truth::of(mask, s.lesion_boxes.as_deref());
    let matched = lesions::match_image(&cands, &truth);
    (cands, matched)
}

/// The file name of image `index`'s panel: index plus a sanitised id.
pub fn panel_name(index: usize, id: &str) -> String {
    let stem = Path::new(id)
        .with_extension("")
        .to_string_lossy()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect::<String>();
    format!("{index:04}_{stem}.png")
}

/// Where the probability maps come from: a model, or a trivial detector.
#[derive(Clone, Copy)]
pub enum Maps<'a> {
    Model {
        gpu: &'a Gpu,
        predictor: &'a Predictor,
    },
    Baseline(Baseline),
}

impl Maps<'_> {
    /// The map of `scan` at its own pixels, and the spacing its pixels were
    /// taken to have (None: unknown) with whether that was assumed.
    fn map(
        &self,
        scan: &Gray8,
        own: Option<f64>,
        opts: &EvalOptions,
    ) -> anyhow::Result<(Vec<f32>, Option<f64>, bool)> {
        match *self {
            Maps::Model { gpu, predictor } => {
                let spacing = predictor.input_spacing(own, opts.pixel_spacing);
                let prob = crate::infer::predictor_map(
                    gpu,
                    predictor,
                    scan,
                    (own, opts.pixel_spacing),
                    &opts.tiles,
                )?;
                let assumed = spacing.is_some_and(|s| s.origin == crate::spacing::Origin::Assumed);
                Ok((prob, spacing.map(|s| s.input_mm).or(own), assumed))
            }
            Maps::Baseline(b) => {
                let mm = own.or(opts.pixel_spacing).ok_or_else(|| {
                    bad("a baseline needs each image's pixel spacing: give --pixel-spacing MM")
                })?;
                Ok((b.map(scan, mm), Some(mm), false))
            }
        }
    }

    fn spacing(&self) -> Option<crate::spacing::ModelSpacing> {
        match self {
            Maps::Model { predictor, .. } => predictor.spacing(),
            Maps::Baseline(_) => None,
        }
    }
}

/// Evaluates `predictor` on `samples` and writes every output into `out`.
/// Load failures of a sample are [`BadInput`].
pub fn evaluate(
    gpu: &Gpu,
    predictor: &Predictor,
    samples: &[Sample],
    opts: &EvalOptions,
    source: report::Source,
    out: &Path,
    progress: bool,
) -> anyhow::Result<Summary> {
    evaluate_maps(
        Maps::Model { gpu, predictor },
        samples,
        opts,
        source,
        out,
        progress,
    )
}

/// [`evaluate`] for any source of maps.
pub fn evaluate_maps(
    maps: Maps<'_>,
    samples: &[Sample],
    opts: &EvalOptions,
    source: report::Source,
    out: &Path,
    progress: bool,
) -> anyhow::Result<Summary> {
    let all: Vec<(usize, Sample)> = samples.iter().cloned().enumerate().collect();
    let acc = run_samples(maps, &all, opts, out, progress)?;
    let mut summary = acc.finish();
    summary.source = source;
    write_outputs(&mut summary, out, opts.panels)?;
    Ok(summary)
}

/// Writes summary.json, images.csv, sweep.csv, the plots and (with
/// `panels`) index.html into `out`; records them in `summary.files`.
pub fn write_outputs(summary: &mut Summary, out: &Path, panels: bool) -> anyhow::Result<()> {
    let mut files = report::write_tables(summary, out)?;
    files.extend(plots::write_plots(summary, out)?);
    if panels {
        panels::write_index(summary, out)?;
        files.push(report::INDEX_HTML.to_string());
    }
    summary.files = files;
    report::write_json(summary, &out.join(report::SUMMARY_JSON))
}

/// Runs `samples` (each with its position in the full list, which names
/// its panel) through the predictor; writes the panels into `out/panels`.
pub(crate) fn run_samples(
    maps: Maps<'_>,
    samples: &[(usize, Sample)],
    opts: &EvalOptions,
    out: &Path,
    progress: bool,
) -> anyhow::Result<Accumulator> {
    opts.validate()?;
    if samples.is_empty() {
        return Err(bad("no images to evaluate"));
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let panel_dir = out.join("panels");
    if opts.panels {
        std::fs::create_dir_all(&panel_dir)
            .with_context(|| format!("creating {}", panel_dir.display()))?;
    }
    let bar = if progress {
        indicatif::ProgressBar::new(samples.len() as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "eval {bar:30} {pos}/{len} images  {per_sec}  ETA {eta}  {msg}",
        )
        .expect("valid template"),
    );
    let mut acc = Accumulator::new(opts.clone());
    let mut assumed = 0;
    for (k, (i, s)) in samples.iter().enumerate() {
        bar.set_message(s.id.clone());
        // The error names the file.
        let (scan, mask) = s.load()?;
        if (scan.width, scan.height) != (mask.width, mask.height) {
            return Err(bad(format!("{}: scan and mask differ in size", s.id)));
        }
        if let Some((w, h)) = s.size
            && (w, h) != (scan.width, scan.height)
        {
            return Err(bad(format!(
                "{}: the image is {}x{} but the manifest says {w}x{h} (replaced or corrupted file?)",
                s.id, scan.width, scan.height
            )));
        }
        let (prob, mm, was_assumed) = maps
            .map(&scan, s.spacing_mm, opts)
            .with_context(|| format!("{}: inference on {}x{}", s.id, scan.width, scan.height))?;
        assumed += was_assumed as usize;
        // Without any spacing the candidates' distance is in pixels.
        let mm = mm.unwrap_or(1.0);
        let (cands, found) = lesions_of(s, &mask, &prob, mm, &opts.candidates);
        let marked: Vec<(lesions::Candidate, bool)> = cands
            .into_iter()
            .zip(&found.candidates)
            .map(|(c, m)| (c, !m.hits.is_empty()))
            .collect();
        acc.add_at(*i, &s.id, &mask, &prob, found);
        if opts.panels {
            let name = panel_name(*i, &s.id);
            panels::write_panel(
                &panel_dir.join(&name),
                &scan,
                &mask,
                &prob,
                opts.threshold,
                opts.panel_size,
                &marked,
            )
            .with_context(|| format!("{}: writing its panel", s.id))?;
            acc.records_mut()[k].panel = format!("panels/{name}");
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    if let (Some(m), true) = (maps.spacing(), assumed > 0 && progress) {
        eprintln!(
            "{}",
            crate::spacing::assumed_warning(&format!("{assumed} image(s)"), &m)
        );
    }
    Ok(acc)
}
