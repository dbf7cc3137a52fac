//! `engine train`: progressive crop sizes, micro-batches with gradient
//! accumulation, Adam with docs/MODEL.md's schedule and L2 term, validation
//! metrics each epoch, atomic checkpoints every epoch and on Ctrl-C, resume,
//! and a stop with a clear message on a NaN or infinite loss.
use crate::data::augment::CROP_SCALE;
use crate::data::loader::{Batch, Loader, LoaderConfig};
use crate::data::prepared::{PreparedSet, Sample};
use crate::eval::metrics::Counts;
use crate::eval::{Accumulator, EvalOptions};
use crate::gpu::Gpu;
use crate::graph::Graph;
use crate::infer::{Spacings, TileOptions, probability_map_at};
use crate::model::{L2, L2_WEIGHTS, Meta, Model, ModelConfig};
use crate::ops::resize::Mode;
use crate::ops::{elementwise, loss, optim, reduce};
use crate::spacing::ModelSpacing;
use anyhow::{Context, bail};
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug)]
pub struct TrainConfig {
    /// (crop size, epochs) in order, e.g. 320 for 20 epochs then 480 for 10.
    pub sizes: Vec<(usize, usize)>,
    pub batch: usize,
    /// Images per forward/backward pass; gradients of a batch's micro-batches add up.
    pub micro_batch: usize,
    pub lr: f32,
    /// lr x `decay` every `decay_every` epochs (staircase).
    pub decay: f32,
    pub decay_every: usize,
    pub pos_weight: f32,
    pub width: f32,
    pub resize: Mode,
    pub seed: u64,
    pub threads: usize,
    /// Training batches over which the batch-norm running statistics are
    /// recomputed at the end of each epoch (0: keep docs/MODEL.md's moving
    /// averages as they are). See `recompute_bn_stats`.
    pub precise_bn: usize,
    /// The spacing the model works at and the data's (None: the data's
    /// spacing is unknown; crops are `size / 0.66` pixels as in the paper
    /// and the checkpoint records no spacing).
    pub spacing: Option<ModelSpacing>,
    /// The validation metric that picks `best.safetensors`.
    pub select: Select,
}

/// The validation metric that chooses the best epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Select {
    /// Pixel average precision: threshold-free, and the measure of how well
    /// the map ranks lesion pixels above the rest.
    PixelAp,
    /// Image-level ROC AUC (image score: `engine eval`'s area score).
    ImageAuc,
    /// Lesion IoU at threshold 0.5 (noisy on hard data: it is often 0).
    Iou,
}

impl Select {
    pub fn name(self) -> &'static str {
        match self {
            Select::PixelAp => "pixel-ap",
            Select::ImageAuc => "image-auc",
            Select::Iou => "iou",
        }
    }

    /// This metric of a validation (image AUC without both classes: 0).
    pub fn of(self, v: &Validation) -> f64 {
        match self {
            Select::PixelAp => v.pixel_ap,
            Select::ImageAuc => v.image_auc.unwrap_or(0.0),
            Select::Iou => v.counts.iou(),
        }
    }
}

impl TrainConfig {
    pub fn epochs(&self) -> usize {
        self.sizes.iter().map(|s| s.1).sum()
    }

    pub fn size_at(&self, epoch: usize) -> usize {
        let mut e = epoch;
        for &(size, n) in &self.sizes {
            if e < n {
                return size;
            }
            e -= n;
        }
        self.sizes.last().map(|s| s.0).unwrap_or(320)
    }

    pub fn lr_at(&self, epoch: usize) -> f32 {
        self.lr * self.decay.powi((epoch / self.decay_every.max(1)) as i32)
    }

    /// The settings a resumed run must keep, as checkpoint metadata.
    fn to_meta(&self) -> Vec<(String, String)> {
        let sizes: Vec<String> = self.sizes.iter().map(|(s, e)| format!("{s}:{e}")).collect();
        vec![
            ("train.sizes".into(), sizes.join(",")),
            ("train.batch".into(), self.batch.to_string()),
            ("train.micro_batch".into(), self.micro_batch.to_string()),
            ("train.lr".into(), self.lr.to_string()),
            ("train.decay".into(), self.decay.to_string()),
            ("train.decay_every".into(), self.decay_every.to_string()),
            ("train.seed".into(), self.seed.to_string()),
            ("train.select".into(), self.select.name().into()),
            (
                "train.pixel_spacing_mm".into(),
                self.spacing
                    .map(|s| s.model_mm.to_string())
                    .unwrap_or_else(|| "none".into()),
            ),
        ]
    }
}

/// Parses `320:20,480:10` (size:epochs pairs).
pub fn parse_sizes(s: &str) -> anyhow::Result<Vec<(usize, usize)>> {
    s.split(',')
        .map(|p| {
            let (a, b) = p
                .split_once(':')
                .with_context(|| format!("'{p}' is not SIZE:EPOCHS"))?;
            let size: usize = a
                .trim()
                .parse()
                .with_context(|| format!("bad size in '{p}'"))?;
            let epochs: usize = b
                .trim()
                .parse()
                .with_context(|| format!("bad epoch count in '{p}'"))?;
            if size < 32 || epochs == 0 {
                bail!("'{p}': sizes are at least 32 and epoch counts at least 1");
            }
            Ok((size, epochs))
        })
        .collect()
}

/// Probabilities for a batch in inference mode (running statistics).
pub fn predict(
    gpu: &Gpu,
    model: &Model,
    images: &[f32],
    n: usize,
    h: usize,
    w: usize,
) -> anyhow::Result<Vec<f32>> {
    let x = gpu.upload(&[n, 1, h, w], images)?;
    let logits = if gpu.variants().baseline() {
        // The first-generation path: the tape in eval mode, nothing fused.
        let mut g = Graph::new(gpu, false);
        let x = g.input(x);
        let out = model.forward(&mut g, x)?;
        g.take(out)
    } else {
        model.forward_folded(gpu, x)?
    };
    let p = elementwise::sigmoid(gpu, &logits)?;
    Ok(gpu.read(&p)?)
}

/// One validation: whole films through `engine eval`'s path.
#[derive(Clone, Debug, Default)]
pub struct Validation {
    /// Pixel counts at threshold 0.5.
    pub counts: Counts,
    /// Pixel average precision (threshold-free).
    pub pixel_ap: f64,
    /// Image-level ROC AUC (None without both positive and negative films).
    pub image_auc: Option<f64>,
    pub image_ap: f64,
}

/// Validates on whole films, as `engine eval` does: each film is resampled
/// to the model's spacing, run, and its map compared with the mask at the
/// film's own pixels. Without a known spacing the films are shrunk by the
/// paper's 0.66, the scale training crops have. Films whose mask is
/// incomplete are left out.
pub fn validate(
    gpu: &Gpu,
    model: &Model,
    films: &[Sample],
    spacing: Option<ModelSpacing>,
) -> anyhow::Result<Validation> {
    let mut acc = Accumulator::new(EvalOptions {
        panels: false,
        ..EvalOptions::default()
    });
    for s in films.iter().filter(|s| s.mask_complete) {
        let (scan, mask) = s.load()?;
        let spacings = match (spacing, s.spacing_mm) {
            (Some(m), Some(own)) => Spacings {
                input_mm: own,
                model_mm: m.model_mm,
            },
            _ => Spacings {
                input_mm: 1.0,
                model_mm: CROP_SCALE,
            },
        };
        let prob = probability_map_at(gpu, model, &scan, Some(spacings), &TileOptions::default())
            .with_context(|| format!("validating on {}", s.id))?;
        acc.add(&s.id, &mask, &prob);
    }
    if acc.records().is_empty() {
        return Ok(Validation::default());
    }
    let summary = acc.finish();
    Ok(Validation {
        counts: Counts {
            tp: summary.pixel.counts.tp,
            fp: summary.pixel.counts.fp,
            fn_: summary.pixel.counts.fn_,
            tn: summary.pixel.counts.tn,
        },
        pixel_ap: summary.pixel.average_precision,
        image_auc: summary.image.roc_auc,
        image_ap: summary.image.average_precision,
    })
}

/// Replaces every batch-norm layer's running statistics by their average
/// over `batches` training batches under the current weights (PreciseBN).
///
/// Why: docs/MODEL.md's running statistics move by 1% per step, so after a
/// short run they are still mostly their initial values (mean 0, var 1) and
/// statistics of earlier weights; inference with them can be far off what
/// training sees (measured: a phantom model with held-out IoU 0.86 using
/// batch statistics scored 0.00 with its running statistics after 96
/// steps). Batch k is folded in with momentum 1/k, which gives the plain
/// average. Nothing else changes: no gradients, no parameter updates.
pub fn recompute_bn_stats(
    gpu: &Gpu,
    model: &Model,
    samples: &[Sample],
    loader: &LoaderConfig,
    batches: usize,
) -> anyhow::Result<()> {
    let size = loader.size;
    let cfg = LoaderConfig {
        // Its own stream of crops, apart from the training epochs'.
        epoch: u64::MAX,
        augment: true,
        drop_last: true,
        ..loader.clone()
    };
    for (k, b) in Loader::new(samples.to_vec(), cfg).take(batches).enumerate() {
        let b = b?;
        let mut g = Graph::new(gpu, true);
        g.bn_momentum = 1.0 / (k + 1) as f32;
        let x = g.input(gpu.upload(&[b.n, 1, size, size], &b.images)?);
        model.forward(&mut g, x)?;
    }
    Ok(())
}

/// A resumed run must use the settings it was started with, or it would
/// not continue the same run: names what differs.
fn check_resume_settings(
    cfg: &TrainConfig,
    model: &Model,
    meta: &Meta,
    path: &Path,
) -> anyhow::Result<()> {
    let mut differ = Vec::new();
    for (key, now) in cfg.to_meta() {
        match meta.extra.get(&key) {
            Some(was) if *was != now => differ.push(format!("{key} was {was}, now {now}")),
            _ => {}
        }
    }
    if model.cfg.width != cfg.width {
        differ.push(format!("width was {}, now {}", model.cfg.width, cfg.width));
    }
    if model.cfg.resize != cfg.resize {
        differ.push(format!(
            "resize was {}, now {}",
            model.cfg.resize.name(),
            cfg.resize.name()
        ));
    }
    if meta.pos_weight != cfg.pos_weight {
        differ.push(format!(
            "pos_weight was {}, now {}",
            meta.pos_weight, cfg.pos_weight
        ));
    }
    if !differ.is_empty() {
        bail!(
            "{}: --resume needs the run's own settings: {}",
            path.display(),
            differ.join("; ")
        );
    }
    Ok(())
}

/// Where a run keeps its files.
pub struct RunDir(pub PathBuf);

impl RunDir {
    pub fn checkpoint(&self) -> PathBuf {
        self.0.join("checkpoint.safetensors")
    }
    /// The weights of the epoch with the best validation lesion IoU so far.
    pub fn best(&self) -> PathBuf {
        self.0.join("best.safetensors")
    }
    pub fn metrics(&self) -> PathBuf {
        self.0.join("metrics.jsonl")
    }
    /// Holds the pid of the run using the folder (see `RunLock`).
    pub fn lock(&self) -> PathBuf {
        self.0.join("train.lock")
    }
}

/// One run per folder: an advisory lock (`flock`) on `train.lock`, which
/// holds the pid of the run. The kernel drops the lock when its process
/// dies, however it dies, so a lock file with a pid but no lock is stale
/// (a killed run) and is taken over with a warning. The file is emptied,
/// never removed, when the run ends.
pub struct RunLock {
    file: std::fs::File,
}

impl RunLock {
    /// Fails, naming the holder, when a live run holds the folder's lock
    /// (checked before anything else looks at the folder). Takes nothing.
    pub fn check_free(dir: &Path) -> anyhow::Result<()> {
        let path = dir.join("train.lock");
        let Ok(file) = std::fs::File::open(&path) else {
            return Ok(());
        };
        if let Err(std::fs::TryLockError::WouldBlock) = file.try_lock_shared() {
            let holder = std::fs::read_to_string(&path).unwrap_or_default();
            let holder = holder.trim();
            bail!(
                "{} is in use by another run (pid {}, lock {}): wait for it to finish or choose another --out",
                dir.display(),
                if holder.is_empty() { "unknown" } else { holder },
                path.display()
            );
        }
        Ok(())
    }

    /// Takes the folder's lock; returns it and a warning when a stale lock
    /// was taken over. A folder in use is an error naming the holder's pid.
    pub fn acquire(dir: &Path) -> anyhow::Result<(RunLock, Option<String>)> {
        use std::io::{Read, Seek};
        let path = dir.join("train.lock");
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("creating the lock file {}", path.display()))?;
        let mut holder = String::new();
        let locked = file.try_lock();
        file.read_to_string(&mut holder).ok();
        let holder = holder.trim().to_string();
        match locked {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => bail!(
                "{} is in use by another run (pid {}, lock {}): wait for it to finish or choose another --out",
                dir.display(),
                if holder.is_empty() {
                    "unknown"
                } else {
                    &holder
                },
                path.display()
            ),
            // File systems without flock: fall back to the pid alone.
            Err(std::fs::TryLockError::Error(_)) => {
                if !holder.is_empty()
                    && holder != std::process::id().to_string()
                    && Path::new("/proc").join(&holder).exists()
                {
                    bail!(
                        "{} is in use by another run (pid {holder}, lock {})",
                        dir.display(),
                        path.display()
                    );
                }
            }
        }
        let warning = (!holder.is_empty()).then(|| {
            format!(
                "warning: {} was left by pid {holder}, which is no longer running; taking it over",
                path.display()
            )
        });
        file.set_len(0)?;
        file.rewind()?;
        write!(file, "{}", std::process::id())?;
        file.sync_all().ok();
        Ok((RunLock { file }, warning))
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        // Empty: no run holds the folder. The lock goes with the file handle.
        let _ = self.file.set_len(0);
    }
}

/// Keeps only the lines of `metrics.jsonl` that the checkpoint covers:
/// the baseline, steps up to `step` and epoch summaries up to `epochs`
/// completed epochs. Torn (unterminated or unparsable) lines go too. The
/// file is rewritten atomically; returns how many lines were dropped.
pub fn cut_metrics(path: &Path, step: u64, epochs: u64) -> anyhow::Result<usize> {
    let text = match std::fs::read(path) {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let mut kept = String::with_capacity(text.len());
    let mut dropped = 0;
    for line in text.split_inclusive('\n') {
        let keep = line.ends_with('\n')
            && serde_json::from_str::<serde_json::Value>(line).is_ok_and(|v| {
                match v["kind"].as_str() {
                    Some("baseline") => true,
                    Some("step") => v["step"].as_u64().is_some_and(|s| s <= step),
                    Some("epoch") => v["epoch"].as_u64().is_some_and(|e| e <= epochs),
                    _ => false,
                }
            });
        if keep {
            kept.push_str(line);
        } else {
            dropped += 1;
        }
    }
    if dropped > 0 {
        crate::fsio::write_atomic(path, kept.as_bytes(), true)?;
    }
    Ok(dropped)
}

/// The run's metrics log: each record is one `write` of one whole line
/// (appended), so a killed run leaves at most one torn line, which the
/// next resume cuts away.
struct MetricsLog {
    file: std::fs::File,
    path: PathBuf,
}

impl MetricsLog {
    fn record(&mut self, record: &serde_json::Value) -> anyhow::Result<()> {
        self.line(record.to_string())
    }

    fn line(&mut self, record: String) -> anyhow::Result<()> {
        let mut line = record;
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .with_context(|| format!("writing {}", self.path.display()))
    }
}

/// A metrics.jsonl record of a validation (`kind` baseline or epoch).
fn validation_record(
    kind: &str,
    epoch: Option<usize>,
    size: usize,
    v: &Validation,
) -> serde_json::Value {
    let mut r = serde_json::json!({
        "kind": kind,
        "size": size,
        "val_pixel_ap": v.pixel_ap,
        "val_image_auc": v.image_auc,
        "val_image_ap": v.image_ap,
        "val_precision": v.counts.precision(),
        "val_recall": v.counts.recall(),
        "val_f1": v.counts.f1(),
        "val_iou": v.counts.iou(),
        "val_accuracy": v.counts.accuracy(),
    });
    if let Some(e) = epoch {
        r["epoch"] = e.into();
    }
    r
}

impl Validation {
    /// One line for the console.
    pub fn describe(&self) -> String {
        format!(
            "pixel AP {:.4}, image AUC {}, lesion IoU {:.3} (precision {:.3} recall {:.3} at 0.5)",
            self.pixel_ap,
            self.image_auc
                .map(|a| format!("{a:.3}"))
                .unwrap_or_else(|| "-".into()),
            self.counts.iou(),
            self.counts.precision(),
            self.counts.recall()
        )
    }
}

/// How `train` ended without an error.
pub struct Trained {
    pub model: Model,
    /// `(epoch, step)` (epoch counted from 1) when `stop` asked to end the
    /// run early; the checkpoint holds that state.
    pub interrupted: Option<(usize, u64)>,
}

/// Trains on `train` (validating on `val`) into the run folder, starting
/// fresh or from `resume` (a checkpoint written by this command). After each
/// step `stop(step)` is asked whether to checkpoint and return (Ctrl-C).
#[allow(clippy::too_many_arguments)]
pub fn train(
    gpu: &Gpu,
    cfg: &TrainConfig,
    train: Vec<Sample>,
    val: Vec<Sample>,
    run: &RunDir,
    resume: bool,
    stop: &dyn Fn(u64) -> bool,
    quiet: bool,
) -> anyhow::Result<Trained> {
    if train.is_empty() {
        bail!("no training images");
    }
    if cfg.micro_batch == 0 || cfg.batch == 0 || !cfg.batch.is_multiple_of(cfg.micro_batch) {
        bail!(
            "--batch {} must be a multiple of --micro-batch {}",
            cfg.batch,
            cfg.micro_batch
        );
    }
    std::fs::create_dir_all(&run.0).with_context(|| format!("creating {}", run.0.display()))?;
    let (_lock, warning) = RunLock::acquire(&run.0)?;
    // Loss sum, step count and step time of a partly done epoch.
    let mut resumed_sums = (0.0f64, 0usize, 0.0f64);
    if let Some(w) = warning {
        eprintln!("{w}");
    }
    remove_stale_temporaries(&run.0);
    let (model, mut step, start_epoch, mut skip, mut best_score) = if resume {
        let (model, meta) = Model::load_for_training(gpu, &run.checkpoint())?;
        check_resume_settings(cfg, &model, &meta, &run.checkpoint())?;
        let skip: usize =
            meta_value(&meta, "train.batch_in_epoch", &run.checkpoint())?.unwrap_or(0);
        let best: f64 = meta_value(&meta, "train.best_score", &run.checkpoint())?.unwrap_or(-1.0);
        resumed_sums = (
            meta_value(&meta, "train.loss_sum", &run.checkpoint())?.unwrap_or(0.0),
            meta_value(&meta, "train.loss_n", &run.checkpoint())?.unwrap_or(0),
            meta_value(&meta, "train.step_secs", &run.checkpoint())?.unwrap_or(0.0),
        );
        let dropped = cut_metrics(&run.metrics(), meta.step, meta.epoch)?;
        if dropped > 0 && !quiet {
            eprintln!(
                "{}: dropped {dropped} line(s) written after the checkpoint (step {})",
                run.metrics().display(),
                meta.step
            );
        }
        (model, meta.step, meta.epoch as usize, skip, best)
    } else {
        (
            Model::new(
                gpu,
                ModelConfig {
                    width: cfg.width,
                    resize: cfg.resize,
                },
                cfg.seed,
            )?,
            0,
            0,
            0,
            -1.0,
        )
    };
    // The last checkpoint on disk that holds good weights (its step).
    let mut last_good = resume.then_some(step);
    let mut metrics = MetricsLog {
        file: std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .truncate(false)
            .open(run.metrics())
            .with_context(|| format!("opening {}", run.metrics().display()))?,
        path: run.metrics(),
    };
    if !resume {
        // A fresh run starts a fresh log.
        metrics.file.set_len(0)?;
    }
    let micro = cfg.batch / cfg.micro_batch;
    let adam = optim::Adam::default();
    let l2_params: Vec<_> = L2_WEIGHTS
        .iter()
        .map(|n| model.param(n).value.clone())
        .collect();
    let meta_at = |step: u64,
                   epoch: usize,
                   batch_in_epoch: usize,
                   best_score: f64,
                   sums: (f64, usize, f64)| {
        let mut meta = Meta {
            pos_weight: cfg.pos_weight,
            step,
            epoch: epoch as u64,
            ..Default::default()
        };
        meta.extra.extend(cfg.to_meta());
        if let Some(sp) = cfg.spacing {
            sp.write(&mut meta);
        }
        meta.extra
            .insert("train.batch_in_epoch".into(), batch_in_epoch.to_string());
        meta.extra
            .insert("train.best_score".into(), best_score.to_string());
        // The partial sums of an interrupted epoch, so that its summary
        // averages the whole epoch after a resume (f64 Display round-trips).
        meta.extra
            .insert("train.loss_sum".into(), sums.0.to_string());
        meta.extra.insert("train.loss_n".into(), sums.1.to_string());
        meta.extra
            .insert("train.step_secs".into(), sums.2.to_string());
        meta
    };
    let save = |model: &Model,
                step: u64,
                epoch: usize,
                batch_in_epoch: usize,
                best_score: f64,
                sums: (f64, usize, f64)| {
        model.save(
            gpu,
            &run.checkpoint(),
            &meta_at(step, epoch, batch_in_epoch, best_score, sums),
            true,
        )
    };
    if !resume {
        // The untrained model's numbers: the baseline training must beat.
        let v = validate(gpu, &model, &val, cfg.spacing)?;
        metrics.record(&validation_record("baseline", None, cfg.size_at(0), &v))?;
        if !quiet {
            println!("untrained: validation {}", v.describe());
        }
    }
    for epoch in start_epoch..cfg.epochs() {
        let size = cfg.size_at(epoch);
        let lr = cfg.lr_at(epoch);
        let loader_cfg = LoaderConfig {
            size,
            batch: cfg.batch,
            seed: cfg.seed,
            epoch: epoch as u64,
            augment: true,
            target_spacing_mm: cfg.spacing.map(|s| s.model_mm),
            threads: cfg.threads,
            drop_last: true,
            ..LoaderConfig::default()
        };
        let loader = Loader::new(train.clone(), loader_cfg.clone());
        let batches = loader.batches_per_epoch();
        let bar = if quiet {
            indicatif::ProgressBar::hidden()
        } else {
            indicatif::ProgressBar::new(batches as u64)
        };
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "epoch {prefix} [{bar:30}] {pos}/{len} {per_sec} eta {eta} {msg}",
            )
            .expect("template")
            .progress_chars("=> "),
        );
        bar.set_prefix(format!("{}/{} @{size}", epoch + 1, cfg.epochs()));
        // Wall time of the steps (GPU work included: each step ends with a
        // readback) and peak tensor memory, for the epoch's log line.
        let (mut loss_sum, mut loss_n, mut step_secs) = std::mem::take(&mut resumed_sums);
        gpu.pool().reset_peak();
        for (bi, b) in loader.enumerate() {
            let b = b?;
            if bi < skip {
                continue;
            }
            let started = std::time::Instant::now();
            let (data_loss, total, grad_norm) = train_step(
                gpu, &model, cfg, &adam, lr, &mut step, &b, micro, &l2_params,
            )?;
            step_secs += started.elapsed().as_secs_f64();
            if !data_loss.is_finite() || !total.is_finite() || !grad_norm.is_finite() {
                bail!(
                    "step {step} (epoch {}, batch {}): the loss became {data_loss} (with L2 {total}), gradient norm {grad_norm}; training stopped. {} (lower --lr or check the data)",
                    epoch + 1,
                    bi + 1,
                    match last_good {
                        Some(s) => format!(
                            "The last good checkpoint is {} (step {s}); resume from it with --resume",
                            run.checkpoint().display()
                        ),
                        None =>
                            "No checkpoint was written before (no last good checkpoint to resume)"
                                .into(),
                    }
                );
            }
            loss_sum += data_loss;
            loss_n += 1;
            metrics.line(format!(
                "{{\"kind\":\"step\",\"epoch\":{},\"batch\":{bi},\"step\":{step},\"size\":{size},\"lr\":{lr},\"loss\":{data_loss},\"total_loss\":{total},\"grad_norm\":{grad_norm}}}",
                epoch + 1
            ))?;
            bar.set_message(format!("loss {data_loss:.4} (with L2 {total:.4})"));
            bar.inc(1);
            if stop(step) {
                save(
                    &model,
                    step,
                    epoch,
                    bi + 1,
                    best_score,
                    (loss_sum, loss_n, step_secs),
                )?;
                bar.abandon_with_message(format!(
                    "interrupted; checkpoint {} (resume with --resume)",
                    run.checkpoint().display()
                ));
                return Ok(Trained {
                    model,
                    interrupted: Some((epoch + 1, step)),
                });
            }
        }
        skip = 0;
        bar.finish();
        if cfg.precise_bn > 0 {
            let loader = LoaderConfig {
                batch: cfg.micro_batch,
                ..loader_cfg.clone()
            };
            recompute_bn_stats(gpu, &model, &train, &loader, cfg.precise_bn)?;
        }
        let v = validate(gpu, &model, &val, cfg.spacing)?;
        let mean_loss = loss_sum / loss_n.max(1) as f64;
        let step_ms = step_secs * 1e3 / loss_n.max(1) as f64;
        let peak_mib = gpu.pool().stats().2 as f64 / (1 << 20) as f64;
        let mut record = validation_record("epoch", Some(epoch + 1), size, &v);
        record["train_loss"] = mean_loss.into();
        record["step_ms"] = ((step_ms * 10.0).round() / 10.0).into();
        record["peak_tensor_mib"] = ((peak_mib * 10.0).round() / 10.0).into();
        metrics.record(&record)?;
        crate::run_folder::refresh_or_warn(&run.0);
        if !quiet {
            println!(
                "epoch {}: train loss {mean_loss:.4}; validation {}; {step_ms:.0} ms/step, peak tensors {peak_mib:.0} MiB",
                epoch + 1,
                v.describe()
            );
        }
        // Keep the best epoch's weights beside the latest state.
        let score = cfg.select.of(&v);
        if !val.is_empty() && score > best_score {
            best_score = score;
            model.save(
                gpu,
                &run.best(),
                &meta_at(step, epoch + 1, 0, best_score, (0.0, 0, 0.0)),
                false,
            )?;
        }
        save(&model, step, epoch + 1, 0, best_score, (0.0, 0, 0.0))?;
        last_good = Some(step);
    }
    Ok(Trained {
        model,
        interrupted: None,
    })
}

/// A metadata value of a checkpoint, if present; a value that does not
/// parse is an error naming the file and the key.
fn meta_value<T: std::str::FromStr>(
    meta: &Meta,
    key: &str,
    path: &Path,
) -> anyhow::Result<Option<T>>
where
    T::Err: std::fmt::Display,
{
    meta.extra
        .get(key)
        .map(|v| {
            v.parse()
                .map_err(|e| anyhow::anyhow!("{}: metadata '{key}' is '{v}': {e}", path.display()))
        })
        .transpose()
}

/// Temporary files of runs that died mid-write (`.NAME.tmp.PID`): the
/// folder is locked by this run, so no other process is writing them.
fn remove_stale_temporaries(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') && name.contains(".tmp.") {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// One optimiser step over a batch split in micro-batches; returns the
/// data loss, the loss with the L2 term and the global gradient norm (one
/// readback: the norm costs no extra wait).
#[allow(clippy::too_many_arguments)]
pub(crate) fn train_step(
    gpu: &Gpu,
    model: &Model,
    cfg: &TrainConfig,
    adam: &optim::Adam,
    lr: f32,
    step: &mut u64,
    b: &Batch,
    micro: usize,
    l2_params: &[crate::gpu::Tensor],
) -> anyhow::Result<(f64, f64, f64)> {
    let s = b.size;
    let per = b.n / micro;
    model.zero_grads(gpu);
    let loss_acc = gpu.zeros(&[1])?;
    for m in 0..micro {
        let range = m * per * s * s..(m + 1) * per * s * s;
        let mut g = Graph::new(gpu, true);
        let x = g.input(gpu.upload(&[per, 1, s, s], &b.images[range.clone()])?);
        let t = gpu.upload(&[per, 1, s, s], &b.masks[range])?;
        let out = model.forward(&mut g, x)?;
        let l = loss::bce_with_logits(gpu, g.value(out), &t, cfg.pos_weight)?;
        elementwise::axpy(gpu, 1.0 / micro as f32, &l, &loss_acc)?;
        let dz = loss::bce_with_logits_backward(gpu, g.value(out), &t, cfg.pos_weight)?;
        g.backward(out, dz)?;
    }
    // The L2 term of the weights this step's data loss was computed with.
    let l2_acc = gpu.zeros(&[1])?;
    for w in l2_params {
        elementwise::axpy(gpu, 1.0, &reduce::sum(gpu, w, true, L2 / 2.0)?, &l2_acc)?;
    }
    // The squared norm of the accumulated gradient: a NaN or infinity in any
    // gradient shows here even when the loss is finite.
    let grad_sq = gpu.zeros(&[1])?;
    for p in &model.params {
        if let Some(t) = &p.train {
            elementwise::axpy(gpu, 1.0, &reduce::sum(gpu, &t.grad, true, 1.0)?, &grad_sq)?;
        }
    }
    *step += 1;
    let adam = optim::Adam { lr, ..*adam };
    for p in &model.params {
        if let Some(t) = &p.train {
            let l2 = if L2_WEIGHTS.contains(&p.name.as_str()) {
                L2
            } else {
                0.0
            };
            optim::adam_step(
                gpu,
                &adam,
                *step,
                &p.value,
                &t.grad,
                &t.m,
                &t.v,
                l2,
                1.0 / micro as f32,
            )?;
        }
    }
    // The step's one readback: what the log shows.
    let read = gpu.read_many(&[&loss_acc, &l2_acc, &grad_sq])?;
    let (data, l2) = (read[0][0] as f64, read[1][0] as f64);
    // Gradients of the micro-batches add up; Adam scales them by 1 / micro.
    let grad_norm = (read[2][0] as f64).sqrt() / micro as f64;
    Ok((data, data + l2, grad_norm))
}

/// Where training images come from.
#[derive(Clone, Debug)]
pub enum Source {
    /// A prepared folder (`engine prepare`, `engine synth`).
    Prepared(PathBuf),
    /// `n` synthetic phantoms of side `size`, generated in memory.
    Synthetic { n: usize, size: usize },
}

/// Gives samples without a spacing `pixel_spacing` (all of them must then
/// have one) and returns the spacings of the run: the training images'
/// (their median) and the model's (`model_spacing`, else the data's / 0.66).
pub fn resolve_spacing(
    train: &mut [Sample],
    val: &mut [Sample],
    pixel_spacing: Option<f64>,
    model_spacing: Option<f64>,
    data: Option<&Path>,
) -> anyhow::Result<ModelSpacing> {
    for s in train.iter_mut().chain(val.iter_mut()) {
        s.spacing_mm = s.spacing_mm.or(pixel_spacing);
        if s.spacing_mm.is_none() {
            bail!(
                "{}: {} records no pixel spacing (prepared before spacing was recorded): prepare the set again, or give --pixel-spacing MM",
                data.map(|d| d
                    .join(crate::data::prepared::MANIFEST)
                    .display()
                    .to_string())
                    .unwrap_or_else(|| "the training data".into()),
                s.id
            );
        }
    }
    let mut all: Vec<f64> = train.iter().filter_map(|s| s.spacing_mm).collect();
    all.sort_by(f64::total_cmp);
    let data_mm = all
        .get(all.len() / 2)
        .copied()
        .context("no training images")?;
    Ok(ModelSpacing {
        model_mm: model_spacing.unwrap_or(data_mm / crate::spacing::PAPER_DOWNSCALE),
        data_mm,
    })
}

/// Moves the last `fraction` of `train` (at least one, never all) to a
/// validation set.
fn hold_out(train: &mut Vec<Sample>, fraction: f64) -> Vec<Sample> {
    if train.len() < 2 || fraction <= 0.0 {
        return Vec::new();
    }
    let k = ((train.len() as f64 * fraction).round() as usize).clamp(1, train.len() - 1);
    train.split_off(train.len() - k)
}

/// Training and validation samples. A prepared folder's `val` split is the
/// validation set; without one, and for phantoms, `val_fraction` is held out.
pub fn samples(
    source: &Source,
    val_fraction: f64,
    seed: u64,
) -> anyhow::Result<(Vec<Sample>, Vec<Sample>)> {
    match source {
        Source::Prepared(dir) => {
            let set = PreparedSet::open(dir)?;
            let mut train = set.training();
            let mut val = set.split("val");
            if val.is_empty() {
                val = hold_out(&mut train, val_fraction);
            }
            Ok((train, val))
        }
        &Source::Synthetic { n, size } => {
            let mut train: Vec<Sample> = crate::data::synth::generate(n, size, seed)
                .into_iter()
                .enumerate()
                .map(|(i, p)| Sample {
                    spacing_mm: Some(crate::data::synth::SPACING_MM),
                    ..Sample::in_memory(format!("phantom{i}"), p.image, p.mask)
                })
                .collect();
            let val = hold_out(&mut train, val_fraction);
            Ok((train, val))
        }
    }
}
