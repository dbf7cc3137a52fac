//! `engine infer`.
use super::{
    AdapterArg, check_at_least, checkpoint_files, choose_kernels, load_predictor, read_checkpoints,
    writable_out,
};
use crate::batch::{self, BatchOptions, BatchReport, Input, Missing};
use crate::error::bad;
use crate::gpu::Gpu;
use crate::predictor::Predictor;
use crate::shard::Shard;
use anyhow::Context;
use clap::Args;
use std::path::{Path, PathBuf};

#[derive(Debug, Args)]
pub struct InferArgs {
    #[command(flatten)]
    pub adapter: AdapterArg,
    /// A run's checkpoint.safetensors or best.safetensors. Give it more
    /// than once, or name a folder of .safetensors files, to run an
    /// ensemble: the probability map is the mean of the models' maps.
    #[arg(long, required_unless_present = "merge")]
    pub checkpoint: Vec<PathBuf>,
    /// Output folder (created, and checked to be writable, before any GPU
    /// work): outputs mirror each input's path relative to the folder it
    /// came from, and results.csv lists every input.
    #[arg(long, default_value = "runs/infer")]
    pub out: PathBuf,
    /// Probability above which a pixel is marked in the mask.
    #[arg(long, default_value_t = 0.5, value_parser = super::parse_probability)]
    pub threshold: f32,
    /// Statistic of a probability map that scores an image (as in `engine eval`).
    #[arg(long, value_enum, default_value_t = crate::eval::metrics::ImageScore::Area)]
    pub image_score: crate::eval::metrics::ImageScore,
    /// Test-time augmentation: also run the flipped (and rotated) views of
    /// each input and average the maps (4 or 8 times the network runs).
    #[arg(long, value_enum, default_value_t = crate::tta::Tta::None)]
    pub tta: crate::tta::Tta,
    /// Only files in folders whose name (or, with a '/', path relative to
    /// the folder) matches: `*`, `?`, `**`; e.g. '*.dcm' or '**/FULL*/*.dcm'.
    #[arg(long)]
    pub glob: Option<String>,
    /// Skip inputs that results.csv already lists as ok and whose outputs
    /// exist (resumes an interrupted batch).
    #[arg(long)]
    pub skip_existing: bool,
    /// Process only the inputs at positions I, I+N, I+2N, ... (0-based I)
    /// of the sorted input list; results go to results-shard-I-of-N.csv.
    #[arg(long)]
    pub shard: Option<Shard>,
    /// Also write results.json (settings, the same rows, and each row's
    /// candidate lesions).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub candidates: super::CandidateArgs,
    /// A COCO JSON whose `images` give detections.json its image ids (by
    /// file name) and whose first category its category id, so that
    /// pycocotools can score the detections against it. Without it: the
    /// input's position in results.csv, from 1, and category 1.
    #[arg(long)]
    pub coco_images: Option<PathBuf>,
    /// Combine the results-shard-I-of-N.csv of all N shards in --out into
    /// results.csv, in the order of an unsharded run (no GPU work).
    #[arg(long, conflicts_with_all = ["checkpoint", "shard", "inputs"])]
    pub merge: bool,
    /// DICOM results for DICOM inputs: a comma-separated list of seg
    /// (Segmentation of p > threshold), pmap (Parametric Map of p), overlay
    /// (Secondary Capture of the heat overlay), or none.
    #[arg(long, default_value = "seg,pmap")]
    pub dicom: crate::dicom_out::DicomKinds,
    /// Scans with more pixels than this (after padding to a multiple of 32)
    /// run as overlapping tiles.
    #[arg(long, default_value_t = 2048 * 2048)]
    pub tile_above: usize,
    /// Side of a tile's kept core, in pixels.
    #[arg(long, default_value_t = 1024)]
    pub tile: usize,
    /// Context around each tile's core, in pixels.
    #[arg(long, default_value_t = crate::infer::MARGIN)]
    pub tile_margin: usize,
    /// Also write the probability map as float32 NAME_prob.npy.
    #[arg(long)]
    pub npy: bool,
    /// Millimetres per pixel of inputs whose file declares none (PNG, PGM,
    /// JPEG, DICOM without Pixel Spacing). Without it such inputs are taken
    /// to have the spacing of the model's training data, with a warning.
    #[arg(long, value_parser = super::parse_spacing)]
    pub pixel_spacing: Option<f64>,
    /// Input images (PNG, PGM, JPEG or DICOM, any size) and folders
    /// (searched recursively).
    #[arg(required_unless_present = "merge")]
    pub inputs: Vec<PathBuf>,
}

/// `engine infer`: returns the exit code of a batch that ran (see
/// [`crate::batch`]: 2 when an input was bad, 1 when one failed inside).
pub fn infer(a: InferArgs) -> anyhow::Result<i32> {
    let ids = match &a.coco_images {
        Some(p) => batch::CocoIds::read(p)?,
        None => batch::CocoIds::default(),
    };
    if a.merge {
        return merge(&a.out, &ids);
    }
    check_at_least("--tile", a.tile, 1)?;
    check_at_least("--tile-above", a.tile_above, 1)?;
    // Before any GPU work: the checkpoints exist, --out takes files, there
    // are inputs, and the checkpoints are valid.
    let files = checkpoint_files(&a.checkpoint)?;
    writable_out(&a.out)?;
    let (all, missing) = collect_inputs(&a)?;
    let checkpoints = read_checkpoints(&files)?;
    let gpu = Gpu::new(a.adapter.adapter.as_deref())?;
    let predictor = load_predictor(&gpu, checkpoints, a.tta)?;
    let opts = batch_options(&a, &predictor);
    let inputs = match a.shard {
        Some(s) => s.select(&all),
        None => all.clone(),
    };
    // Arguments that do not exist are reported once, by shard 0.
    let missing = if a.shard.is_none_or(|s| s.index == 0) {
        missing
    } else {
        Vec::new()
    };
    choose_kernels(&gpu, &predictor, inputs.len());
    let results = a.out.join(Shard::file_name(a.shard, "results", "csv"));
    let report = batch::run_batch(
        &gpu,
        &predictor,
        &inputs,
        &missing,
        &a.out,
        &results,
        &opts,
        a.skip_existing,
        true,
    )?;
    warn_assumed_spacing(&report, &predictor);
    batch::write_detections(&a.out, &report.rows, a.shard, &ids)?;
    if a.json {
        write_json(&a, &predictor, &report)?;
    }
    print_summary(&a, &report, all.len());
    Ok(report.exit_code())
}

/// `engine infer --merge`: combines the shards' results in `out`.
fn merge(out: &Path, ids: &batch::CocoIds) -> anyhow::Result<i32> {
    let rows = batch::merge_shards(out)?;
    batch::write_detections(out, &rows, None, ids)?;
    let failed = rows.iter().filter(|r| r.status != batch::OK).count();
    println!(
        "{} inputs: {} ok, {failed} failed; results in {}",
        rows.len(),
        rows.len() - failed,
        out.join("results.csv").display()
    );
    Ok(0)
}

/// The inputs (all of them, before sharding) and the arguments that do
/// not exist; no input at all is bad input.
fn collect_inputs(a: &InferArgs) -> anyhow::Result<(Vec<Input>, Missing)> {
    let (all, missing) = batch::collect_inputs(&a.inputs, a.glob.as_deref(), Some(&a.out))
        .map_err(crate::error::bad_input)?;
    if all.is_empty() && missing.is_empty() {
        return Err(bad(format!(
            "no inputs: no DICOM, PNG, PGM or JPEG file{} in {}",
            a.glob
                .as_deref()
                .map(|g| format!(" matching {g:?}"))
                .unwrap_or_default(),
            a.inputs
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    Ok((all, missing))
}

/// The settings of the batch.
fn batch_options(a: &InferArgs, predictor: &Predictor) -> BatchOptions {
    BatchOptions {
        threshold: a.threshold,
        image_score: a.image_score,
        tiles: crate::infer::TileOptions {
            max_pixels: a.tile_above,
            tile: a.tile,
            margin: a.tile_margin,
        },
        npy: a.npy,
        dicom: a.dicom,
        model_name: model_name(predictor),
        pixel_spacing: a.pixel_spacing,
        candidates: a.candidates.options(),
    }
}

/// How DICOM results name the model: the checkpoints' file names and width.
fn model_name(predictor: &Predictor) -> String {
    let members = predictor.members();
    let files: Vec<String> = members
        .iter()
        .map(|m| {
            Path::new(&m.name)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        })
        .collect();
    let kind = if members.len() > 1 {
        format!("ensemble of {} networks", members.len())
    } else {
        "network".to_string()
    };
    let tta = match predictor.tta() {
        crate::tta::Tta::None => String::new(),
        t => format!(", test-time augmentation {}", t.name()),
    };
    format!(
        "engine {} dense-prediction {kind} (width {}), checkpoint {}{tta}",
        env!("CARGO_PKG_VERSION"),
        members[0].model.cfg.width,
        files.join(", ")
    )
}

/// One warning for the inputs whose spacing was assumed.
fn warn_assumed_spacing(report: &BatchReport, predictor: &Predictor) {
    let assumed = report
        .rows
        .iter()
        .filter(|r| r.spacing_source == crate::spacing::Origin::Assumed.name())
        .count();
    if let (Some(m), true) = (predictor.spacing(), assumed > 0) {
        eprintln!(
            "{}",
            crate::spacing::assumed_warning(&format!("{assumed} input(s)"), &m)
        );
    }
}

/// `--json`: results.json (or its shard's name).
fn write_json(a: &InferArgs, predictor: &Predictor, report: &BatchReport) -> anyhow::Result<()> {
    let ok = report.rows.iter().filter(|r| r.status == batch::OK).count();
    let path = a.out.join(Shard::file_name(a.shard, "results", "json"));
    let j = batch::ResultsJson {
        checkpoint: predictor.names(),
        threshold: a.threshold,
        image_score: a.image_score.name().into(),
        tta: predictor.tta().name().into(),
        shard: a.shard.map(|s| format!("{}/{}", s.index, s.count)),
        inputs: report.rows.len(),
        ok,
        failed: report.rows.len() - ok,
        candidates: report
            .rows
            .iter()
            .map(|r| batch::read_candidates(&a.out, r))
            .collect::<anyhow::Result<_>>()?,
        rows: report.rows.clone(),
    };
    std::fs::write(&path, serde_json::to_string_pretty(&j)?)
        .with_context(|| format!("writing {}", path.display()))
}

/// The closing line: how many inputs, ok, skipped, failed.
fn print_summary(a: &InferArgs, report: &BatchReport, total: usize) {
    let ok = report.rows.iter().filter(|r| r.status == batch::OK).count();
    println!(
        "{} inputs{}: {ok} ok ({} skipped as already done), {} failed; results in {}",
        report.rows.len(),
        a.shard
            .map(|s| format!(" (shard {}/{} of {total})", s.index, s.count))
            .unwrap_or_default(),
        report.skipped,
        report.rows.len() - ok,
        report.results.display()
    );
}
