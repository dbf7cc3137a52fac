//! `engine eval`.
use super::{
    AdapterArg, check_at_least, checkpoint_files, choose_kernels, load_predictor, read_checkpoints,
    writable_out,
};
use crate::data::prepared::{PreparedSet, Sample};
use crate::error::bad;
use crate::eval::metrics::ImageScore;
use crate::eval::report::{Source, Summary};
use crate::eval::{EvalOptions, shard};
use crate::gpu::Gpu;
use crate::infer::TileOptions;
use crate::shard::Shard;
use crate::tta::Tta;
use clap::Args;
use std::path::{Path, PathBuf};

#[derive(Debug, Args)]
pub struct EvalArgs {
    #[command(flatten)]
    pub adapter: AdapterArg,
    /// The model: a checkpoint file. Give it more than once, or name a
    /// folder of .safetensors files, to evaluate an ensemble (the mean of
    /// the models' probability maps).
    #[arg(long, required_unless_present_any = ["merge", "baseline"])]
    pub checkpoint: Vec<PathBuf>,
    /// Evaluate a trivial detector instead of a model, through the same
    /// candidates, FROC and metrics: `grey` (p = grey / 255) or
    /// `smoothed-grey` (the scan smoothed over about 10 mm: its peaks are
    /// the brightest blobs).
    #[arg(long, value_enum, conflicts_with_all = ["checkpoint", "merge", "shard", "tta"])]
    pub baseline: Option<crate::eval::baseline::Baseline>,
    /// Prepared folder (`engine prepare ...` or `engine synth` output).
    #[arg(long, required_unless_present = "merge")]
    pub data: Option<PathBuf>,
    /// Split to evaluate (full images): test or val.
    #[arg(long, default_value = "test")]
    pub split: String,
    /// Output folder: summary.json, images.csv, sweep.csv, plots, panels/,
    /// index.html.
    #[arg(long, default_value = "runs/eval")]
    pub out: PathBuf,
    /// A pixel is positive when its probability exceeds this (p > t).
    #[arg(long, default_value_t = 0.5, value_parser = super::parse_probability)]
    pub threshold: f32,
    /// Report the highest threshold whose recall reaches this.
    #[arg(long, default_value_t = 0.9)]
    pub target_recall: f64,
    /// Statistic of a probability map that scores an image for the
    /// image-level curves.
    #[arg(long, value_enum, default_value_t = ImageScore::Area)]
    pub image_score: ImageScore,
    #[command(flatten)]
    pub candidates: super::CandidateArgs,
    /// Test-time augmentation: also run the flipped (and rotated) views of
    /// each image and average the maps (4 or 8 times the network runs).
    #[arg(long, value_enum, default_value_t = Tta::None)]
    pub tta: Tta,
    /// Histogram bins of the pixel sweep (thresholds k/bins, exact there);
    /// a multiple of 100.
    #[arg(long, default_value_t = 1000)]
    pub bins: usize,
    /// Longest side of each of the four pictures in a panel.
    #[arg(long, default_value_t = 512)]
    pub panel_size: usize,
    /// Skip the per-image panels and the HTML index.
    #[arg(long)]
    pub no_panels: bool,
    /// Print the summary JSON to stdout instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Scans with more (padded) pixels than this run as overlapping tiles
    /// (as in `engine infer`).
    #[arg(long, default_value_t = 2048 * 2048)]
    pub tile_above: usize,
    /// Millimetres per pixel of images whose manifest records none (sets
    /// prepared before spacing was recorded); else the model's training
    /// data spacing is assumed, with a warning.
    #[arg(long, value_parser = super::parse_spacing)]
    pub pixel_spacing: Option<f64>,
    /// Evaluate only the images at positions I, I+N, ... (0-based I) of the
    /// split and write partial results (partial.json, panels) into --out,
    /// for `engine eval --merge`.
    #[arg(long, conflicts_with = "merge")]
    pub shard: Option<Shard>,
    /// Combine the --out folders of `engine eval --shard I/N` runs (all N
    /// of them) into the summary and outputs of one unsharded run, in --out.
    #[arg(long, num_args = 1.., conflicts_with_all = ["checkpoint", "data"])]
    pub merge: Vec<PathBuf>,
}

impl EvalArgs {
    /// The evaluation settings the flags give (the spacing comes with the
    /// checkpoint).
    fn options(&self) -> EvalOptions {
        EvalOptions {
            threshold: self.threshold,
            target_recall: self.target_recall,
            image_score: self.image_score,
            bins: self.bins,
            panel_size: self.panel_size,
            panels: !self.no_panels,
            tiles: TileOptions {
                max_pixels: self.tile_above,
                ..TileOptions::default()
            },
            pixel_spacing: self.pixel_spacing,
            candidates: self.candidates.options(),
        }
    }
}

/// `engine eval`: a checkpoint on a prepared split, a shard of it, or the
/// merge of shards. Everything but the network runs before any GPU work.
pub fn eval(a: EvalArgs) -> anyhow::Result<()> {
    check_at_least("--tile-above", a.tile_above, 1)?;
    let opts = a.options();
    opts.validate()?;
    if !a.merge.is_empty() {
        let summary = shard::merge(&a.merge, &a.out)?;
        return print_summary(&summary, &a.out, a.json);
    }
    if let (Some(b), Some(data)) = (a.baseline, &a.data) {
        let samples = split_samples(data, &a.split)?;
        writable_out(&a.out)?;
        let source = Source {
            checkpoint: format!("baseline {}", b.name()),
            data: data.display().to_string(),
            split: a.split.clone(),
            tta: "none".into(),
        };
        let maps = crate::eval::Maps::Baseline(b);
        let summary = crate::eval::evaluate_maps(maps, &samples, &opts, source, &a.out, true)?;
        return print_summary(&summary, &a.out, a.json);
    }
    let (false, Some(data)) = (a.checkpoint.is_empty(), &a.data) else {
        return Err(bad("--checkpoint and --data are needed (or --merge)"));
    };
    let files = checkpoint_files(&a.checkpoint)?;
    let samples = split_samples(data, &a.split)?;
    let checkpoints = read_checkpoints(&files)?;
    writable_out(&a.out)?;
    let gpu = Gpu::new(a.adapter.adapter.as_deref())?;
    let predictor = load_predictor(&gpu, checkpoints, a.tta)?;
    let source = Source {
        checkpoint: predictor.names(),
        data: data.display().to_string(),
        split: a.split.clone(),
        tta: predictor.tta().name().into(),
    };
    let scans = a
        .shard
        .map_or(samples.len(), |sh| sh.select(&samples).len());
    choose_kernels(&gpu, &predictor, scans);
    if let Some(sh) = a.shard {
        let p = shard::evaluate_shard(&gpu, &predictor, &samples, sh, &opts, source, &a.out, true)?;
        println!(
            "shard {}/{}: {} of {} images; wrote {} (combine the shards with engine eval --merge)",
            sh.index,
            sh.count,
            p.records.len(),
            p.total_images,
            a.out.join(shard::PARTIAL_JSON).display()
        );
        return Ok(());
    }
    let summary = crate::eval::evaluate(&gpu, &predictor, &samples, &opts, source, &a.out, true)?;
    print_summary(&summary, &a.out, a.json)
}

/// The full images of `split` in the prepared folder `data` (none is bad
/// input).
fn split_samples(data: &Path, split: &str) -> anyhow::Result<Vec<Sample>> {
    let samples = PreparedSet::open(data)?.split(split);
    if samples.is_empty() {
        return Err(bad(format!(
            "{} has no full images in split {split:?}",
            data.display()
        )));
    }
    Ok(samples)
}

fn print_summary(summary: &Summary, out: &Path, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(summary)?);
    } else {
        print!("{}", crate::eval::report::table(summary));
        println!("wrote {}", out.display());
    }
    Ok(())
}
