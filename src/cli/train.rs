//! `engine train`.
use super::{
    AdapterArg, EXIT_INTERRUPTED, check_at_least, check_fraction, check_width, writable_out,
};
use crate::data::prepared::Sample;
use crate::error::{bad, bad_input};
use crate::gpu::Gpu;
use crate::spacing::ModelSpacing;
use crate::train::{RunDir, TrainConfig};
use clap::Args;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Debug, Args, serde::Serialize)]
pub struct TrainArgs {
    #[command(flatten)]
    pub adapter: AdapterArg,
    /// Prepared folder (`engine prepare ...` or `engine synth` output).
    /// Give it more than once to train on several sets: each epoch holds
    /// every set's full training images once, plus ROI crops drawn from all
    /// sets' crops together; validation reports each set's numbers.
    #[arg(long, conflicts_with = "synthetic")]
    pub data: Vec<std::path::PathBuf>,
    /// Train on N synthetic phantoms generated in memory instead (the
    /// default, with 64, when --data is not given).
    #[arg(long)]
    pub synthetic: Option<usize>,
    /// Side of the synthetic phantoms.
    #[arg(long, default_value_t = 192)]
    pub synthetic_size: usize,
    /// Run folder: checkpoint.safetensors, best.safetensors (swa.safetensors
    /// with --swa), config.json,
    /// metrics.jsonl, metrics.csv and curves.png go here. A non-empty
    /// folder is refused unless --resume or --overwrite.
    #[arg(long, default_value = "runs/train")]
    pub out: std::path::PathBuf,
    /// Continue the run in --out from its checkpoint.
    #[arg(long, conflicts_with = "overwrite")]
    pub resume: bool,
    /// Start from the weights and batch-norm statistics of this checkpoint
    /// (fine-tuning, or training a model longer under a new schedule)
    /// instead of random ones. Its width, resize mode and model spacing
    /// must be this run's; the Adam moments start at zero and the epochs
    /// count from 1.
    #[arg(long, value_name = "CHECKPOINT", conflicts_with = "resume")]
    pub init: Option<std::path::PathBuf>,
    /// Start a new run in a non-empty --out, removing its run files first.
    #[arg(long)]
    pub overwrite: bool,
    /// Crop sizes and their epoch counts, e.g. 320:20,480:10,640:10.
    #[arg(long, default_value = "320:20,480:10,640:10")]
    pub sizes: String,
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// Images per forward/backward pass (gradients are accumulated).
    #[arg(long, default_value_t = 4)]
    pub micro_batch: usize,
    #[arg(long, default_value_t = 1e-3)]
    #[serde(serialize_with = "crate::run_folder::short_f32")]
    pub lr: f32,
    /// lr is multiplied by 0.85 every this many epochs.
    #[arg(long, default_value_t = 10)]
    pub decay_every: usize,
    #[arg(long, default_value_t = 15.0)]
    #[serde(serialize_with = "crate::run_folder::short_f32")]
    pub pos_weight: f32,
    /// Width multiplier (docs/MODEL.md); e.g. 0.25 for CPU-sized experiments.
    #[arg(long, default_value_t = 1.0)]
    #[serde(serialize_with = "crate::run_folder::short_f32")]
    pub width: f32,
    /// Use nearest resizes (the original code's choice) instead of bilinear.
    #[arg(long)]
    pub nearest: bool,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Fraction held out for validation when the data has no val split.
    #[arg(long, default_value_t = 0.15)]
    pub val_fraction: f64,
    /// Recompute the batch-norm running statistics over this many training
    /// micro-batches at the end of each epoch (0: docs/MODEL.md's moving averages
    /// only). Short runs need it: the moving averages move 1% per step.
    #[arg(long, default_value_t = 0)]
    pub precise_bn: usize,
    /// Data loader threads.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Also average the weights of the last N epochs into swa.safetensors
    /// (stochastic weight averaging, batch norm recomputed for the average;
    /// 0: off): one model with no epoch chosen on validation.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub swa: usize,
    /// Which epoch best.safetensors keeps: the best by a validation metric,
    /// or the last.
    #[arg(long, value_enum, default_value_t = crate::train::Select::PixelAp)]
    pub select: crate::train::Select,
    /// Millimetres per network pixel the model works at (recorded in the
    /// checkpoint; infer and eval resample inputs to it). Default: the
    /// training data's spacing / 0.66, the paper's downscale.
    #[arg(long, value_parser = super::parse_spacing)]
    pub model_spacing: Option<f64>,
    /// Millimetres per pixel of training images whose manifest records
    /// none (sets prepared before spacing was recorded).
    #[arg(long, value_parser = super::parse_spacing)]
    pub pixel_spacing: Option<f64>,
}

/// Training steps from which `engine train` picks the kernels that
/// compile longer but run faster (`Variants::long_run`). On lavapipe the
/// wider tiles add about 7 s of compile per kernel and save a sixth of a
/// step: a CBIS-DDSM run (5000 steps) gains, the quick start (64 steps)
/// would mostly wait for them.
const LONG_RUN_STEPS: usize = 1000;

/// Says why a long run's first step on a CPU adapter is slow: it times
/// two to four variants per convolution shape, tiles (2-D ones too) and
/// texel or storage reads (`ConvVariant::long_run_rivals`), each compiled
/// first unless Mesa's shader cache has it.
fn note_long_run_timing(gpu: &Gpu) {
    let v = gpu.variants();
    if gpu.is_cpu() && v.long_run() && v.mode() == crate::gpu::TuneMode::Cache {
        let file = v
            .path()
            .map_or("memory".into(), |p| p.display().to_string());
        println!(
            "long run: the first step times two to four kernel variants per convolution shape not yet in {file}, compiling those not in Mesa's shader cache (minutes on a new machine; ENGINE_TUNE=off keeps to the rules)"
        );
    }
}

/// Runs `engine train`; returns the process exit status (0, or
/// `EXIT_INTERRUPTED` after Ctrl-C). Everything that can be checked on
/// the host (the run folder, the settings, the data, a resumed checkpoint)
/// is checked before any GPU work.
pub fn train(a: TrainArgs) -> anyhow::Result<i32> {
    check_run_folder(&a)?;
    let cfg = config(&a)?;
    let (train, val, spacing) = samples(&a)?;
    let cfg = TrainConfig {
        spacing: Some(spacing),
        ..cfg
    };
    let run = RunDir(a.out.clone());
    if a.resume {
        crate::train::check_resume(&cfg, &run)?;
    }
    crate::train::check_init(&cfg)?;
    let gpu = Gpu::new(a.adapter.adapter.as_deref())?;
    // Thousands of steps pay back kernels that compile longer but run
    // faster; a short run (the quick start) would mostly wait for them.
    let steps: usize = cfg.sizes.iter().map(|&(_, epochs)| epochs).sum::<usize>()
        * train.len().div_ceil(cfg.batch.max(1));
    gpu.variants().set_long_run(steps >= LONG_RUN_STEPS);
    crate::run_folder::write_config(&a.out, &a, &gpu, &a.data, a.resume)?;
    println!(
        "adapter: {}; {} training and {} validation images at {:.3} mm/pixel (model {:.3} mm/pixel); sizes {}; batch {} in micro-batches of {}",
        gpu.info.name,
        train.len(),
        val.len(),
        spacing.data_mm,
        spacing.model_mm,
        a.sizes,
        cfg.batch,
        cfg.micro_batch
    );
    note_long_run_timing(&gpu);
    let stop = ctrl_c_flag();
    let start = std::time::Instant::now();
    let stop_requested = |_step: u64| stop.load(Ordering::SeqCst);
    let done = crate::train::train(
        &gpu,
        &cfg,
        train,
        val,
        &run,
        a.resume,
        &stop_requested,
        false,
    )?;
    if let Some((epoch, step)) = done.interrupted {
        eprintln!(
            "interrupted at epoch {epoch} step {step}; resume with --resume (checkpoint {})",
            run.checkpoint().display()
        );
        return Ok(EXIT_INTERRUPTED);
    }
    println!(
        "done in {:.1} s; checkpoint {}; metrics {}",
        start.elapsed().as_secs_f64(),
        run.checkpoint().display(),
        run.metrics().display()
    );
    Ok(0)
}

/// The run folder must be free, new (or resumed or overwritten on
/// purpose) and take files.
fn check_run_folder(a: &TrainArgs) -> anyhow::Result<()> {
    crate::train::RunLock::check_free(&a.out).map_err(bad_input)?;
    crate::run_folder::check_run_folder(&a.out, a.resume, a.overwrite)?;
    writable_out(&a.out)
}

/// The settings of the run (its spacing comes with the data); bad values
/// are bad input.
fn config(a: &TrainArgs) -> anyhow::Result<TrainConfig> {
    check_width(a.width)?;
    check_at_least("--batch", a.batch, 1)?;
    check_at_least("--micro-batch", a.micro_batch, 1)?;
    check_at_least("--synthetic-size", a.synthetic_size, 1)?;
    let micro_batch = a.micro_batch.min(a.batch);
    if !a.batch.is_multiple_of(micro_batch) {
        return Err(bad(format!(
            "--batch {} must be a multiple of --micro-batch {micro_batch}",
            a.batch
        )));
    }
    check_fraction("--val-fraction", a.val_fraction)?;
    if !(a.lr.is_finite() && a.lr > 0.0) {
        return Err(bad(format!("--lr {} is not a positive number", a.lr)));
    }
    let sizes = crate::train::parse_sizes(&a.sizes)
        .map_err(|e| bad(format!("--sizes {:?}: {e:#}", a.sizes)))?;
    let cfg = TrainConfig {
        sizes,
        batch: a.batch,
        micro_batch,
        lr: a.lr,
        decay: 0.85,
        decay_every: a.decay_every,
        pos_weight: a.pos_weight,
        width: a.width,
        resize: if a.nearest {
            crate::ops::resize::Mode::Nearest
        } else {
            crate::ops::resize::Mode::Bilinear
        },
        seed: a.seed,
        threads: a.threads.max(1),
        precise_bn: a.precise_bn,
        spacing: None,
        select: a.select,
        swa: a.swa,
        init: a.init.clone(),
    };
    cfg.swa_start()?;
    Ok(cfg)
}

/// The training and validation samples and the spacings of the run.
fn samples(a: &TrainArgs) -> anyhow::Result<(Vec<Sample>, Vec<Sample>, ModelSpacing)> {
    let source = match a.data.is_empty() {
        false => crate::train::Source::Prepared(a.data.clone()),
        true => crate::train::Source::Synthetic {
            n: a.synthetic.unwrap_or(64),
            size: a.synthetic_size,
        },
    };
    let (mut train, mut val) = crate::train::samples(&source, a.val_fraction, a.seed)?;
    if train.is_empty() {
        return Err(bad(if a.data.is_empty() {
            "--synthetic 0: no training images".to_string()
        } else {
            format!(
                "--data {}: no training images",
                a.data
                    .iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }));
    }
    let spacing = crate::train::resolve_spacing(
        &mut train,
        &mut val,
        a.pixel_spacing,
        a.model_spacing,
        a.data.first().map(|d| d.as_path()),
    )
    .map_err(bad_input)?;
    Ok((train, val, spacing))
}

/// The flag Ctrl-C sets. First Ctrl-C: checkpoint after the current step
/// and exit 130. Second: exit at once (the last complete checkpoint is
/// intact: checkpoints are renamed into place only when fully written).
fn ctrl_c_flag() -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let _ = ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            eprintln!("second Ctrl-C: exiting now without saving");
            std::process::exit(EXIT_INTERRUPTED);
        }
        eprintln!("Ctrl-C: saving a checkpoint after this step (Ctrl-C again to quit at once)");
    });
    stop
}
