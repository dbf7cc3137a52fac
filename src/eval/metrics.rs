//! Pixel- and image-level metrics, threshold sweeps, precision-recall and
//! ROC curves. Pure CPU code, no GPU.
//!
//! One rule everywhere (docs/MODEL.md): a pixel is predicted positive when its
//! probability *exceeds* the threshold, `p > t`; a pixel of probability
//! exactly `t` is negative. An image is truly positive when its mask has a
//! positive pixel and predicted positive when more than `H*W/750` of its
//! pixels exceed the threshold.
//!
//! **Pixel sweeps** run on a histogram instead of storing every pixel: the
//! thresholds are the grid `t_k = k / B` (`k = 0..=B`, computed in f32, B =
//! `bins`, 1000 by default) and every pixel is counted in bin `j`, the
//! smallest `k` with `p <= t_k` (`p <= 0` gives 0, `p > 1` gives `B + 1`),
//! separately for lesion and background pixels. Then `p > t_k` exactly when
//! `j > k`, so the confusion counts at every grid threshold are exact; only
//! thresholds between grid points are not represented. The pixel
//! precision-recall curve and its average precision are therefore exactly
//! those of the scores rounded up to the grid, except that pixels with
//! `p <= 0` are predicted by no threshold `t >= 0` (the curve ends at the
//! recall of `t = 0`).
//!
//! **Average precision** is scikit-learn's `average_precision_score`: the
//! step-wise sum `AP = sum_n (R_n - R_{n-1}) P_n` over the operating points
//! from the highest threshold down, starting at recall 0 (no interpolation).
//! **ROC AUC** is the exact area under the ROC curve with ties in the score
//! counted as one half (the Mann-Whitney statistic), as scikit-learn's
//! `roc_auc_score`.
use serde::{Deserialize, Serialize};

/// Pixel (or image) confusion counts at a threshold.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Counts {
    pub tp: u64,
    pub fp: u64,
    pub fn_: u64,
    pub tn: u64,
}

impl Counts {
    /// Counts one decision.
    pub fn tally(&mut self, predicted: bool, truth: bool) {
        match (predicted, truth) {
            (true, true) => self.tp += 1,
            (true, false) => self.fp += 1,
            (false, true) => self.fn_ += 1,
            (false, false) => self.tn += 1,
        }
    }
    /// Adds the pixels of a probability map against a 0/1 float mask
    /// (`p > threshold` is positive).
    pub fn add(&mut self, prob: &[f32], truth: &[f32], threshold: f32) {
        for (&p, &t) in prob.iter().zip(truth) {
            self.tally(p > threshold, t > 0.5);
        }
    }
    pub fn precision(&self) -> f64 {
        ratio(self.tp, self.tp + self.fp)
    }
    pub fn recall(&self) -> f64 {
        ratio(self.tp, self.tp + self.fn_)
    }
    pub fn f1(&self) -> f64 {
        ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn_)
    }
    /// Lesion IoU: `tp / (tp + fp + fn)`.
    pub fn iou(&self) -> f64 {
        ratio(self.tp, self.tp + self.fp + self.fn_)
    }
    pub fn accuracy(&self) -> f64 {
        ratio(self.tp + self.tn, self.tp + self.tn + self.fp + self.fn_)
    }
    /// Background IoU: `tn / (tn + fp + fn)`.
    pub fn background_iou(&self) -> f64 {
        ratio(self.tn, self.tn + self.fp + self.fn_)
    }
    /// The mean of lesion and background IoU (what the original code logged).
    pub fn mean_iou(&self) -> f64 {
        (self.iou() + self.background_iou()) / 2.0
    }
    /// False-positive rate `fp / (fp + tn)`.
    pub fn fpr(&self) -> f64 {
        ratio(self.fp, self.fp + self.tn)
    }
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 { 0.0 } else { a as f64 / b as f64 }
}

/// Pixel counts of one map against its 0/1 (any non-zero = lesion) mask at
/// `threshold` (`p > threshold` is positive).
pub fn pixel_counts(prob: &[f32], mask: &[u8], threshold: f32) -> Counts {
    assert_eq!(prob.len(), mask.len(), "map and mask differ in size");
    let mut c = Counts::default();
    for (&p, &m) in prob.iter().zip(mask) {
        c.tally(p > threshold, m != 0);
    }
    c
}

pub use engine_core::infer::{area_min_pixels, area_score, area_top};

/// docs/MODEL.md's image-level rule: more than `H*W/750` pixels exceed `threshold`.
pub fn image_predicted(prob: &[f32], threshold: f32) -> bool {
    prob.iter().filter(|&&p| p > threshold).count() >= area_min_pixels(prob.len())
}

/// The statistic of a probability map that scores an image for the
/// image-level curves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ImageScore {
    /// The k-th largest probability with `k = floor(H*W/750) + 1`: the image
    /// is predicted positive at `t` by docs/MODEL.md's rule exactly when this
    /// score exceeds `t`, so the curves and the rule agree.
    Area,
    /// The largest probability.
    Max,
    /// The mean of the `floor(H*W/750) + 1` largest probabilities.
    TopMean,
}

impl ImageScore {
    /// The command-line and JSON name.
    pub fn name(self) -> &'static str {
        match self {
            ImageScore::Area => "area",
            ImageScore::Max => "max",
            ImageScore::TopMean => "top-mean",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            ImageScore::Area => {
                "area: the k-th largest pixel probability, k = floor(H*W/750) + 1 (score > t exactly when docs/MODEL.md's area rule predicts positive at t)"
            }
            ImageScore::Max => "max: the largest pixel probability",
            ImageScore::TopMean => {
                "top-mean: the mean of the floor(H*W/750) + 1 largest pixel probabilities"
            }
        }
    }

    /// The score of one map (0 for an empty map).
    pub fn score(self, prob: &[f32]) -> f64 {
        if prob.is_empty() {
            return 0.0;
        }
        match self {
            ImageScore::Max => prob.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64,
            ImageScore::Area => area_score(prob),
            ImageScore::TopMean => {
                let top = area_top(prob);
                top.iter().map(|&p| p as f64).sum::<f64>() / top.len() as f64
            }
        }
    }
}

/// Per-threshold pixel counts kept as two histograms (see the module doc).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PixelHistogram {
    bins: usize,
    /// Lesion pixels per bin `j` (`0..=bins + 1`).
    pos: Vec<u64>,
    /// Background pixels per bin.
    neg: Vec<u64>,
}

impl PixelHistogram {
    pub fn new(bins: usize) -> Self {
        assert!(bins >= 1, "at least one bin");
        PixelHistogram {
            bins,
            pos: vec![0; bins + 2],
            neg: vec![0; bins + 2],
        }
    }

    pub fn bins(&self) -> usize {
        self.bins
    }

    /// The grid threshold `t_k = k / B` (f32, as everywhere).
    pub fn threshold(&self, k: usize) -> f32 {
        k as f32 / self.bins as f32
    }

    /// Bin of probability `p`: the smallest `k` with `p <= t_k`.
    pub fn bin(&self, p: f32) -> usize {
        let b = self.bins;
        if p.is_nan() || p <= 0.0 {
            return 0;
        }
        if p > 1.0 {
            return b + 1;
        }
        // A guess from the product, then exact correction against t_k.
        let mut j = ((p as f64 * b as f64).ceil() as usize).min(b);
        while j > 0 && p <= self.threshold(j - 1) {
            j -= 1;
        }
        while j < b && p > self.threshold(j) {
            j += 1;
        }
        j
    }

    pub fn add(&mut self, prob: &[f32], mask: &[u8]) {
        assert_eq!(prob.len(), mask.len(), "map and mask differ in size");
        for (&p, &m) in prob.iter().zip(mask) {
            let j = self.bin(p);
            if m != 0 {
                self.pos[j] += 1;
            } else {
                self.neg[j] += 1;
            }
        }
    }

    pub fn merge(&mut self, other: &PixelHistogram) {
        assert_eq!(self.bins, other.bins);
        for (a, b) in self.pos.iter_mut().zip(&other.pos) {
            *a += b;
        }
        for (a, b) in self.neg.iter_mut().zip(&other.neg) {
            *a += b;
        }
    }

    /// Exact counts at every grid threshold `t_k`, `k = 0..=B` (index k).
    pub fn sweep(&self) -> Vec<Counts> {
        let (tot_pos, tot_neg): (u64, u64) = (self.pos.iter().sum(), self.neg.iter().sum());
        let mut out = vec![Counts::default(); self.bins + 1];
        // Pixels above t_k are those in bins j > k: accumulate from the top.
        let (mut above_pos, mut above_neg) = (self.pos[self.bins + 1], self.neg[self.bins + 1]);
        for k in (0..=self.bins).rev() {
            out[k] = Counts {
                tp: above_pos,
                fp: above_neg,
                fn_: tot_pos - above_pos,
                tn: tot_neg - above_neg,
            };
            above_pos += self.pos[k];
            above_neg += self.neg[k];
        }
        out
    }
}

/// One point of a precision-recall curve.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct PrPoint {
    pub threshold: f64,
    pub precision: f64,
    pub recall: f64,
}

/// One point of a ROC curve.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct RocPoint {
    pub threshold: f64,
    pub fpr: f64,
    pub tpr: f64,
}

/// Precision of counts for a curve: 1 when nothing is predicted
/// (scikit-learn's convention for the curve's start).
fn curve_precision(c: &Counts) -> f64 {
    if c.tp + c.fp == 0 { 1.0 } else { c.precision() }
}

/// Precision-recall operating points from counts ordered by *decreasing*
/// threshold, keeping the points where the predicted set changes, and AP.
/// AP is 0 when there are no positives.
pub fn pr_from_counts(points: &[(f64, Counts)]) -> (Vec<PrPoint>, f64) {
    let mut curve = Vec::new();
    let mut ap = 0.0;
    let mut last_recall = 0.0;
    let mut last: Option<(u64, u64)> = None;
    for (t, c) in points {
        if last == Some((c.tp, c.fp)) {
            continue;
        }
        last = Some((c.tp, c.fp));
        let (p, r) = (curve_precision(c), c.recall());
        ap += (r - last_recall) * p;
        last_recall = r;
        curve.push(PrPoint {
            threshold: *t,
            precision: p,
            recall: r,
        });
    }
    (curve, ap)
}

/// The pixel precision-recall curve (grid thresholds where the counts
/// change, from high to low) and its average precision.
pub fn pixel_pr(hist: &PixelHistogram) -> (Vec<PrPoint>, f64) {
    let sweep = hist.sweep();
    let pts: Vec<(f64, Counts)> = (0..=hist.bins())
        .rev()
        .map(|k| (hist.threshold(k) as f64, sweep[k]))
        .collect();
    pr_from_counts(&pts)
}

/// Image-level counts at `threshold` from (truth, score): positive when
/// `score > threshold`.
pub fn image_counts(items: &[(bool, f64)], threshold: f64) -> Counts {
    let mut c = Counts::default();
    for &(truth, s) in items {
        match (s > threshold, truth) {
            (true, true) => c.tp += 1,
            (true, false) => c.fp += 1,
            (false, true) => c.fn_ += 1,
            (false, false) => c.tn += 1,
        }
    }
    c
}

/// The exact operating points of scores, one per distinct score from high
/// to low: the point "predict positive when score >= s" (the same set as
/// `score > t` for any `t` just below `s`). The threshold reported is `s`.
fn image_points(items: &[(bool, f64)]) -> Vec<(f64, Counts)> {
    let mut v: Vec<(bool, f64)> = items.to_vec();
    v.sort_by(|a, b| b.1.total_cmp(&a.1));
    let (tot_pos, tot_neg) = (
        v.iter().filter(|x| x.0).count() as u64,
        v.iter().filter(|x| !x.0).count() as u64,
    );
    let mut out = Vec::new();
    let (mut tp, mut fp) = (0u64, 0u64);
    let mut i = 0;
    while i < v.len() {
        let s = v[i].1;
        while i < v.len() && v[i].1 == s {
            if v[i].0 {
                tp += 1;
            } else {
                fp += 1;
            }
            i += 1;
        }
        out.push((
            s,
            Counts {
                tp,
                fp,
                fn_: tot_pos - tp,
                tn: tot_neg - fp,
            },
        ));
    }
    out
}

/// Image-level precision-recall curve (one point per distinct score) and AP.
pub fn image_pr(items: &[(bool, f64)]) -> (Vec<PrPoint>, f64) {
    pr_from_counts(&image_points(items))
}

/// Image-level ROC curve from (0, 0) to (1, 1), one point per distinct
/// score, and its AUC (trapezoids; ties count one half). AUC is `None`
/// when one class is missing.
pub fn image_roc(items: &[(bool, f64)]) -> (Vec<RocPoint>, Option<f64>) {
    let pts = image_points(items);
    let mut curve = vec![RocPoint {
        threshold: f64::INFINITY,
        fpr: 0.0,
        tpr: 0.0,
    }];
    for (t, c) in &pts {
        curve.push(RocPoint {
            threshold: *t,
            fpr: c.fpr(),
            tpr: c.recall(),
        });
    }
    let (pos, neg) = (
        items.iter().filter(|x| x.0).count(),
        items.iter().filter(|x| !x.0).count(),
    );
    if pos == 0 || neg == 0 {
        return (curve, None);
    }
    let auc = curve
        .windows(2)
        .map(|w| (w[1].fpr - w[0].fpr) * (w[1].tpr + w[0].tpr) / 2.0)
        .sum();
    (curve, Some(auc))
}

/// A threshold picked from a sweep, with what it costs.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Choice {
    pub threshold: f64,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
}

impl Choice {
    fn new(t: f64, c: &Counts) -> Choice {
        Choice {
            threshold: t,
            precision: c.precision(),
            recall: c.recall(),
            f1: c.f1(),
        }
    }
}

/// The highest threshold of `(threshold, counts)` (any order) whose recall
/// reaches `target`, i.e. the best precision among those thresholds when
/// precision falls with the threshold. `None` when none reaches it (e.g. no
/// positives).
pub fn threshold_for_recall(points: &[(f64, Counts)], target: f64) -> Option<Choice> {
    points
        .iter()
        .filter(|(_, c)| c.tp + c.fn_ > 0 && c.recall() >= target)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(t, c)| Choice::new(*t, c))
}

/// The threshold with the highest F1 (the highest such threshold on ties).
/// `None` when no threshold has F1 > 0.
pub fn threshold_max_f1(points: &[(f64, Counts)]) -> Option<Choice> {
    let mut best: Option<(f64, Counts)> = None;
    for &(t, c) in points {
        let better = match best {
            None => c.f1() > 0.0,
            Some((bt, bc)) => c.f1() > bc.f1() || (c.f1() == bc.f1() && t > bt),
        };
        if better {
            best = Some((t, c));
        }
    }
    best.map(|(t, c)| Choice::new(t, &c))
}

/// The grid `t_k = k / bins` as (threshold, image counts) pairs.
pub fn image_sweep(items: &[(bool, f64)], bins: usize) -> Vec<(f64, Counts)> {
    (0..=bins)
        .map(|k| {
            let t = (k as f32 / bins as f32) as f64;
            (t, image_counts(items, t))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bins_match_the_strict_rule_at_every_grid_threshold() {
        let h = PixelHistogram::new(100);
        for i in 0..=20000 {
            let p = i as f32 / 20000.0;
            let j = h.bin(p);
            for k in 0..=100 {
                assert_eq!(p > h.threshold(k), j > k, "p {p} k {k} j {j}");
            }
        }
        assert_eq!(h.bin(-0.5), 0);
        assert_eq!(h.bin(f32::NAN), 0);
        assert_eq!(h.bin(1.5), 101);
    }
}
