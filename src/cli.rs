//! The `engine` command line: `devices`, `bench`, and the data commands.
use crate::gpu::{Gpu, list_adapters};
use anyhow::Context;
use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "engine",
    version,
    about = "Train and run the mammography dense-prediction network on any GPU wgpu reaches"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args, Clone, serde::Serialize)]
pub struct AdapterArg {
    /// Adapter to use: part of its name or its index in `engine devices`
    /// (default: the best one; also settable with ENGINE_ADAPTER).
    #[arg(long, global = true)]
    pub adapter: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// List the GPU adapters wgpu reaches and their limits.
    Devices,
    /// Time each kernel at one shape (GFLOP/s or GB/s).
    Bench(BenchArgs),
    /// Train the network (on a prepared folder, or on synthetic phantoms).
    Train(TrainArgs),
    /// Probability maps, masks and heatmap overlays for image files and folders
    /// (PNG, PGM, JPEG, DICOM), results.csv, and DICOM results for DICOM inputs.
    Infer(InferArgs),
    /// Evaluate a checkpoint on a prepared set: metrics, curves, thresholds, panels
    Eval(crate::eval::EvalArgs),
    #[command(flatten)]
    Data(crate::data::cli::DataCommand),
}

#[derive(Debug, Args, serde::Serialize)]
pub struct TrainArgs {
    #[command(flatten)]
    pub adapter: AdapterArg,
    /// Prepared folder (`engine prepare ...` or `engine synth` output).
    #[arg(long, conflicts_with = "synthetic")]
    pub data: Option<std::path::PathBuf>,
    /// Train on N synthetic phantoms generated in memory instead (the
    /// default, with 64, when --data is not given).
    #[arg(long)]
    pub synthetic: Option<usize>,
    /// Side of the synthetic phantoms.
    #[arg(long, default_value_t = 192)]
    pub synthetic_size: usize,
    /// Run folder: checkpoint.safetensors, best.safetensors, config.json,
    /// metrics.jsonl, metrics.csv and curves.png go here. A non-empty
    /// folder is refused unless --resume or --overwrite.
    #[arg(long, default_value = "runs/train")]
    pub out: std::path::PathBuf,
    /// Continue the run in --out from its checkpoint.
    #[arg(long, conflicts_with = "overwrite")]
    pub resume: bool,
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
    /// Width multiplier (MODEL.md); e.g. 0.25 for CPU-sized experiments.
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
    /// micro-batches at the end of each epoch (0: MODEL.md's moving averages
    /// only). Short runs need it: the moving averages move 1% per step.
    #[arg(long, default_value_t = 0)]
    pub precise_bn: usize,
    /// Data loader threads.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
}

#[derive(Debug, Args)]
pub struct InferArgs {
    #[command(flatten)]
    pub adapter: AdapterArg,
    /// A run's checkpoint.safetensors or best.safetensors.
    #[arg(long, required_unless_present = "merge")]
    pub checkpoint: Option<std::path::PathBuf>,
    /// Output folder (created, and checked to be writable, before any GPU
    /// work): outputs mirror each input's path relative to the folder it
    /// came from, and results.csv lists every input.
    #[arg(long, default_value = "runs/infer")]
    pub out: std::path::PathBuf,
    /// Probability above which a pixel is marked in the mask.
    #[arg(long, default_value_t = 0.5)]
    pub threshold: f32,
    /// Statistic of a probability map that scores an image (as in `engine eval`).
    #[arg(long, value_enum, default_value_t = crate::eval::metrics::ImageScore::Area)]
    pub image_score: crate::eval::metrics::ImageScore,
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
    pub shard: Option<crate::batch::Shard>,
    /// Also write results.json (settings and the same rows).
    #[arg(long)]
    pub json: bool,
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
    /// Input images (PNG, PGM, JPEG or DICOM, any size) and folders
    /// (searched recursively).
    #[arg(required_unless_present = "merge")]
    pub inputs: Vec<std::path::PathBuf>,
}

pub fn train(a: TrainArgs) -> anyhow::Result<()> {
    crate::run_folder::check_run_folder(&a.out, a.resume, a.overwrite)?;
    let gpu = Gpu::new(a.adapter.adapter.as_deref())?;
    let cfg = crate::train::TrainConfig {
        sizes: crate::train::parse_sizes(&a.sizes)?,
        batch: a.batch,
        micro_batch: a.micro_batch.min(a.batch),
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
    };
    crate::run_folder::write_config(&a.out, &a, &gpu, a.data.as_deref(), a.resume)?;
    let source = match a.data.clone() {
        Some(dir) => crate::train::Source::Prepared(dir),
        None => crate::train::Source::Synthetic {
            n: a.synthetic.unwrap_or(64),
            size: a.synthetic_size,
        },
    };
    let (train, val) = crate::train::samples(&source, a.val_fraction, a.seed)?;
    println!(
        "adapter: {}; {} training and {} validation images; sizes {}; batch {} in micro-batches of {}",
        gpu.info.name,
        train.len(),
        val.len(),
        a.sizes,
        cfg.batch,
        cfg.micro_batch
    );
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    {
        let stop = stop.clone();
        // First Ctrl-C: checkpoint after the current step and exit.
        let _ = ctrlc::set_handler(move || stop.store(true, std::sync::atomic::Ordering::SeqCst));
    }
    let run = crate::train::RunDir(a.out.clone());
    let start = std::time::Instant::now();
    let stop_requested = |_step: u64| stop.load(std::sync::atomic::Ordering::SeqCst);
    crate::train::train(
        &gpu,
        &cfg,
        train,
        val,
        &run,
        a.resume,
        &stop_requested,
        false,
    )?;
    println!(
        "done in {:.1} s; checkpoint {}; metrics {}",
        start.elapsed().as_secs_f64(),
        run.checkpoint().display(),
        run.metrics().display()
    );
    Ok(())
}

/// `engine infer`: returns the exit code (see [`crate::batch`]).
pub fn infer(a: InferArgs) -> anyhow::Result<i32> {
    use crate::batch::{self, Shard};
    use crate::eval::BadInput;
    let bad = |m: String| anyhow::Error::new(BadInput(m));
    if a.merge {
        let rows = batch::merge_shards(&a.out)?;
        let failed = rows.iter().filter(|r| r.status != batch::OK).count();
        println!(
            "{} inputs: {} ok, {failed} failed; results in {}",
            rows.len(),
            rows.len() - failed,
            a.out.join("results.csv").display()
        );
        return Ok(0);
    }
    let Some(checkpoint) = a.checkpoint.clone() else {
        return Err(bad("--checkpoint is needed (or --merge)".into()));
    };
    if !(0.0..=1.0).contains(&a.threshold) {
        return Err(bad(format!("--threshold {} is not in [0, 1]", a.threshold)));
    }
    if !checkpoint.is_file() {
        return Err(bad(format!(
            "checkpoint {} does not exist",
            checkpoint.display()
        )));
    }
    batch::prepare_out(&a.out)?;
    let (all, missing) = batch::collect_inputs(&a.inputs, a.glob.as_deref(), Some(&a.out))
        .map_err(|e| bad(format!("{e:#}")))?;
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
    let inputs = match a.shard {
        Some(s) => s.select(&all),
        None => all.clone(),
    };
    let results = a.out.join(Shard::file_name(a.shard, "results", "csv"));
    let gpu = Gpu::new(a.adapter.adapter.as_deref())?;
    let (model, _) = crate::model::Model::load(&gpu, &checkpoint)
        .map_err(|e| bad(format!("{}: {e:#}", checkpoint.display())))?;
    let opts = batch::BatchOptions {
        threshold: a.threshold,
        image_score: a.image_score,
        tiles: crate::infer::TileOptions {
            max_pixels: a.tile_above,
            tile: a.tile,
            margin: a.tile_margin,
        },
        npy: a.npy,
        dicom: a.dicom,
        model_name: model_name(&checkpoint, &model),
    };
    // Arguments that do not exist are reported once, by shard 0.
    let missing = if a.shard.is_none_or(|s| s.index == 0) {
        missing
    } else {
        Vec::new()
    };
    let report = batch::run_batch(
        &gpu,
        &model,
        &inputs,
        &missing,
        &a.out,
        &results,
        &opts,
        a.skip_existing,
        true,
    )?;
    let ok = report.rows.iter().filter(|r| r.status == batch::OK).count();
    let failed = report.rows.len() - ok;
    if a.json {
        let path = a.out.join(Shard::file_name(a.shard, "results", "json"));
        let j = batch::ResultsJson {
            checkpoint: checkpoint.display().to_string(),
            threshold: a.threshold,
            image_score: a.image_score.name().into(),
            shard: a.shard.map(|s| format!("{}/{}", s.index, s.count)),
            inputs: report.rows.len(),
            ok,
            failed,
            rows: report.rows.clone(),
        };
        std::fs::write(&path, serde_json::to_string_pretty(&j)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    println!(
        "{} inputs{}: {ok} ok ({} skipped as already done), {failed} failed; results in {}",
        report.rows.len(),
        a.shard
            .map(|s| format!(" (shard {}/{} of {})", s.index, s.count, all.len()))
            .unwrap_or_default(),
        report.skipped,
        report.results.display()
    );
    Ok(report.exit_code())
}

/// How DICOM results name the model: the checkpoint's file name and width.
fn model_name(checkpoint: &std::path::Path, model: &crate::model::Model) -> String {
    format!(
        "engine {} dense-prediction network (width {}), checkpoint {}",
        env!("CARGO_PKG_VERSION"),
        model.cfg.width,
        checkpoint
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    )
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub adapter: AdapterArg,
    /// Batch size.
    #[arg(long, default_value_t = 4)]
    pub n: usize,
    /// Channels (in and out) of the conv-family cases.
    #[arg(long, default_value_t = 64)]
    pub channels: usize,
    /// Spatial size (height = width).
    #[arg(long, default_value_t = 80)]
    pub size: usize,
    /// Timed runs per kernel, after one warm-up run.
    #[arg(long, default_value_t = 5)]
    pub iters: usize,
    /// Only the cases whose name contains this text.
    #[arg(long, default_value = "")]
    pub filter: String,
}

pub fn devices() -> anyhow::Result<()> {
    let adapters = list_adapters();
    if adapters.is_empty() {
        anyhow::bail!(crate::EngineError::NoAdapter {
            hint: String::new()
        });
    }
    for a in adapters {
        let l = &a.limits;
        println!(
            "[{}] {} ({:?}, {:?}, driver {} {})",
            a.index,
            a.info.name,
            a.info.device_type,
            a.info.backend,
            a.info.driver,
            a.info.driver_info
        );
        println!(
            "    max storage binding {} MiB, max buffer {} MiB, workgroup storage {} KiB, invocations/workgroup {}, timestamps {}",
            l.max_storage_buffer_binding_size >> 20,
            l.max_buffer_size >> 20,
            l.max_compute_workgroup_storage_size >> 10,
            l.max_compute_invocations_per_workgroup,
            if a.timestamps { "yes" } else { "no" }
        );
    }
    Ok(())
}

pub fn bench(args: BenchArgs) -> anyhow::Result<()> {
    let gpu = Gpu::new(args.adapter.adapter.as_deref())?;
    let shape = crate::bench::Shape {
        n: args.n,
        c: args.channels,
        h: args.size,
        w: args.size,
    };
    println!(
        "adapter: {} ({:?}); timing: {}; shape n={} c={} {}x{}; {} runs each",
        gpu.info.name,
        gpu.info.backend,
        if gpu.timestamps {
            "GPU timestamps"
        } else {
            "wall clock"
        },
        shape.n,
        shape.c,
        shape.h,
        shape.w,
        args.iters
    );
    println!("{:<40} {:>10} {:>12}", "kernel", "ms", "rate");
    for m in crate::bench::run(&gpu, shape, args.iters.max(1), &args.filter)? {
        println!("{:<40} {:>10.3} {:>8.2} {}", m.name, m.ms, m.rate, m.unit);
    }
    Ok(())
}
