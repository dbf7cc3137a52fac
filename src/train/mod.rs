//! `engine train`: progressive crop sizes, micro-batches with gradient
//! accumulation, Adam with docs/MODEL.md's schedule and L2 term, validation
//! on whole films each epoch, atomic checkpoints every epoch and on Ctrl-C,
//! resume, and a stop with a clear message on a NaN or infinite loss.
//!
//! [`TrainConfig`] says what to train; [`Trainer`] runs it (a step, an
//! epoch, a validation, a checkpoint); `run_dir` owns the run folder's
//! files, `validate` the validation, `step` the optimiser step.
mod run_dir;
mod step;
mod swa;
mod trainer;
mod validate;

pub use run_dir::{RunDir, RunLock, cut_metrics};
pub(crate) use step::train_step;
pub use swa::{SWA_EPOCHS_KEY, WeightAverage};
pub use trainer::{Trained, Trainer, check_init, check_resume, train};
pub use validate::{Validation, recompute_bn_stats, validate};

use crate::data::prepared::{PreparedSet, Sample};
use crate::ops::resize::Mode;
use crate::spacing::ModelSpacing;
use anyhow::{Context, bail};
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
    /// Average the weights of the last this many epochs into
    /// `swa.safetensors` (0: no averaging). See `swa`.
    pub swa: usize,
    /// Start from this checkpoint's weights and batch-norm statistics
    /// instead of the seed's (fine-tuning); Adam starts from zero.
    pub init: Option<std::path::PathBuf>,
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
    /// Mean FROC sensitivity at 0.25-4 false positives per image (lesion
    /// level: candidate peaks against the ground truth's lesions).
    Froc,
    /// No choice: the final epoch. On small validation sets the highest
    /// score is often one lucky epoch (see docs/STUDY.md).
    Last,
}

impl Select {
    pub fn name(self) -> &'static str {
        match self {
            Select::PixelAp => "pixel-ap",
            Select::ImageAuc => "image-auc",
            Select::Iou => "iou",
            Select::Froc => "froc",
            Select::Last => "last",
        }
    }

    /// This metric of a validation (image AUC without both classes: 0);
    /// None for `Last`, which compares nothing.
    pub fn of(self, v: &Validation) -> Option<f64> {
        match self {
            Select::PixelAp => Some(v.pixel_ap),
            Select::ImageAuc => Some(v.image_auc.unwrap_or(0.0)),
            Select::Iou => Some(v.counts.iou()),
            Select::Froc => Some(v.froc_mean),
            Select::Last => None,
        }
    }
}

impl TrainConfig {
    pub fn epochs(&self) -> usize {
        self.sizes.iter().map(|s| s.1).sum()
    }

    /// The first epoch (counted from 0) whose weights `--swa` averages;
    /// bad input when `swa` is more epochs than the run trains.
    pub fn swa_start(&self) -> anyhow::Result<usize> {
        self.epochs().checked_sub(self.swa).ok_or_else(|| {
            crate::error::bad(format!(
                "--swa {} averages more epochs than the run trains ({})",
                self.swa,
                self.epochs()
            ))
        })
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
            ("train.swa".into(), self.swa.to_string()),
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

/// Where training images come from.
#[derive(Clone, Debug)]
pub enum Source {
    /// Prepared folders (`engine prepare`, `engine synth`): with more than
    /// one, each epoch holds every set's full images once, and ROI crops
    /// drawn from all sets' crops together (see `data::loader`).
    Prepared(Vec<PathBuf>),
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

/// The name of each prepared folder for logs and per-set validation: its
/// last path component, with `-2`, `-3`, ... when two folders share it.
pub fn set_names(dirs: &[PathBuf]) -> Vec<String> {
    let mut seen = std::collections::BTreeMap::<String, usize>::new();
    dirs.iter()
        .map(|d| {
            let base = d.file_name().map_or_else(
                || d.display().to_string(),
                |n| n.to_string_lossy().into_owned(),
            );
            let k = seen.entry(base.clone()).or_insert(0);
            *k += 1;
            if *k == 1 { base } else { format!("{base}-{k}") }
        })
        .collect()
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
        Source::Prepared(dirs) => {
            let names = set_names(dirs);
            let (mut train, mut val) = (Vec::new(), Vec::new());
            for (dir, name) in dirs.iter().zip(&names) {
                let set = PreparedSet::open(dir)?;
                let mut t = set.training();
                let mut v = set.split("val");
                if v.is_empty() {
                    v = hold_out(&mut t, val_fraction);
                }
                if dirs.len() > 1 {
                    // Ids key the loader's image cache: keep them unique.
                    for s in t.iter_mut().chain(v.iter_mut()) {
                        s.id = format!("{name}/{}", s.id);
                        s.set = name.clone();
                    }
                }
                train.extend(t);
                val.extend(v);
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
