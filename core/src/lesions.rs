//! Lesion level: candidate lesions read off a probability map, the ground
//! truth's lesions, and the FROC curve (sensitivity against false positives
//! per image), the standard measure of mass detection.
//!
//! - **Candidates** are the peaks of the map: pixels at least
//!   `min_score` that no 8-neighbour exceeds (on a plateau, its first pixel
//!   in raster order), taken from the highest down and kept when no kept
//!   peak lies within `min_distance_mm`; at most `max_per_image`. A
//!   candidate's score is its peak's probability, its centre the peak
//!   pixel's centre, and its box that of the peak's hill: the pixels
//!   reached from the peak through 4-neighbours without climbing, where the
//!   map stays at or above half the peak.
//! - **Ground truth**: the lesion boxes of a set prepared from boxes
//!   (`engine prepare coco`), else the 8-connected regions of the mask (a
//!   MIAS circle, a CBIS-DDSM outline).
//! - **Hits**: a candidate hits every lesion whose box (or region) holds its
//!   centre. A lesion counts as found once; a candidate that hits nothing is
//!   a false positive; a second candidate on a found lesion is neither.
//! - **FROC**: one operating point per distinct candidate score, from the
//!   highest: sensitivity = lesions hit by candidates scoring at least t /
//!   all lesions; false positives per image = candidates scoring at least t
//!   that hit nothing / images (normal images count). The sensitivity at F
//!   false positives per image is the highest sensitivity of a point with at
//!   most F; past the last point the curve stays flat.
use serde::{Deserialize, Serialize};

use crate::image::Gray8;

/// The false-positive rates the FROC summary reports.
pub const FP_RATES: [f64; 5] = [0.25, 0.5, 1.0, 2.0, 4.0];

/// How candidates are read off a map.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct CandidateOptions {
    /// Two candidates are at least this far apart (peak to peak).
    pub min_distance_mm: f64,
    /// Peaks below this probability are not candidates.
    pub min_score: f32,
    pub max_per_image: usize,
}

impl Default for CandidateOptions {
    fn default() -> Self {
        // 10 mm: about a small mass's diameter (CBIS-DDSM's median mass is
        // about 14 mm across), so one mass gives one candidate.
        CandidateOptions {
            min_distance_mm: 10.0,
            min_score: 0.05,
            max_per_image: 20,
        }
    }
}

/// One candidate lesion, in the map's pixels.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    pub score: f32,
    /// Centre of the peak pixel (`col + 0.5`, `row + 0.5`).
    pub x: f64,
    pub y: f64,
    /// `[x0, y0, x1, y1]`: the region around the peak at half its score.
    pub bbox: [f64; 4],
}

/// The candidates of a `width x height` map of `spacing_mm` per pixel,
/// highest score first.
pub fn candidates(
    prob: &[f32],
    width: usize,
    height: usize,
    spacing_mm: f64,
    opts: &CandidateOptions,
) -> Vec<Candidate> {
    assert_eq!(prob.len(), width * height, "candidates: map size");
    let mut peaks: Vec<usize> = (0..prob.len())
        .filter(|&i| prob[i] >= opts.min_score && is_peak(prob, width, height, i))
        .collect();
    peaks.sort_by(|&a, &b| prob[b].total_cmp(&prob[a]).then(a.cmp(&b)));
    let min_d = opts.min_distance_mm / spacing_mm;
    let mut kept: Vec<Candidate> = Vec::new();
    for i in peaks {
        if kept.len() >= opts.max_per_image {
            break;
        }
        let (x, y) = ((i % width) as f64 + 0.5, (i / width) as f64 + 0.5);
        if kept.iter().any(|c| (c.x - x).hypot(c.y - y) < min_d) {
            continue;
        }
        kept.push(Candidate {
            score: prob[i],
            x,
            y,
            bbox: half_max_box(prob, width, height, i),
        });
    }
    kept
}

/// No 8-neighbour is higher, and no earlier (raster order) neighbour equal.
fn is_peak(prob: &[f32], w: usize, h: usize, i: usize) -> bool {
    let (x, y) = ((i % w) as isize, (i / w) as isize);
    let v = prob[i];
    for dy in -1..=1isize {
        for dx in -1..=1isize {
            let (nx, ny) = (x + dx, y + dy);
            if (dx, dy) == (0, 0) || nx < 0 || ny < 0 || nx >= w as isize || ny >= h as isize {
                continue;
            }
            let j = ny as usize * w + nx as usize;
            if prob[j] > v || (prob[j] == v && j < i) {
                return false;
            }
        }
    }
    true
}

/// The box of the peak's hill: the pixels reached from `seed` through
/// 4-neighbours without ever climbing, with p >= p(seed) / 2. (Without the
/// no-climbing rule a lower peak's box would swallow a higher neighbour
/// joined to it above the half level.)
fn half_max_box(prob: &[f32], w: usize, h: usize, seed: usize) -> [f64; 4] {
    let level = prob[seed] / 2.0;
    let mut seen = vec![false; prob.len()];
    let mut stack = vec![seed];
    seen[seed] = true;
    let (mut x0, mut y0, mut x1, mut y1) = (w, h, 0, 0);
    while let Some(i) = stack.pop() {
        let (x, y) = (i % w, i / w);
        (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x + 1), y1.max(y + 1));
        let here = prob[i];
        let mut visit = |j: usize| {
            if !seen[j] && prob[j] >= level && prob[j] <= here {
                seen[j] = true;
                stack.push(j);
            }
        };
        if x > 0 {
            visit(i - 1);
        }
        if x + 1 < w {
            visit(i + 1);
        }
        if y > 0 {
            visit(i - w);
        }
        if y + 1 < h {
            visit(i + w);
        }
    }
    [x0 as f64, y0 as f64, x1 as f64, y1 as f64]
}

/// The ground truth's lesions of one image.
pub enum Truth {
    /// Boxes `[x0, y0, x1, y1]`: a hit has its centre inside.
    Boxes(Vec<[f64; 4]>),
    /// A label per pixel (0: background, k: lesion k - 1) and the count.
    Regions {
        labels: Vec<u32>,
        width: usize,
        count: usize,
    },
}

impl Truth {
    /// The lesions of an image: its boxes if the set has them, else the
    /// 8-connected regions of its mask.
    pub fn of(mask: &Gray8, boxes: Option<&[[f64; 4]]>) -> Truth {
        match boxes {
            Some(b) => Truth::Boxes(b.to_vec()),
            None => {
                let (labels, count) = label_regions(mask);
                Truth::Regions {
                    labels,
                    width: mask.width,
                    count,
                }
            }
        }
    }

    pub fn count(&self) -> usize {
        match self {
            Truth::Boxes(b) => b.len(),
            Truth::Regions { count, .. } => *count,
        }
    }

    /// The lesions holding the point `(x, y)` (map pixels).
    pub fn hits(&self, x: f64, y: f64) -> Vec<usize> {
        match self {
            Truth::Boxes(bs) => (0..bs.len())
                .filter(|&k| {
                    let b = bs[k];
                    x >= b[0] && x <= b[2] && y >= b[1] && y <= b[3]
                })
                .collect(),
            Truth::Regions { labels, width, .. } => {
                let (c, r) = (x.floor() as usize, y.floor() as usize);
                let label = (c < *width).then(|| labels.get(r * width + c)).flatten();
                match label {
                    Some(&l) if l > 0 => vec![l as usize - 1],
                    _ => vec![],
                }
            }
        }
    }
}

/// 8-connected regions of the non-zero pixels: a label per pixel and the count.
fn label_regions(mask: &Gray8) -> (Vec<u32>, usize) {
    let (w, h) = (mask.width, mask.height);
    let mut labels = vec![0u32; w * h];
    let mut count = 0;
    for start in 0..w * h {
        if mask.pixels[start] == 0 || labels[start] != 0 {
            continue;
        }
        count += 1;
        labels[start] = count as u32;
        let mut stack = vec![start];
        while let Some(i) = stack.pop() {
            let (x, y) = ((i % w) as isize, (i / w) as isize);
            for dy in -1..=1isize {
                for dx in -1..=1isize {
                    let (nx, ny) = (x + dx, y + dy);
                    if nx < 0 || ny < 0 || nx >= w as isize || ny >= h as isize {
                        continue;
                    }
                    let j = ny as usize * w + nx as usize;
                    if mask.pixels[j] != 0 && labels[j] == 0 {
                        labels[j] = count as u32;
                        stack.push(j);
                    }
                }
            }
        }
    }
    (labels, count)
}

/// One image's lesion-level result: how many lesions it has, and each
/// candidate's score with the lesions it hits.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ImageLesions {
    pub lesions: usize,
    pub candidates: Vec<ScoredCandidate>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScoredCandidate {
    pub score: f32,
    /// Indices of the image's lesions whose region holds the centre.
    pub hits: Vec<usize>,
}

/// Matches an image's candidates against its ground truth.
pub fn match_image(cands: &[Candidate], truth: &Truth) -> ImageLesions {
    ImageLesions {
        lesions: truth.count(),
        candidates: cands
            .iter()
            .map(|c| ScoredCandidate {
                score: c.score,
                hits: truth.hits(c.x, c.y),
            })
            .collect(),
    }
}

/// One point of the FROC curve.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct FrocPoint {
    /// Candidates scoring at least this count.
    pub threshold: f64,
    pub fp_per_image: f64,
    pub sensitivity: f64,
}

/// The FROC summary of a set of images.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Froc {
    pub images: usize,
    pub lesions: usize,
    pub candidates: usize,
    /// From the highest threshold down.
    pub curve: Vec<FrocPoint>,
    /// `(false positives per image, sensitivity)` at [`FP_RATES`].
    pub sensitivity_at: Vec<(f64, f64)>,
    /// Mean of those sensitivities (the "competition performance metric").
    pub mean_sensitivity: f64,
}

/// The FROC curve over `images` (see the module's definitions).
pub fn froc(images: &[ImageLesions]) -> Froc {
    let n_images = images.len();
    let lesions: usize = images.iter().map(|i| i.lesions).sum();
    let mut all: Vec<(f32, usize, &ScoredCandidate)> = images
        .iter()
        .enumerate()
        .flat_map(|(k, im)| im.candidates.iter().map(move |c| (c.score, k, c)))
        .collect();
    all.sort_by(|a, b| b.0.total_cmp(&a.0));
    let mut found = std::collections::BTreeSet::new();
    let (mut fps, mut curve) = (0usize, Vec::new());
    for (j, &(score, k, c)) in all.iter().enumerate() {
        if c.hits.is_empty() {
            fps += 1;
        }
        found.extend(c.hits.iter().map(|&l| (k, l)));
        let last_of_score = all.get(j + 1).is_none_or(|next| next.0 != score);
        if last_of_score {
            curve.push(FrocPoint {
                threshold: score as f64,
                fp_per_image: fps as f64 / n_images.max(1) as f64,
                sensitivity: found.len() as f64 / lesions.max(1) as f64,
            });
        }
    }
    let sensitivity_at: Vec<(f64, f64)> = FP_RATES
        .iter()
        .map(|&f| (f, sensitivity_at(&curve, f)))
        .collect();
    let mean_sensitivity = sensitivity_at.iter().map(|s| s.1).sum::<f64>() / FP_RATES.len() as f64;
    Froc {
        images: n_images,
        lesions,
        candidates: all.len(),
        curve,
        sensitivity_at,
        mean_sensitivity,
    }
}

/// The highest sensitivity of a point with at most `fp` false positives per image.
pub fn sensitivity_at(curve: &[FrocPoint], fp: f64) -> f64 {
    curve
        .iter()
        .filter(|p| p.fp_per_image <= fp + 1e-12)
        .map(|p| p.sensitivity)
        .fold(0.0, f64::max)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(min_distance_mm: f64, min_score: f32, max_per_image: usize) -> CandidateOptions {
        CandidateOptions {
            min_distance_mm,
            min_score,
            max_per_image,
        }
    }

    fn map_with(w: usize, h: usize, peaks: &[(usize, usize, f32, f32)]) -> Vec<f32> {
        // Cones: value v at (x, y), falling by `slope` per pixel.
        let mut m = vec![0f32; w * h];
        for (i, p) in m.iter_mut().enumerate() {
            let (x, y) = ((i % w) as f32, (i / w) as f32);
            for &(px, py, v, slope) in peaks {
                let d = (x - px as f32).hypot(y - py as f32);
                *p = p.max(v - slope * d);
            }
        }
        m
    }

    #[test]
    fn candidates_are_peaks_apart_with_half_max_boxes() {
        let m = map_with(
            40,
            30,
            &[(10, 10, 0.9, 0.1), (30, 20, 0.6, 0.1), (13, 10, 0.85, 0.1)],
        );
        let c = candidates(&m, 40, 30, 1.0, &opts(5.0, 0.05, 10));
        assert_eq!(c.len(), 2, "{c:?}");
        assert_eq!((c[0].x, c[0].y, c[0].score), (10.5, 10.5, 0.9));
        assert_eq!((c[1].x, c[1].y, c[1].score), (30.5, 20.5, 0.6));
        // The second peak's cone: p >= 0.3 within distance 3 of (30, 20).
        assert_eq!(c[1].bbox, [27.0, 17.0, 34.0, 24.0]);
        // Closer peaks allowed: the third one appears.
        let c = candidates(&m, 40, 30, 1.0, &opts(2.0, 0.05, 10));
        assert_eq!(c.len(), 3);
        // Spacing turns millimetres into pixels: 5 mm at 2 mm/pixel is 2.5 pixels.
        let c = candidates(&m, 40, 30, 2.0, &opts(5.0, 0.05, 10));
        assert_eq!(c.len(), 3);
        // The score floor and the cap.
        let c = candidates(&m, 40, 30, 1.0, &opts(2.0, 0.7, 10));
        assert_eq!(c.len(), 2);
        let c = candidates(&m, 40, 30, 1.0, &opts(2.0, 0.05, 1));
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn a_box_never_climbs_into_a_higher_neighbour() {
        // Two cones joined above half of the lower one's height.
        let m = map_with(40, 20, &[(10, 10, 0.9, 0.05), (22, 10, 0.6, 0.05)]);
        let opts = opts(5.0, 0.05, 10);
        let c = candidates(&m, 40, 20, 1.0, &opts);
        assert_eq!(c.len(), 2);
        // The lower peak's hill stops where the higher cone takes over
        // (x = 16: 0.9 - 0.3 = 0.6 - 0.3), not at the higher peak's far side.
        assert_eq!((c[1].x, c[1].y), (22.5, 10.5));
        assert!(c[1].bbox[0] >= 16.0, "{:?}", c[1].bbox);
        assert!(
            c[0].bbox[0] < 10.0 && c[0].bbox[2] <= 22.0,
            "nor does the higher one climb into the lower: {:?}",
            c[0].bbox
        );
    }

    #[test]
    fn a_plateau_gives_one_candidate() {
        let mut m = vec![0f32; 10 * 10];
        for y in 3..6 {
            for x in 2..7 {
                m[y * 10 + x] = 0.5;
            }
        }
        let c = candidates(&m, 10, 10, 1.0, &opts(0.0, 0.1, 10));
        assert_eq!(c.len(), 1);
        assert_eq!((c[0].x, c[0].y), (2.5, 3.5));
        assert_eq!(c[0].bbox, [2.0, 3.0, 7.0, 6.0]);
    }

    #[test]
    fn hits_in_boxes_and_regions() {
        let t = Truth::Boxes(vec![[0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 20.0, 20.0]]);
        assert_eq!(t.count(), 2);
        assert_eq!(t.hits(7.0, 7.0), vec![0, 1]);
        assert_eq!(t.hits(15.0, 2.0), Vec::<usize>::new());
        let mut mask = Gray8::new(8, 4);
        for (x, y) in [(1, 1), (2, 2), (6, 0), (6, 1)] {
            mask.set(x, y, 1);
        }
        let t = Truth::of(&mask, None);
        assert_eq!(t.count(), 2, "diagonal neighbours join, (6, *) is apart");
        // Labels follow raster order: (6, 0) starts the first region.
        assert_eq!(t.hits(6.9, 1.2), vec![0]);
        assert_eq!(t.hits(2.5, 2.5), vec![1]);
        assert!(t.hits(4.5, 1.5).is_empty());
    }

    fn cand(score: f32, hits: &[usize]) -> ScoredCandidate {
        ScoredCandidate {
            score,
            hits: hits.to_vec(),
        }
    }

    #[test]
    fn froc_of_hand_made_candidates() {
        // Image 0: two lesions. Image 1: one lesion. Image 2: normal.
        let images = vec![
            ImageLesions {
                lesions: 2,
                candidates: vec![
                    cand(0.9, &[0]),
                    cand(0.5, &[]),
                    cand(0.3, &[0]),
                    cand(0.2, &[1]),
                ],
            },
            ImageLesions {
                lesions: 1,
                candidates: vec![cand(0.8, &[]), cand(0.6, &[0])],
            },
            ImageLesions {
                lesions: 0,
                candidates: vec![cand(0.7, &[]), cand(0.5, &[])],
            },
        ];
        let f = froc(&images);
        assert_eq!((f.images, f.lesions, f.candidates), (3, 3, 8));
        let pts: Vec<(f64, f64, f64)> = f
            .curve
            .iter()
            .map(|p| (p.threshold, p.fp_per_image, p.sensitivity))
            .collect();
        let third = 1.0 / 3.0;
        let expect = [
            (0.9, 0.0, third),
            (0.8, third, third),
            (0.7, 2.0 * third, third),
            (0.6, 2.0 * third, 2.0 * third),
            (0.5, 4.0 * third, 2.0 * third), // two candidates of equal score: one point
            (0.3, 4.0 * third, 2.0 * third), // a second hit on a found lesion: no FP
            (0.2, 4.0 * third, 1.0),
        ];
        assert_eq!(pts.len(), expect.len());
        for (p, e) in pts.iter().zip(expect) {
            approx::assert_abs_diff_eq!(p.0, e.0, epsilon = 1e-6);
            approx::assert_abs_diff_eq!(p.1, e.1, epsilon = 1e-12);
            approx::assert_abs_diff_eq!(p.2, e.2, epsilon = 1e-12);
        }
        let at: Vec<f64> = f.sensitivity_at.iter().map(|s| s.1).collect();
        approx::assert_abs_diff_eq!(at[0], third, epsilon = 1e-12); // 0.25 FP/image
        approx::assert_abs_diff_eq!(at[1], third, epsilon = 1e-12); // 0.5: the 0.8 point
        approx::assert_abs_diff_eq!(at[2], 2.0 * third, epsilon = 1e-12); // 1
        approx::assert_abs_diff_eq!(at[3], 1.0, epsilon = 1e-12); // 2
        approx::assert_abs_diff_eq!(at[4], 1.0, epsilon = 1e-12); // 4: flat past the end
        approx::assert_abs_diff_eq!(
            f.mean_sensitivity,
            (2.0 * third + 2.0 * third + 2.0) / 5.0,
            epsilon = 1e-12
        );
    }

    #[test]
    fn froc_of_nothing_is_zero() {
        let f = froc(&[ImageLesions {
            lesions: 2,
            candidates: vec![],
        }]);
        assert!(f.curve.is_empty());
        assert!(f.sensitivity_at.iter().all(|s| s.1 == 0.0));
    }
}
