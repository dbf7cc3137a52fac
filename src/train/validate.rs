//! Validation on whole films (the path of `engine eval`) and the
//! batch-norm statistics recomputed before it.
use crate::data::augment::CROP_SCALE;
use crate::data::loader::{Loader, LoaderConfig};
use crate::data::prepared::Sample;
use crate::eval::metrics::Counts;
use crate::eval::{Accumulator, EvalOptions};
use crate::gpu::Gpu;
use crate::graph::Graph;
use crate::infer::{TileOptions, probability_map_at};
use crate::model::Model;
use crate::spacing::{ModelSpacing, Spacings};
use anyhow::Context;

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
    /// Lesion sensitivity at 1 false positive per image (FROC).
    pub sensitivity_at_1fp: f64,
    /// Mean FROC sensitivity at 0.25, 0.5, 1, 2 and 4 false positives per image.
    pub froc_mean: f64,
    /// With several data sets: each set's own validation, by name.
    pub per_set: Vec<(String, Validation)>,
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
    let new_acc = || {
        Accumulator::new(EvalOptions {
            panels: false,
            ..EvalOptions::default()
        })
    };
    let mut all = new_acc();
    let candidate_opts = crate::lesions::CandidateOptions::default();
    // One accumulator per data set (all films in one when there is one set).
    let mut sets: Vec<(String, Accumulator)> = Vec::new();
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
        let (_, lesions) =
            crate::eval::lesions_of(s, &mask, &prob, spacings.input_mm, &candidate_opts);
        if !s.set.is_empty() {
            let k = match sets.iter().position(|(n, _)| *n == s.set) {
                Some(k) => k,
                None => {
                    sets.push((s.set.clone(), new_acc()));
                    sets.len() - 1
                }
            };
            sets[k].1.add(&s.id, &mask, &prob, lesions.clone());
        }
        all.add(&s.id, &mask, &prob, lesions);
    }
    Ok(Validation {
        per_set: sets
            .into_iter()
            .map(|(name, acc)| (name, summarize(acc)))
            .collect(),
        ..summarize(all)
    })
}

/// The validation numbers of an accumulator's films.
fn summarize(acc: Accumulator) -> Validation {
    if acc.records().is_empty() {
        return Validation::default();
    }
    let summary = acc.finish();
    Validation {
        counts: Counts {
            tp: summary.pixel.counts.tp,
            fp: summary.pixel.counts.fp,
            fn_: summary.pixel.counts.fn_,
            tn: summary.pixel.counts.tn,
        },
        pixel_ap: summary.pixel.average_precision,
        image_auc: summary.image.roc_auc,
        image_ap: summary.image.average_precision,
        sensitivity_at_1fp: crate::lesions::sensitivity_at(&summary.lesion.curve, 1.0),
        froc_mean: summary.lesion.mean_sensitivity,
        per_set: Vec::new(),
    }
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

/// A metrics.jsonl record of a validation (`kind` baseline or epoch).
pub(super) fn validation_record(
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
        "val_sensitivity_at_1fp": v.sensitivity_at_1fp,
        "val_froc_mean": v.froc_mean,
    });
    for (name, sv) in &v.per_set {
        r["val_sets"][name] = serde_json::json!({
            "pixel_ap": sv.pixel_ap,
            "image_auc": sv.image_auc,
            "image_ap": sv.image_ap,
            "sensitivity_at_1fp": sv.sensitivity_at_1fp,
            "froc_mean": sv.froc_mean,
            "iou": sv.counts.iou(),
        });
    }
    if let Some(e) = epoch {
        r["epoch"] = e.into();
    }
    r
}

impl Validation {
    /// With several data sets, a short line for each, each starting with
    /// a line break (empty for one set).
    pub fn describe_sets(&self) -> String {
        let mut line = String::new();
        for (name, v) in &self.per_set {
            line += &format!(
                "\n    {name}: pixel AP {:.4}, image AUC {}, lesions found at 1 FP/image {:.3}",
                v.pixel_ap,
                v.image_auc
                    .map_or_else(|| "-".into(), |a| format!("{a:.3}")),
                v.sensitivity_at_1fp
            );
        }
        line
    }

    /// One line for the console.
    pub fn describe(&self) -> String {
        format!(
            "pixel AP {:.4}, image AUC {}, lesions found at 1 FP/image {:.3} (FROC mean {:.3}), lesion IoU {:.3} (precision {:.3} recall {:.3} at 0.5)",
            self.pixel_ap,
            self.image_auc
                .map(|a| format!("{a:.3}"))
                .unwrap_or_else(|| "-".into()),
            self.sensitivity_at_1fp,
            self.froc_mean,
            self.counts.iou(),
            self.counts.precision(),
            self.counts.recall()
        )
    }
}
