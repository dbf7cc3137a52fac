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

#[derive(Debug, Subcommand)]
pub enum Command {
    /// List the GPU adapters wgpu reaches and their limits.
    Devices,
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
    /// The validation metric whose best epoch is kept as best.safetensors.
    #[arg(long, value_enum, default_value_t = crate::train::Select::PixelAp)]
    pub select: crate::train::Select,
    /// Millimetres per network pixel the model works at (recorded in the
    /// checkpoint; infer and eval resample inputs to it). Default: the
    /// training data's spacing / 0.66, the paper's downscale.
    #[arg(long, value_parser = crate::data::cli::parse_spacing)]
    pub model_spacing: Option<f64>,
    /// Millimetres per pixel of training images whose manifest records
    /// none (sets prepared before spacing was recorded).
    #[arg(long, value_parser = crate::data::cli::parse_spacing)]
    pub pixel_spacing: Option<f64>,
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
    /// Millimetres per pixel of inputs whose file declares none (PNG, PGM,
    /// JPEG, DICOM without Pixel Spacing). Without it such inputs are taken
    /// to have the spacing of the model's training data, with a warning.
    #[arg(long, value_parser = crate::data::cli::parse_spacing)]
    pub pixel_spacing: Option<f64>,
    /// Input images (PNG, PGM, JPEG or DICOM, any size) and folders
    /// (searched recursively).
    #[arg(required_unless_present = "merge")]
    pub inputs: Vec<std::path::PathBuf>,
}

/// Runs `engine train`; returns the process exit status (0, or
/// `EXIT_INTERRUPTED` after Ctrl-C).
pub fn train(a: TrainArgs) -> anyhow::Result<i32> {
    // Before any GPU work: the run folder must be new (or resumed or
    // overwritten on purpose) and take files.
    crate::train::RunLock::check_free(&a.out)?;
    crate::run_folder::check_run_folder(&a.out, a.resume, a.overwrite)?;
    crate::fsio::ensure_writable_dir(&a.out)?;
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
        spacing: None,
        select: a.select,
    };
    crate::run_folder::write_config(&a.out, &a, &gpu, a.data.as_deref(), a.resume)?;
    let source = match a.data.clone() {
        Some(dir) => crate::train::Source::Prepared(dir),
        None => crate::train::Source::Synthetic {
            n: a.synthetic.unwrap_or(64),
            size: a.synthetic_size,
        },
    };
    let (mut train, mut val) = crate::train::samples(&source, a.val_fraction, a.seed)?;
    let spacing = crate::train::resolve_spacing(
        &mut train,
        &mut val,
        a.pixel_spacing,
        a.model_spacing,
        a.data.as_deref(),
    )
    .map_err(|e| anyhow::Error::new(crate::eval::BadInput(format!("{e:#}"))))?;
    let cfg = crate::train::TrainConfig {
        spacing: Some(spacing),
        ..cfg
    };
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
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    {
        let stop = stop.clone();
        // First Ctrl-C: checkpoint after the current step and exit 130.
        // Second: exit at once (the last complete checkpoint is intact:
        // checkpoints are renamed into place only when fully written).
        let _ = ctrlc::set_handler(move || {
            if stop.swap(true, std::sync::atomic::Ordering::SeqCst) {
                eprintln!("second Ctrl-C: exiting now without saving");
                std::process::exit(EXIT_INTERRUPTED);
            }
            eprintln!("Ctrl-C: saving a checkpoint after this step (Ctrl-C again to quit at once)");
        });
    }
    let run = crate::train::RunDir(a.out.clone());
    let start = std::time::Instant::now();
    let stop_requested = |_step: u64| stop.load(std::sync::atomic::Ordering::SeqCst);
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
    // The checkpoint is read and checked on the host before any GPU work
    // (weights only: inference needs no Adam state).
    let ckpt = crate::model::Checkpoint::read(&checkpoint, crate::model::Load::Weights)
        .map_err(|e| bad(format!("{e:#}")))?;
    let gpu = Gpu::new(a.adapter.adapter.as_deref())?;
    let (model, meta) = crate::model::Model::from_checkpoint(&gpu, ckpt)?;
    let spacing = crate::spacing::ModelSpacing::from_meta(&meta, &checkpoint)
        .map_err(|e| bad(format!("{e:#}")))?;
    if spacing.is_none() {
        eprintln!(
            "note: {} records no pixel spacing (written before spacing was tracked): inputs run at their own pixels",
            checkpoint.display()
        );
    }
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
        spacing,
        pixel_spacing: a.pixel_spacing,
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
    let assumed = report
        .rows
        .iter()
        .filter(|r| r.spacing_source == crate::spacing::Origin::Assumed.name())
        .count();
    if let (Some(m), true) = (spacing, assumed > 0) {
        eprintln!(
            "{}",
            crate::spacing::assumed_warning(&format!("{assumed} input(s)"), &m)
        );
    }
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
    /// Time every variant of the convolution cases (not only the chosen
    /// one and the first-generation baseline).
    #[arg(long)]
    pub all_variants: bool,
    /// Leave out the CPU reference column (im2col + multithreaded SGEMM).
    #[arg(long)]
    pub no_cpu: bool,
    /// Time the whole network instead: training steps (forward, loss,
    /// backward, Adam) and inferences, with per-family GPU time shares.
    #[arg(long)]
    pub model: bool,
    #[command(flatten)]
    pub net: NetShape,
    /// With --model: print one JSON object.
    #[arg(long)]
    pub json: bool,
    /// With --model: first time the same network with the first-generation
    /// kernels and no fusion, for a before/after in one run.
    #[arg(long)]
    pub baseline: bool,
}

/// The network and sizes `bench --model` and `tune` run.
#[derive(Debug, Args, Clone)]
pub struct NetShape {
    /// Width multiplier of the network.
    #[arg(long, default_value_t = 0.25)]
    pub width: f32,
    /// Training crop size (square).
    #[arg(long = "train-size", default_value_t = 320)]
    pub train_size: usize,
    /// Training batch.
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    /// Inference image size (square).
    #[arg(long = "infer-size", default_value_t = 640)]
    pub infer_size: usize,
}

#[derive(Debug, Args)]
pub struct TuneArgs {
    #[command(flatten)]
    pub adapter: AdapterArg,
    #[command(flatten)]
    pub net: NetShape,
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
    if args.model {
        return bench_model(&gpu, &args.net, args.iters.max(1), args.json, args.baseline);
    }
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
    println!(
        "{:<34} {:<24} {:>10} {:>16} {:>18} {:>18}",
        "kernel", "variant", "ms", "rate", "baseline (gather)", "CPU im2col+SGEMM"
    );
    let runs = crate::bench::run(
        &gpu,
        shape,
        args.iters.max(1),
        &args.filter,
        args.all_variants,
        !args.no_cpu,
    )?;
    for m in runs {
        let base = m
            .baseline
            .map(|(_, r)| format!("{r:>8.2} {}", m.unit))
            .unwrap_or_default();
        let cpu = m
            .cpu
            .map(|(_, r)| format!("{r:>8.2} {}", m.unit))
            .unwrap_or_default();
        println!(
            "{:<34} {:<24} {:>10.3} {:>8.2} {:<7} {:>18} {:>18}",
            m.name, m.variant, m.ms, m.rate, m.unit, base, cpu
        );
    }
    Ok(())
}

fn bench_model(
    gpu: &Gpu,
    net: &NetShape,
    iters: usize,
    json: bool,
    baseline: bool,
) -> anyhow::Result<()> {
    let run = |base: bool| {
        gpu.variants().set_baseline(base);
        let m = crate::bench::model(
            gpu,
            net.width,
            net.batch,
            net.train_size,
            net.infer_size,
            iters,
        );
        gpu.variants().set_baseline(false);
        m
    };
    let before = if baseline { Some(run(true)?) } else { None };
    let m = run(false)?;
    if json {
        let mut v = serde_json::to_value(&m)?;
        if let Some(b) = &before {
            v["baseline"] = serde_json::to_value(b)?;
        }
        println!("{v}");
        return Ok(());
    }
    println!(
        "adapter: {}; width {}; {} runs each after one warm-up",
        m.adapter, m.width, iters
    );
    let rows = [("now", &m)].into_iter().chain(
        before
            .as_ref()
            .map(|b| ("first-generation kernels, unfused", b)),
    );
    for (what, r) in rows {
        println!("{what}:");
        println!(
            "  training step, batch {} at {}x{}: {:.1} ms ({:.0} dispatches, {:.0} submits); peak tensors {:.1} MiB",
            r.batch,
            r.train_size,
            r.train_size,
            r.train_step_ms,
            r.dispatches_per_step,
            r.submits_per_step,
            r.peak_mib
        );
        println!(
            "  inference, {}x{}: {:.1} ms ({:.0} dispatches)",
            r.infer_size, r.infer_size, r.infer_ms, r.dispatches_per_infer
        );
    }
    if let Some(b) = &before {
        println!(
            "speed-up: training step x{:.2}, inference x{:.2}",
            b.train_step_ms / m.train_step_ms,
            b.infer_ms / m.infer_ms
        );
    }
    if !m.shares.is_empty() {
        println!("{:<16} {:>10} {:>10}", "GPU time share", "train", "infer");
        for (family, share) in &m.shares {
            let inf = m.infer_shares.get(family).copied().unwrap_or(0.0);
            println!("{family:<16} {:>9.1}% {:>9.1}%", share * 100.0, inf * 100.0);
        }
    }
    Ok(())
}

pub fn tune(args: TuneArgs) -> anyhow::Result<()> {
    let gpu = Gpu::new(args.adapter.adapter.as_deref())?;
    gpu.variants().set_mode(crate::gpu::TuneMode::On);
    let n = &args.net;
    eprintln!(
        "tuning width {} (training batch {} at {}, inference at {}) on {}",
        n.width, n.batch, n.train_size, n.infer_size, gpu.info.name
    );
    crate::bench::model(&gpu, n.width, n.batch, n.train_size, n.infer_size, 1)?;
    for (key, winner) in gpu.variants().table() {
        println!("{key:<60} {winner}");
    }
    match gpu.variants().path() {
        Some(p) => println!("saved in {}", p.display()),
        None => println!("no cache folder (HOME unset): the choices were not saved"),
    }
    Ok(())
}
