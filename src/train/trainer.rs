//! [`Trainer`]: a training run as state plus four moves (step, epoch,
//! validation, checkpoint).
use super::run_dir::{MetricsLog, RunDir, RunLock, cut_metrics, remove_stale_temporaries};
use super::swa::WeightAverage;
use super::validate::{recompute_bn_stats, validate, validation_record};
use super::{TrainConfig, train_step};
use crate::data::loader::{Batch, Loader, LoaderConfig};
use crate::data::prepared::Sample;
use crate::gpu::{Gpu, Tensor};
use crate::model::{L2_WEIGHTS, Meta, Model, ModelConfig};
use crate::ops::optim;
use crate::spacing::ModelSpacing;
use anyhow::{Context, bail};
use std::path::Path;

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
    Trainer::open(gpu, cfg, train, val, run, resume, quiet)?.run(stop)
}

/// Where a run stands: everything a checkpoint must hold besides the
/// weights to continue bit for bit.
#[derive(Clone, Copy, Debug, Default)]
struct Progress {
    /// Adam steps taken.
    step: u64,
    /// Completed epochs.
    epoch: usize,
    /// Batches of the current epoch already trained on.
    batch_in_epoch: usize,
    /// The best validation score so far (`cfg.select`), -1 before any.
    best_score: f64,
    /// Loss sum, step count and step seconds of the current epoch.
    loss_sum: f64,
    loss_n: usize,
    step_secs: f64,
}

pub struct Trainer<'a> {
    gpu: &'a Gpu,
    cfg: &'a TrainConfig,
    train: Vec<Sample>,
    val: Vec<Sample>,
    run: &'a RunDir,
    model: Model,
    log: MetricsLog,
    at: Progress,
    /// The step of the last checkpoint on disk that holds good weights.
    last_good: Option<u64>,
    l2_params: Vec<Tensor>,
    /// The running weight average of `--swa` (None without it).
    swa: Option<WeightAverage>,
    quiet: bool,
    _lock: RunLock,
}

impl<'a> Trainer<'a> {
    /// Checks the settings, takes the run folder's lock and starts a new
    /// run (validating the untrained model: the baseline) or resumes one.
    pub fn open(
        gpu: &'a Gpu,
        cfg: &'a TrainConfig,
        train: Vec<Sample>,
        val: Vec<Sample>,
        run: &'a RunDir,
        resume: bool,
        quiet: bool,
    ) -> anyhow::Result<Trainer<'a>> {
        if train.is_empty() {
            bail!("no training images");
        }
        let swa_start = cfg.swa_start()?;
        if cfg.micro_batch == 0 || cfg.batch == 0 || !cfg.batch.is_multiple_of(cfg.micro_batch) {
            bail!(
                "--batch {} must be a multiple of --micro-batch {}",
                cfg.batch,
                cfg.micro_batch
            );
        }
        std::fs::create_dir_all(&run.0).with_context(|| format!("creating {}", run.0.display()))?;
        let (lock, warning) = RunLock::acquire(&run.0)?;
        if let Some(w) = warning {
            eprintln!("{w}");
        }
        remove_stale_temporaries(&run.0);
        let (model, at) = if resume {
            Self::resumed(gpu, cfg, run, quiet)?
        } else {
            Self::fresh(gpu, cfg)?
        };
        let log = MetricsLog::open(&run.metrics(), !resume)?;
        let l2_params = L2_WEIGHTS
            .iter()
            .map(|n| Ok(model.get(n)?.value.clone()))
            .collect::<crate::error::Result<_>>()?;
        let swa = match cfg.swa {
            0 => None,
            _ => {
                let done = at.epoch.saturating_sub(swa_start);
                Some(Self::weight_average(gpu, &model, run, resume, done)?)
            }
        };
        let mut t = Trainer {
            gpu,
            cfg,
            train,
            val,
            run,
            model,
            log,
            at,
            last_good: resume.then_some(at.step),
            l2_params,
            swa,
            quiet,
            _lock: lock,
        };
        // Before the baseline's validation, so that the two overlap.
        t.compile_ahead()?;
        if !resume {
            t.baseline()?;
        }
        Ok(t)
    }

    /// The kernels of a step at this epoch's crop size, compiled ahead on
    /// a second device where that helps (`crate::prewarm`): a dry run of
    /// one step on a zero batch lists them, and changes nothing (no
    /// dispatch runs; the step counter is a copy).
    fn compile_ahead(&self) -> anyhow::Result<()> {
        if !crate::prewarm::useful(self.gpu) {
            return Ok(());
        }
        let cfg = self.cfg;
        let (n, size) = (cfg.batch, cfg.size_at(self.at.epoch));
        let zeros = Batch {
            n,
            size,
            images: vec![0.0; n * size * size],
            masks: vec![0.0; n * size * size],
            ids: Vec::new(),
        };
        let mut step = self.at.step;
        let adam = optim::Adam::default();
        let micro = cfg.batch / cfg.micro_batch;
        let lr = cfg.lr_at(self.at.epoch);
        let (dry, kernels) = self.gpu.dry_run(|| {
            train_step(
                self.gpu,
                &self.model,
                cfg.pos_weight,
                &adam,
                lr,
                &mut step,
                &zeros,
                micro,
                &self.l2_params,
            )
        });
        dry?;
        crate::prewarm::start(self.gpu, kernels);
        Ok(())
    }

    /// A new model, from the seed or from `--init`'s weights, before its
    /// first epoch.
    fn fresh(gpu: &Gpu, cfg: &TrainConfig) -> anyhow::Result<(Model, Progress)> {
        let config = ModelConfig {
            width: cfg.width,
            resize: cfg.resize,
        };
        let at = Progress {
            best_score: -1.0,
            ..Progress::default()
        };
        let model = match &cfg.init {
            Some(path) => Model::from_checkpoint(gpu, read_init(cfg, path)?)?.0,
            None => Model::new(gpu, config, cfg.seed)?,
        };
        Ok((model, at))
    }

    /// `--swa`'s running mean: empty, or read back from the run's average
    /// when a resumed run has already averaged `done` epochs.
    fn weight_average(
        gpu: &Gpu,
        model: &Model,
        run: &RunDir,
        resume: bool,
        done: usize,
    ) -> anyhow::Result<WeightAverage> {
        Ok(match (resume, done) {
            (true, 1..) => WeightAverage::resume(gpu, &run.swa(), done)?,
            _ => WeightAverage::new(gpu, model)?,
        })
    }

    /// The model and progress of the run's checkpoint; the log is cut back
    /// to what the checkpoint covers.
    fn resumed(
        gpu: &Gpu,
        cfg: &TrainConfig,
        run: &RunDir,
        quiet: bool,
    ) -> anyhow::Result<(Model, Progress)> {
        let path = run.checkpoint();
        let ckpt = crate::model::Checkpoint::read(&path, crate::model::Load::WithAdam)
            .map_err(crate::error::bad_input)?;
        check_resume_settings(cfg, &ckpt.cfg, &ckpt.meta, &path)?;
        let (model, meta) = Model::from_checkpoint(gpu, ckpt)?;
        let at = Progress {
            step: meta.step,
            epoch: meta.epoch as usize,
            batch_in_epoch: meta_value(&meta, "train.batch_in_epoch", &path)?.unwrap_or(0),
            best_score: meta_value(&meta, "train.best_score", &path)?.unwrap_or(-1.0),
            loss_sum: meta_value(&meta, "train.loss_sum", &path)?.unwrap_or(0.0),
            loss_n: meta_value(&meta, "train.loss_n", &path)?.unwrap_or(0),
            step_secs: meta_value(&meta, "train.step_secs", &path)?.unwrap_or(0.0),
        };
        let dropped = cut_metrics(&run.metrics(), meta.step, meta.epoch)?;
        if dropped > 0 && !quiet {
            eprintln!(
                "{}: dropped {dropped} line(s) written after the checkpoint (step {})",
                run.metrics().display(),
                meta.step
            );
        }
        Ok((model, at))
    }

    /// The untrained model's numbers: the baseline training must beat.
    fn baseline(&mut self) -> anyhow::Result<()> {
        let v = validate(self.gpu, &self.model, &self.val, self.cfg.spacing)?;
        let size = self.cfg.size_at(0);
        self.log
            .record(&validation_record("baseline", None, size, &v))?;
        if !self.quiet {
            let start = match self.cfg.init {
                Some(_) => "from --init",
                None => "untrained",
            };
            println!("{start}: validation {}{}", v.describe(), v.describe_sets());
        }
        Ok(())
    }

    /// Runs the remaining epochs; returns early (after a checkpoint) when
    /// `stop` asks.
    pub fn run(mut self, stop: &dyn Fn(u64) -> bool) -> anyhow::Result<Trained> {
        while self.at.epoch < self.cfg.epochs() {
            if !self.epoch(stop)? {
                let interrupted = Some((self.at.epoch + 1, self.at.step));
                return Ok(Trained {
                    model: self.model,
                    interrupted,
                });
            }
            self.end_epoch()?;
        }
        Ok(Trained {
            model: self.model,
            interrupted: None,
        })
    }

    /// The loader settings of the current epoch.
    fn loader_config(&self) -> LoaderConfig {
        LoaderConfig {
            size: self.cfg.size_at(self.at.epoch),
            batch: self.cfg.batch,
            seed: self.cfg.seed,
            epoch: self.at.epoch as u64,
            augment: true,
            target_spacing_mm: self.cfg.spacing.map(|s| s.model_mm),
            threads: self.cfg.threads,
            drop_last: true,
            ..LoaderConfig::default()
        }
    }

    /// Trains the current epoch's remaining batches; false when `stop`
    /// interrupted it (the checkpoint is written).
    fn epoch(&mut self, stop: &dyn Fn(u64) -> bool) -> anyhow::Result<bool> {
        let epoch = self.at.epoch;
        if epoch > 0
            && self.at.batch_in_epoch == 0
            && self.cfg.size_at(epoch) != self.cfg.size_at(epoch - 1)
        {
            self.compile_ahead()?;
        }
        let loader = Loader::new(self.train.clone(), self.loader_config());
        let bar = self.progress_bar(loader.batches_per_epoch());
        self.gpu.pool().reset_peak();
        for (bi, b) in loader.enumerate() {
            let b = b?;
            if bi < self.at.batch_in_epoch {
                continue;
            }
            let loss = self.step(&b, bi)?;
            self.at.batch_in_epoch = bi + 1;
            bar.set_message(format!("loss {:.4} (with L2 {:.4})", loss.0, loss.1));
            bar.inc(1);
            if stop(self.at.step) {
                self.checkpoint()?;
                bar.abandon_with_message(format!(
                    "interrupted; checkpoint {} (resume with --resume)",
                    self.run.checkpoint().display()
                ));
                return Ok(false);
            }
        }
        bar.finish();
        Ok(true)
    }

    fn progress_bar(&self, batches: usize) -> indicatif::ProgressBar {
        let bar = if self.quiet {
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
        let (epoch, size) = (self.at.epoch, self.cfg.size_at(self.at.epoch));
        bar.set_prefix(format!("{}/{} @{size}", epoch + 1, self.cfg.epochs()));
        bar
    }

    /// One optimiser step on batch `bi` of the epoch; a non-finite loss or
    /// gradient stops the run naming the last good checkpoint. Returns the
    /// data loss and the loss with the L2 term.
    fn step(&mut self, b: &Batch, bi: usize) -> anyhow::Result<(f64, f64)> {
        let (cfg, epoch) = (self.cfg, self.at.epoch);
        let lr = cfg.lr_at(epoch);
        let micro = cfg.batch / cfg.micro_batch;
        let adam = optim::Adam::default();
        let started = std::time::Instant::now();
        let (data_loss, total, grad_norm) = train_step(
            self.gpu,
            &self.model,
            cfg.pos_weight,
            &adam,
            lr,
            &mut self.at.step,
            b,
            micro,
            &self.l2_params,
        )?;
        self.at.step_secs += started.elapsed().as_secs_f64();
        if !data_loss.is_finite() || !total.is_finite() || !grad_norm.is_finite() {
            bail!(
                "step {} (epoch {}, batch {}): the loss became {data_loss} (with L2 {total}), gradient norm {grad_norm}; training stopped. {} (lower --lr or check the data)",
                self.at.step,
                epoch + 1,
                bi + 1,
                self.last_good_hint()
            );
        }
        self.at.loss_sum += data_loss;
        self.at.loss_n += 1;
        self.log.record(&serde_json::json!({
            "kind": "step",
            "epoch": epoch + 1,
            "batch": bi,
            "step": self.at.step,
            "size": cfg.size_at(epoch),
            "lr": short(lr),
            "loss": data_loss,
            "total_loss": total,
            "grad_norm": grad_norm,
        }))?;
        Ok((data_loss, total))
    }

    fn last_good_hint(&self) -> String {
        match self.last_good {
            Some(s) => format!(
                "The last good checkpoint is {} (step {s}); resume from it with --resume",
                self.run.checkpoint().display()
            ),
            None => "No checkpoint was written before (no last good checkpoint to resume)".into(),
        }
    }

    /// After an epoch's steps: precise batch norm, validation, the epoch's
    /// record, best.safetensors, and the checkpoint.
    fn end_epoch(&mut self) -> anyhow::Result<()> {
        let (gpu, cfg) = (self.gpu, self.cfg);
        if cfg.precise_bn > 0 {
            let loader = LoaderConfig {
                batch: cfg.micro_batch,
                ..self.loader_config()
            };
            recompute_bn_stats(gpu, &self.model, &self.train, &loader, cfg.precise_bn)?;
        }
        let v = validate(gpu, &self.model, &self.val, cfg.spacing)?;
        let at = self.at;
        let mean_loss = at.loss_sum / at.loss_n.max(1) as f64;
        let step_ms = at.step_secs * 1e3 / at.loss_n.max(1) as f64;
        let peak_mib = gpu.pool().stats().2 as f64 / (1 << 20) as f64;
        let size = cfg.size_at(at.epoch);
        let mut record = validation_record("epoch", Some(at.epoch + 1), size, &v);
        record["train_loss"] = mean_loss.into();
        record["step_ms"] = ((step_ms * 10.0).round() / 10.0).into();
        record["peak_tensor_mib"] = ((peak_mib * 10.0).round() / 10.0).into();
        self.log.record(&record)?;
        crate::run_folder::refresh_or_warn(&self.run.0);
        if !self.quiet {
            println!(
                "epoch {}: train loss {mean_loss:.4}; validation {}; {step_ms:.0} ms/step, peak tensors {peak_mib:.0} MiB{}",
                at.epoch + 1,
                v.describe(),
                v.describe_sets()
            );
        }
        self.at = Progress {
            epoch: at.epoch + 1,
            step: at.step,
            best_score: at.best_score,
            ..Progress::default()
        };
        let better = match cfg.select.of(&v) {
            None => true,
            Some(score) if !self.val.is_empty() && score > self.at.best_score => {
                self.at.best_score = score;
                true
            }
            Some(_) => false,
        };
        if better {
            self.model
                .save(gpu, &self.run.best(), &self.meta(), false)?;
        }
        self.checkpoint()?;
        self.last_good = Some(self.at.step);
        self.average_weights()
    }

    /// With `--swa`: folds the epoch's weights into the average when the
    /// epoch is one of the last `cfg.swa`, and writes `swa.safetensors`;
    /// after the last epoch, recomputes its batch-norm statistics, validates
    /// it and logs a `swa` record.
    fn average_weights(&mut self) -> anyhow::Result<()> {
        let (gpu, cfg, epoch) = (self.gpu, self.cfg, self.at.epoch);
        let meta = self.meta();
        let loader = LoaderConfig {
            batch: cfg.micro_batch,
            ..self.loader_config()
        };
        let Some(avg) = self.swa.as_mut() else {
            return Ok(());
        };
        if epoch <= cfg.swa_start()? {
            return Ok(());
        }
        avg.add(gpu, &self.model)?;
        if epoch < cfg.epochs() {
            return avg.save(gpu, &self.run.swa(), &meta);
        }
        let batches = cfg.precise_bn.max(SWA_BN_BATCHES);
        recompute_bn_stats(gpu, &avg.model, &self.train, &loader, batches)?;
        let v = validate(gpu, &avg.model, &self.val, cfg.spacing)?;
        let mut record = validation_record("swa", Some(epoch), loader.size, &v);
        record["swa_epochs"] = avg.epochs.into();
        self.log.record(&record)?;
        if !self.quiet {
            println!(
                "weights averaged over epochs {}-{epoch} ({}): validation {}{}",
                epoch + 1 - avg.epochs,
                self.run.swa().display(),
                v.describe(),
                v.describe_sets()
            );
        }
        avg.save(gpu, &self.run.swa(), &meta)
    }

    /// Writes the checkpoint (weights, statistics, Adam state, progress).
    fn checkpoint(&self) -> anyhow::Result<()> {
        self.model
            .save(self.gpu, &self.run.checkpoint(), &self.meta(), true)
    }

    /// The checkpoint metadata of the current state.
    fn meta(&self) -> Meta {
        let (cfg, at) = (self.cfg, self.at);
        let mut meta = Meta {
            pos_weight: cfg.pos_weight,
            step: at.step,
            epoch: at.epoch as u64,
            ..Default::default()
        };
        meta.extra.extend(cfg.to_meta());
        if let Some(sp) = cfg.spacing {
            sp.write(&mut meta);
        }
        // The partial sums of an interrupted epoch, so that its summary
        // averages the whole epoch after a resume (f64 Display round-trips).
        for (key, value) in [
            ("train.batch_in_epoch", at.batch_in_epoch.to_string()),
            ("train.best_score", at.best_score.to_string()),
            ("train.loss_sum", at.loss_sum.to_string()),
            ("train.loss_n", at.loss_n.to_string()),
            ("train.step_secs", at.step_secs.to_string()),
        ] {
            meta.extra.insert(key.into(), value);
        }
        meta
    }
}

/// Training batches over which the averaged weights' batch-norm statistics
/// are recomputed when `--precise-bn` asks for fewer: statistics of the
/// last epoch's weights do not fit their average (Izmailov et al., 2018).
const SWA_BN_BATCHES: usize = 10;

/// An f32 as the f64 of its shortest decimal form (0.003, not
/// 0.003000000026077032), for the log.
fn short(x: f32) -> f64 {
    x.to_string().parse().unwrap_or(x as f64)
}
/// Checks, on the host and before any GPU work, that the checkpoint of
/// `run` exists, is valid and was written with `cfg`'s settings (see
/// [`check_resume_settings`]). Every failure is bad input.
pub fn check_resume(cfg: &TrainConfig, run: &RunDir) -> anyhow::Result<()> {
    let path = run.checkpoint();
    if !path.is_file() {
        return Err(crate::error::bad(format!(
            "--resume: {} does not exist: nothing to resume (leave out --resume to start a run)",
            path.display()
        )));
    }
    let ckpt = crate::model::Checkpoint::read(&path, crate::model::Load::Weights)
        .map_err(crate::error::bad_input)?;
    check_resume_settings(cfg, &ckpt.cfg, &ckpt.meta, &path)
}

/// Checks `--init`'s checkpoint against the run's settings before any GPU
/// work (bad input when it does not fit).
pub fn check_init(cfg: &TrainConfig) -> anyhow::Result<()> {
    match &cfg.init {
        Some(path) => read_init(cfg, path).map(|_| ()),
        None => Ok(()),
    }
}

/// `--init`'s checkpoint, read and validated: the network it holds must be
/// the one this run trains (width, resize mode, model spacing), or its
/// weights would mean something else.
fn read_init(cfg: &TrainConfig, path: &Path) -> anyhow::Result<crate::model::Checkpoint> {
    let ckpt = crate::model::Checkpoint::read(path, crate::model::Load::Weights)
        .map_err(|e| crate::error::bad(format!("--init: {e:#}")))?;
    let mut differ = network_differences(&ckpt.cfg, cfg);
    let was = ModelSpacing::from_meta(&ckpt.meta, path)?.map(|s| s.model_mm);
    let now = cfg.spacing.map(|s| s.model_mm);
    if let (Some(was), Some(now)) = (was, now)
        && (was - now).abs() > 1e-9
    {
        differ.push(format!(
            "checkpoint works at {was} mm/pixel, this run at {now} (--model-spacing)"
        ));
    }
    if !differ.is_empty() {
        return Err(crate::error::bad(format!(
            "--init {}: not this run's network: {}",
            path.display(),
            differ.join("; ")
        )));
    }
    Ok(ckpt)
}

/// How a checkpoint's network differs from the one `cfg` trains (width,
/// resize mode): weights of another network would mean something else.
fn network_differences(model: &ModelConfig, cfg: &TrainConfig) -> Vec<String> {
    let mut differ = Vec::new();
    if model.width != cfg.width {
        differ.push(format!(
            "checkpoint is width {:?}, this run asks for {:?} (--width)",
            model.width, cfg.width
        ));
    }
    if model.resize != cfg.resize {
        differ.push(format!(
            "resize was {}, now {}",
            model.resize.name(),
            cfg.resize.name()
        ));
    }
    differ
}

/// A resumed run must use the settings it was started with, or it would
/// not continue the same run: names what differs (bad input).
fn check_resume_settings(
    cfg: &TrainConfig,
    model: &ModelConfig,
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
    differ.extend(network_differences(model, cfg));
    if meta.pos_weight != cfg.pos_weight {
        differ.push(format!(
            "pos_weight was {}, now {}",
            meta.pos_weight, cfg.pos_weight
        ));
    }
    if !differ.is_empty() {
        return Err(crate::error::bad(format!(
            "{}: --resume needs the run's own settings: {}",
            path.display(),
            differ.join("; ")
        )));
    }
    Ok(())
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
