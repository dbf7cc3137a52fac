//! The `engine` command line. Every clap type lives in this module; each
//! command turns its arguments into the plain option structs the library
//! takes (`train::TrainConfig`, `batch::BatchOptions`, `eval::EvalOptions`,
//! `data::mias::MiasOptions`, ...) and runs them.
//!
//! Every command follows one error policy ([`crate::error::exit_code`]):
//! exit 0 on success, 2 for bad input or usage, 1 for an internal error;
//! `engine train` exits 130 after Ctrl-C. [`run`] returns the exit status
//! of a command that ended without an error (infer's per-input failures,
//! train's Ctrl-C).
mod bench;
mod data;
mod eval;
mod infer;
mod train;

pub use bench::{BenchArgs, NetShape, TuneArgs};
pub use data::{DataCommand, Layout, PrepareCommand};
pub use eval::EvalArgs;
pub use infer::InferArgs;
pub use train::TrainArgs;

use crate::error::{bad, bad_input};
use clap::{Args, Parser, Subcommand};
use std::path::{Path, PathBuf};

#[derive(Debug, Parser)]
#[command(
    name = "engine",
    version,
    about = "Train and run the mammography dense-prediction network on any GPU wgpu reaches"
)]
pub struct Cli {
    /// Largest image (width x height, all frames) the readers accept; the
    /// header is checked before anything is allocated.
    #[arg(long, global = true, default_value_t = crate::data::read::DEFAULT_MAX_PIXELS)]
    pub max_pixels: usize,
    #[command(subcommand)]
    pub command: Command,
}

/// Exit status of a run stopped by Ctrl-C (128 + SIGINT, as shells report it).
pub const EXIT_INTERRUPTED: i32 = 130;

#[derive(Debug, Args, Clone, serde::Serialize)]
pub struct AdapterArg {
    /// Adapter to use: part of its name or its index in `engine devices`
    /// (default: the best one; also settable with ENGINE_ADAPTER).
    #[arg(long, global = true)]
    pub adapter: Option<String>,
}

/// How candidate lesions are read off a probability map (infer and eval).
#[derive(Debug, Args, Clone)]
pub struct CandidateArgs {
    /// Candidate lesions are peaks of the map at least this far apart (mm;
    /// pixels for an input of unknown spacing run by a model without one).
    #[arg(long, default_value_t = 10.0)]
    pub min_distance_mm: f64,
    /// Peaks below this probability are not candidates.
    #[arg(long, default_value_t = 0.05, value_parser = parse_probability)]
    pub min_candidate_score: f32,
    /// At most this many candidates per image, highest first.
    #[arg(long, default_value_t = 20)]
    pub max_candidates: usize,
}

impl CandidateArgs {
    pub fn options(&self) -> crate::lesions::CandidateOptions {
        crate::lesions::CandidateOptions {
            min_distance_mm: self.min_distance_mm,
            min_score: self.min_candidate_score,
            max_per_image: self.max_candidates,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// List the GPU adapters wgpu reaches and their limits.
    Devices(bench::DevicesArgs),
    /// Time each kernel at one shape (GFLOP/s or GB/s), or the whole network (--model).
    Bench(BenchArgs),
    /// Time every kernel variant for each convolution shape of the network
    /// (one training step and one inference) and keep the winners in the
    /// tuning file used from then on.
    Tune(TuneArgs),
    /// Train the network (on a prepared folder, or on synthetic phantoms).
    Train(TrainArgs),
    /// Probability maps, masks and heatmap overlays for image files and folders
    /// (PNG, PGM, JPEG, DICOM), results.csv, and DICOM results for DICOM inputs.
    Infer(InferArgs),
    /// Evaluate a checkpoint on a prepared set: metrics, curves, thresholds, panels
    Eval(EvalArgs),
    #[command(flatten)]
    Data(DataCommand),
}

/// Runs a parsed command line; returns the exit status of a command that
/// ended without an error (0, or as documented for `infer` and `train`).
/// For an error, [`crate::error::exit_code`] gives the status.
pub fn run(cli: Cli) -> anyhow::Result<i32> {
    crate::data::read::set_max_pixels(cli.max_pixels);
    let done = |r: anyhow::Result<()>| r.map(|()| 0);
    match cli.command {
        Command::Devices(a) => done(bench::devices(a)),
        Command::Bench(a) => done(bench::bench(a)),
        Command::Tune(a) => done(bench::tune(a)),
        Command::Train(a) => train::train(a),
        Command::Infer(a) => infer::infer(a),
        Command::Eval(a) => done(eval::eval(a)),
        Command::Data(c) => done(data::run(c)),
    }
}

/// `--pixel-spacing`, `--model-spacing`: millimetres per pixel, a positive
/// number below 10. The one parser of every command that takes a spacing.
/// `ROW,COL` pixel spacings in mm, or one value for both.
pub fn parse_spacing_pair(s: &str) -> Result<(f64, f64), String> {
    match s.split_once(',') {
        Some((r, c)) => Ok((parse_spacing(r)?, parse_spacing(c)?)),
        None => parse_spacing(s).map(|v| (v, v)),
    }
}

pub fn parse_spacing(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a number of millimetres"))?;
    if v > 0.0 && v < 10.0 {
        Ok(v)
    } else {
        Err(format!(
            "{v} mm is not a pixel spacing (expected e.g. 0.05 or 0.2)"
        ))
    }
}

/// `--threshold`: a probability in [0, 1]. The one parser of every command
/// that takes a threshold.
pub fn parse_probability(s: &str) -> Result<f32, String> {
    let v: f32 = s
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a number"))?;
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{v} is not in [0, 1]"))
    }
}

/// Creates `--out` and checks that it takes files, before any long work;
/// a folder that cannot be written is bad input.
fn writable_out(dir: &Path) -> anyhow::Result<()> {
    crate::fsio::ensure_writable_dir(dir).map_err(|e| {
        bad(format!(
            "--out {} cannot be written: {}",
            dir.display(),
            e.root_cause()
        ))
    })
}

/// The checkpoint files `--checkpoint` names (one or more: several are an
/// ensemble whose maps are averaged). A folder stands for the
/// `.safetensors` files in it, sorted by name; a training run's folder is
/// refused, since its checkpoint and best model are one run twice.
fn checkpoint_files(args: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    if args.is_empty() {
        return Err(bad("--checkpoint is needed"));
    }
    let mut files = Vec::new();
    for path in args {
        if path.is_file() {
            files.push(path.clone());
        } else if path.is_dir() {
            files.extend(folder_checkpoints(path)?);
        } else {
            return Err(bad(format!("checkpoint {} does not exist", path.display())));
        }
    }
    Ok(files)
}

/// The `.safetensors` files of a model folder, sorted (bad input if none,
/// or if it is a training run's folder).
fn folder_checkpoints(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    if dir.join(crate::run_folder::CHECKPOINT).is_file() {
        return Err(bad(format!(
            "--checkpoint {} is a training run's folder: name its {} (or {}) instead",
            dir.display(),
            crate::run_folder::BEST,
            crate::run_folder::CHECKPOINT
        )));
    }
    let entries =
        std::fs::read_dir(dir).map_err(|e| bad(format!("--checkpoint {}: {e}", dir.display())))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(bad(format!(
            "--checkpoint {} is a folder with no .safetensors file",
            dir.display()
        )));
    }
    Ok(files)
}

/// Reads and checks each checkpoint on the host (before any GPU work): an
/// unreadable or invalid checkpoint is bad input.
fn read_checkpoints(files: &[PathBuf]) -> anyhow::Result<Vec<(PathBuf, crate::model::Checkpoint)>> {
    files
        .iter()
        .map(|path| {
            crate::model::Checkpoint::read(path, crate::model::Load::Weights)
                .map(|c| (path.clone(), c))
                .map_err(bad_input)
        })
        .collect()
}

/// Network runs from which a batch of `engine infer` or `engine eval`
/// reads its convolutions' inputs as texels on CPU adapters
/// (`Variants::many_runs`). With an empty shader cache the texel kernels
/// cost about 3 s more to compile (a first scan: 20.4 s against 23.3),
/// and save a third of a run (640x640 at width 0.25: 580 -> 370 ms), so a
/// few dozen runs pay them back; a warm cache gains from the first. The
/// maps are bit-identical either way: a scan's map does not depend on its
/// batch.
const MANY_RUNS: usize = 64;

/// Sets the kernel rules for `scans` scans through `predictor`.
fn choose_kernels(gpu: &crate::gpu::Gpu, predictor: &crate::predictor::Predictor, scans: usize) {
    let runs = scans * predictor.runs_per_scan();
    gpu.variants().set_many_runs(runs >= MANY_RUNS);
}

/// Uploads checkpoints read by [`read_checkpoints`] as one predictor.
fn load_predictor(
    gpu: &crate::gpu::Gpu,
    checkpoints: Vec<(PathBuf, crate::model::Checkpoint)>,
    tta: crate::tta::Tta,
) -> anyhow::Result<crate::predictor::Predictor> {
    let mut members = Vec::new();
    for (path, ckpt) in checkpoints {
        let (mut model, meta) = crate::model::Model::from_checkpoint(gpu, ckpt)?;
        // Inference only: batch norm is folded into the convs once, here.
        model.freeze(gpu)?;
        let spacing = crate::spacing::ModelSpacing::from_meta(&meta, &path).map_err(bad_input)?;
        if spacing.is_none() {
            eprintln!(
                "note: {} records no pixel spacing (written before spacing was tracked): inputs run at their own pixels",
                path.display()
            );
        }
        members.push(crate::predictor::Member {
            model,
            spacing,
            name: path.display().to_string(),
        });
    }
    Ok(crate::predictor::Predictor::new(members)?.with_tta(tta))
}

/// A width multiplier a checkpoint can record: in (0, 16].
fn check_width(width: f32) -> anyhow::Result<()> {
    if width > 0.0 && width <= 16.0 {
        Ok(())
    } else {
        Err(bad(format!("--width {width} is not in (0, 16]")))
    }
}

/// A fraction flag: in [0, 1).
fn check_fraction(flag: &str, value: f64) -> anyhow::Result<()> {
    if (0.0..1.0).contains(&value) {
        Ok(())
    } else {
        Err(bad(format!("{flag} {value} is not in [0, 1)")))
    }
}

/// A count or size flag that must be at least `min`.
fn check_at_least(flag: &str, value: usize, min: usize) -> anyhow::Result<()> {
    if value >= min {
        Ok(())
    } else {
        Err(bad(format!("{flag} {value} is less than {min}")))
    }
}
