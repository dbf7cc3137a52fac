//! `engine eval --shard I/N` and `engine eval --merge DIR...`.
//!
//! A shard evaluates the images at positions `I, I+N, I+2N, ...` of the
//! split (the same order as an unsharded run) and writes `partial.json`:
//! its settings, its pixel counts and histogram (integers), and its
//! per-image rows with their positions, plus its panels. Merging adds the
//! counts and histograms, puts the rows back in the split's order and
//! builds the summary with the same code as one run, so the merged outputs
//! equal those of the unsharded run.
use super::metrics::{Counts, ImageScore, PixelHistogram};
use super::report::{self, ImageRecord, Source, Summary};
use super::{Accumulator, EvalOptions, run_samples};
use crate::data::prepared::Sample;
use crate::error::bad;
use crate::gpu::Gpu;
use crate::lesions::{CandidateOptions, ImageLesions};
use crate::predictor::Predictor;
use crate::shard::Shard;
use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const PARTIAL_JSON: &str = "partial.json";

/// What one shard writes.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Partial {
    pub shard_index: usize,
    pub shard_count: usize,
    /// Images in the whole split.
    pub total_images: usize,
    pub source: Source,
    pub threshold: f32,
    pub target_recall: f64,
    pub image_score: ImageScore,
    pub bins: usize,
    pub panels: bool,
    pub pixel: Counts,
    pub histogram: PixelHistogram,
    /// (position in the split, row).
    pub records: Vec<(usize, ImageRecord)>,
    /// How candidates were read off the maps.
    pub candidates: CandidateOptions,
    /// Each row's candidates matched against its lesions (same order as `records`).
    pub lesions: Vec<ImageLesions>,
}

/// Evaluates shard `shard` of `samples` and writes `partial.json` (and
/// the shard's panels) into `out`.
#[allow(clippy::too_many_arguments)]
pub fn evaluate_shard(
    gpu: &Gpu,
    predictor: &Predictor,
    samples: &[Sample],
    shard: Shard,
    opts: &EvalOptions,
    source: Source,
    out: &Path,
    progress: bool,
) -> anyhow::Result<Partial> {
    let all: Vec<(usize, Sample)> = samples.iter().cloned().enumerate().collect();
    let mine = shard.select(&all);
    let acc = if mine.is_empty() {
        // More shards than images: an empty, still mergeable shard.
        std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
        Accumulator::new(opts.clone())
    } else {
        run_samples(
            super::Maps::Model { gpu, predictor },
            &mine,
            opts,
            out,
            progress,
        )?
    };
    let p = Partial {
        shard_index: shard.index,
        shard_count: shard.count,
        total_images: samples.len(),
        source,
        threshold: opts.threshold,
        target_recall: opts.target_recall,
        image_score: opts.image_score,
        bins: opts.bins,
        panels: opts.panels,
        pixel: acc.pixel,
        histogram: acc.hist,
        records: acc.indices.into_iter().zip(acc.records).collect(),
        candidates: opts.candidates,
        lesions: acc.lesions,
    };
    let path = out.join(PARTIAL_JSON);
    std::fs::write(&path, serde_json::to_string(&p)?)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(p)
}

fn read_partial(dir: &Path) -> anyhow::Result<Partial> {
    let path = dir.join(PARTIAL_JSON);
    let text = std::fs::read_to_string(&path).map_err(|e| {
        bad(format!(
            "{}: {e} (not an `engine eval --shard` output)",
            path.display()
        ))
    })?;
    serde_json::from_str(&text).map_err(|e| bad(format!("{}: {e}", path.display())))
}

/// Combines the shard folders `dirs` (every shard of one split, once)
/// into the outputs of one run in `out`; copies the panels.
pub fn merge(dirs: &[PathBuf], out: &Path) -> anyhow::Result<Summary> {
    let parts: Vec<(PathBuf, Partial)> = dirs
        .iter()
        .map(|d| read_partial(d).map(|p| (d.clone(), p)))
        .collect::<anyhow::Result<_>>()?;
    let first = &parts.first().ok_or_else(|| bad("--merge needs folders"))?.1;
    let n = first.shard_count;
    let mut seen = vec![false; n];
    for (d, p) in &parts {
        let same = p.shard_count == n
            && p.total_images == first.total_images
            && p.source == first.source
            && p.threshold == first.threshold
            && p.target_recall == first.target_recall
            && p.image_score == first.image_score
            && p.bins == first.bins
            && p.panels == first.panels
            && p.candidates == first.candidates
            && p.lesions.len() == p.records.len();
        if !same {
            return Err(bad(format!(
                "{} is a shard of another evaluation (settings, data or shard count differ from {})",
                d.display(),
                parts[0].0.display()
            )));
        }
        if std::mem::replace(&mut seen[p.shard_index], true) {
            return Err(bad(format!(
                "shard {}/{n} is given twice ({})",
                p.shard_index,
                d.display()
            )));
        }
    }
    let missing: Vec<String> = (0..n)
        .filter(|&i| !seen[i])
        .map(|i| format!("{i}/{n}"))
        .collect();
    if !missing.is_empty() {
        return Err(bad(format!("missing shards: {}", missing.join(", "))));
    }
    let opts = EvalOptions {
        threshold: first.threshold,
        target_recall: first.target_recall,
        image_score: first.image_score,
        bins: first.bins,
        panels: first.panels,
        candidates: first.candidates,
        ..EvalOptions::default()
    };
    let mut pixel = Counts::default();
    let mut hist = PixelHistogram::new(first.bins);
    let mut records: Vec<(usize, ImageRecord, &Path, ImageLesions)> = Vec::new();
    for (d, p) in &parts {
        pixel.tp += p.pixel.tp;
        pixel.fp += p.pixel.fp;
        pixel.fn_ += p.pixel.fn_;
        pixel.tn += p.pixel.tn;
        hist.merge(&p.histogram);
        records.extend(
            p.records
                .iter()
                .zip(&p.lesions)
                .map(|((i, r), l)| (*i, r.clone(), d.as_path(), l.clone())),
        );
    }
    records.sort_by_key(|r| r.0);
    if records.len() != first.total_images || records.iter().enumerate().any(|(k, r)| r.0 != k) {
        return Err(bad(format!(
            "the shards hold {} rows for {} images",
            records.len(),
            first.total_images
        )));
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    if opts.panels {
        std::fs::create_dir_all(out.join("panels"))?;
        for (_, r, d, _) in &records {
            let (from, to) = (d.join(&r.panel), out.join(&r.panel));
            if from != to {
                std::fs::copy(&from, &to)
                    .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
            }
        }
    }
    let lesions: Vec<ImageLesions> = records.iter().map(|r| r.3.clone()).collect();
    let records: Vec<ImageRecord> = records.into_iter().map(|r| r.1).collect();
    let mut summary = report::summarize(&opts, pixel, &hist, records, &lesions);
    summary.source = first.source.clone();
    super::write_outputs(&mut summary, out, opts.panels)?;
    Ok(summary)
}
