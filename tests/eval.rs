//! `engine eval`: metrics against hand-computed values, the sweep's
//! exactness, endpoints and monotonicity, AP and AUC, and the written
//! outputs (PNGs, CSV, JSON, an HTML index that links only existing files).
mod support;
use engine::data::Gray8;
use engine::data::prepared::Sample;
use engine::error::exit_code;
use engine::eval::metrics::{self, Counts, ImageScore, PixelHistogram};
use engine::eval::{Accumulator, EvalOptions, evaluate};
use engine::infer::{TileOptions, probability_map};
use engine::model::{Meta, Model, ModelConfig};
use engine::ops::resize::Mode;
use rand::{Rng, SeedableRng};
use std::path::{Path, PathBuf};

fn close(a: f64, b: f64) {
    assert!((a - b).abs() < 1e-12, "{a} != {b}");
}

/// A fresh temp folder for this suite.
fn temp(name: &str) -> PathBuf {
    support::temp_dir("eval", name)
}

fn gray(w: usize, h: usize, pixels: Vec<u8>) -> Gray8 {
    assert_eq!(pixels.len(), w * h);
    Gray8 {
        width: w,
        height: h,
        pixels,
    }
}

#[test]
fn pixel_metrics_by_hand_with_a_tie_at_the_threshold() {
    // Pixels 0 and 3 sit exactly at the threshold: negative (p > t rule).
    let prob = [0.5, 0.6, 0.4, 0.5, 0.9, 0.1];
    let mask = [1, 1, 0, 0, 1, 0];
    let c = metrics::pixel_counts(&prob, &mask, 0.5);
    assert_eq!(
        c,
        Counts {
            tp: 2,
            fp: 0,
            fn_: 1,
            tn: 3
        }
    );
    close(c.precision(), 1.0);
    close(c.recall(), 2.0 / 3.0);
    close(c.f1(), 0.8);
    close(c.iou(), 2.0 / 3.0);
    close(c.accuracy(), 5.0 / 6.0);
    close(c.background_iou(), 0.75);
    close(c.mean_iou(), (2.0 / 3.0 + 0.75) / 2.0);
    // Just below the tie both tied pixels turn positive.
    let c = metrics::pixel_counts(&prob, &mask, 0.49);
    assert_eq!((c.tp, c.fp, c.fn_, c.tn), (3, 1, 0, 2));
}

#[test]
fn empty_mask_and_all_positive_map() {
    let prob = [1.0f32; 6];
    let mask = [0u8; 6];
    let c = metrics::pixel_counts(&prob, &mask, 0.5);
    assert_eq!((c.tp, c.fp, c.fn_, c.tn), (0, 6, 0, 0));
    close(c.precision(), 0.0);
    close(c.recall(), 0.0);
    close(c.f1(), 0.0);
    close(c.accuracy(), 0.0);
    close(c.mean_iou(), 0.0);
    // Empty mask, empty prediction: everything is a true negative.
    let c = metrics::pixel_counts(&[0.2f32; 6], &mask, 0.5);
    assert_eq!((c.tp, c.fp, c.fn_, c.tn), (0, 0, 0, 6));
    close(c.accuracy(), 1.0);
    close(c.mean_iou(), 0.5);
}

#[test]
fn image_rule_and_scores() {
    // 30 x 25 = 750 pixels: more than 1 pixel must exceed the threshold.
    assert_eq!(metrics::area_min_pixels(750), 2);
    assert_eq!(metrics::area_min_pixels(749), 1);
    assert_eq!(metrics::area_min_pixels(1500), 3);
    let mut prob = vec![0.1f32; 750];
    prob[10] = 0.9;
    assert!(!metrics::image_predicted(&prob, 0.5));
    prob[20] = 0.5; // a tie does not count
    assert!(!metrics::image_predicted(&prob, 0.5));
    prob[20] = 0.7;
    assert!(metrics::image_predicted(&prob, 0.5));
    // Area score: the 2nd largest; positive at t exactly when score > t.
    close(ImageScore::Area.score(&prob), 0.7f32 as f64);
    close(ImageScore::Max.score(&prob), 0.9f32 as f64);
    close(
        ImageScore::TopMean.score(&prob),
        (0.9f32 as f64 + 0.7f32 as f64) / 2.0,
    );
    for t in [0.0f32, 0.1, 0.5, 0.69, 0.7, 0.71, 0.9] {
        assert_eq!(
            metrics::image_predicted(&prob, t),
            ImageScore::Area.score(&prob) > t as f64,
            "t {t}"
        );
    }
}

#[test]
fn accumulator_sums_pixels_and_counts_images() {
    let opts = EvalOptions {
        bins: 100,
        ..EvalOptions::default()
    };
    let mut acc = Accumulator::new(opts);
    // Image a: 750 px, lesion of 3 px, 2 found, 1 false positive -> predicted.
    let mut mask = vec![0u8; 750];
    mask[0..3].fill(1);
    let mut prob = vec![0.0f32; 750];
    prob[0] = 0.8;
    prob[1] = 0.6;
    prob[2] = 0.5; // tie: missed
    prob[100] = 0.7;
    let r = acc
        .add("a.png", &gray(30, 25, mask), &prob, Default::default())
        .clone();
    assert_eq!(
        (r.truth, r.predicted, r.outcome.as_str(), r.tp, r.fp, r.fn_),
        (1, 1, "TP", 2, 1, 1)
    );
    close(r.dice, 4.0 / 6.0);
    // Image b: no lesion, one pixel above: not predicted (needs 2).
    let mut prob = vec![0.0f32; 750];
    prob[5] = 0.99;
    let r = acc
        .add(
            "b.png",
            &gray(30, 25, vec![0; 750]),
            &prob,
            Default::default(),
        )
        .clone();
    assert_eq!((r.truth, r.predicted, r.outcome.as_str()), (0, 0, "TN"));
    // Image c: no lesion, 5 pixels above: a false positive.
    let mut prob = vec![0.0f32; 750];
    prob[..5].fill(0.95);
    acc.add(
        "c.png",
        &gray(30, 25, vec![0; 750]),
        &prob,
        Default::default(),
    );
    let s = acc.finish();
    let p = s.pixel.counts;
    assert_eq!((p.tp, p.fp, p.fn_, p.tn), (2, 1 + 1 + 5, 1, 2250 - 10));
    close(s.pixel.iou.unwrap(), 2.0 / 10.0);
    close(
        s.pixel.mean_iou.unwrap(),
        (0.2 + 2240.0 / (2240.0 + 7.0 + 1.0)) / 2.0,
    );
    let i = s.image.counts;
    assert_eq!((i.tp, i.fp, i.fn_, i.tn), (1, 1, 0, 1));
    close(s.image.accuracy, 2.0 / 3.0);
    close(s.image.precision, 0.5);
    // Area scores: a 0.7 (2nd largest), b 0.0, c 0.95; AUC: the lesion image
    // beats b but not c.
    close(s.image.roc_auc.unwrap(), 0.5);
    assert_eq!(s.picks.false_positives, vec!["c.png".to_string()]);
    assert!(s.picks.false_negatives.is_empty());
    assert_eq!(s.picks.best, vec!["a.png".to_string()]);
    // The sweep row at 0.5 equals the counts at the threshold.
    let row = &s.sweep[50];
    close(row.threshold, 0.5);
    assert_eq!(
        (row.pixel_tp, row.pixel_fp, row.pixel_fn, row.pixel_tn),
        (p.tp, p.fp, p.fn_, p.tn)
    );
    assert_eq!((row.image_tp, row.image_fp, row.image_tn), (1, 1, 1));
}

fn random_maps(n: usize, len: usize, seed: u64) -> Vec<(Vec<f32>, Vec<u8>)> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let mask: Vec<u8> = (0..len).map(|_| rng.random_bool(0.2) as u8).collect();
            // Lesion pixels score higher on average; some values on the grid.
            let prob = mask
                .iter()
                .map(|&m| {
                    if rng.random_bool(0.1) {
                        rng.random_range(0..=100) as f32 / 100.0
                    } else {
                        (rng.random::<f32>() * 0.7 + 0.3 * m as f32).min(1.0)
                    }
                })
                .collect();
            (prob, mask)
        })
        .collect()
}

#[test]
fn histogram_sweep_is_exact_at_grid_thresholds_and_monotone() {
    let maps = random_maps(3, 2000, 7);
    let mut h = PixelHistogram::new(100);
    for (p, m) in &maps {
        h.add(p, m);
    }
    let sweep = h.sweep();
    assert_eq!(sweep.len(), 101);
    for (k, c) in sweep.iter().enumerate() {
        let mut direct = Counts::default();
        for (p, m) in &maps {
            let d = metrics::pixel_counts(p, m, h.threshold(k));
            direct.tp += d.tp;
            direct.fp += d.fp;
            direct.fn_ += d.fn_;
            direct.tn += d.tn;
        }
        assert_eq!(*c, direct, "threshold {}", h.threshold(k));
    }
    // Endpoints: at 0 every pixel above 0 is predicted; at 1 none.
    let zeros: u64 = maps
        .iter()
        .flat_map(|(p, m)| p.iter().zip(m))
        .filter(|(p, m)| **p <= 0.0 && **m != 0)
        .count() as u64;
    assert!(zeros > 0);
    assert_eq!(sweep[0].fn_, zeros);
    assert_eq!((sweep[100].tp, sweep[100].fp), (0, 0));
    close(sweep[100].recall(), 0.0);
    for w in sweep.windows(2) {
        assert!(w[1].tp <= w[0].tp && w[1].fp <= w[0].fp);
        assert!(w[1].recall() <= w[0].recall());
    }
    // The PR curve goes from high to low threshold with growing recall and
    // ends at the recall of threshold 0.
    let (curve, _) = metrics::pixel_pr(&h);
    for w in curve.windows(2) {
        assert!(w[1].recall >= w[0].recall && w[1].threshold < w[0].threshold);
    }
    close(curve.last().unwrap().recall, sweep[0].recall());
    // Pixel AP equals image-style AP of the scores rounded up to the grid
    // (for maps without p = 0, which no threshold t >= 0 predicts).
    let maps: Vec<(Vec<f32>, Vec<u8>)> = maps
        .into_iter()
        .map(|(p, m)| (p.iter().map(|&v| v.max(1e-6)).collect(), m))
        .collect();
    let mut h = PixelHistogram::new(100);
    for (p, m) in &maps {
        h.add(p, m);
    }
    let (_, ap) = metrics::pixel_pr(&h);
    let items: Vec<(bool, f64)> = maps
        .iter()
        .flat_map(|(p, m)| p.iter().zip(m))
        .map(|(&p, &m)| (m != 0, h.bin(p) as f64))
        .collect();
    let (_, ap_exact) = metrics::image_pr(&items);
    assert!((ap - ap_exact).abs() < 1e-9, "{ap} vs {ap_exact}");
    assert!(ap > 0.3 && ap < 1.0, "AP {ap}");
}

#[test]
fn average_precision_and_auc_by_hand() {
    let items = [(true, 0.9), (false, 0.8), (true, 0.7), (false, 0.1)];
    let (curve, ap) = metrics::image_pr(&items);
    close(ap, 0.5 * 1.0 + 0.5 * (2.0 / 3.0));
    assert_eq!(curve.len(), 4);
    let (roc, auc) = metrics::image_roc(&items);
    close(auc.unwrap(), 0.75);
    assert_eq!((roc[0].fpr, roc[0].tpr), (0.0, 0.0));
    assert_eq!(
        (roc.last().unwrap().fpr, roc.last().unwrap().tpr),
        (1.0, 1.0)
    );
    // Ties count one half: pairs 1 + 1 + 0.5 + 1 out of 4.
    let tied = [(true, 0.9), (true, 0.5), (false, 0.5), (false, 0.1)];
    close(metrics::image_roc(&tied).1.unwrap(), 0.875);
    // One class only: AUC undefined; no positives: AP 0.
    assert_eq!(metrics::image_roc(&[(false, 0.3), (false, 0.2)]).1, None);
    close(metrics::image_pr(&[(false, 0.3)]).1, 0.0);
}

#[test]
fn auc_of_perfect_reversed_constant_and_random_scorers() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    let truth: Vec<bool> = (0..4000).map(|_| rng.random_bool(0.3)).collect();
    let perfect: Vec<(bool, f64)> = truth
        .iter()
        .map(|&t| (t, if t { 0.6 } else { 0.1 } + rng.random::<f64>() * 0.3))
        .collect();
    close(metrics::image_roc(&perfect).1.unwrap(), 1.0);
    close(metrics::image_pr(&perfect).1, 1.0);
    let reversed: Vec<(bool, f64)> = perfect.iter().map(|&(t, s)| (t, 1.0 - s)).collect();
    close(metrics::image_roc(&reversed).1.unwrap(), 0.0);
    let constant: Vec<(bool, f64)> = truth.iter().map(|&t| (t, 0.5)).collect();
    close(metrics::image_roc(&constant).1.unwrap(), 0.5);
    let random: Vec<(bool, f64)> = truth.iter().map(|&t| (t, rng.random::<f64>())).collect();
    let auc = metrics::image_roc(&random).1.unwrap();
    assert!((auc - 0.5).abs() < 0.04, "random AUC {auc}");
    // A random scorer's AP is about the positive fraction.
    let frac = truth.iter().filter(|&&t| t).count() as f64 / truth.len() as f64;
    let ap = metrics::image_pr(&random).1;
    assert!((ap - frac).abs() < 0.05, "random AP {ap} vs {frac}");
}

#[test]
fn chosen_thresholds() {
    // Scores are f32 values (as the maps' statistics), thresholds f32 k/100.
    let f = |v: f32| v as f64;
    let items = [
        (true, f(0.9)),
        (false, f(0.8)),
        (true, f(0.7)),
        (false, f(0.1)),
    ];
    let sweep = metrics::image_sweep(&items, 100);
    // Recall 1 needs t < 0.7: the highest grid threshold is 0.69.
    let c = metrics::threshold_for_recall(&sweep, 1.0).unwrap();
    close(c.threshold, 0.69f32 as f64);
    close(c.precision, 2.0 / 3.0);
    // Recall 0.5 is reached up to t = 0.89.
    let c = metrics::threshold_for_recall(&sweep, 0.5).unwrap();
    close(c.threshold, 0.89f32 as f64);
    close(c.precision, 1.0);
    // F1: t in [0.8, 0.9) gives 2/3, [0.7, 0.8) 1/2, [0.1, 0.7) 0.8 and
    // below 0.1 2/3: the highest grid threshold of F1 0.8 is 0.69.
    let c = metrics::threshold_max_f1(&sweep).unwrap();
    close(c.f1, 0.8);
    close(c.threshold, 0.69f32 as f64);
    assert_eq!(
        metrics::threshold_for_recall(&metrics::image_sweep(&[(false, 0.2)], 100), 0.9),
        None
    );
}

/// Every src= and href= target in the HTML.
fn links(html: &str) -> Vec<String> {
    let mut out = Vec::new();
    for attr in ["src=\"", "href=\""] {
        for (i, _) in html.match_indices(attr) {
            let rest = &html[i + attr.len()..];
            out.push(rest[..rest.find('"').unwrap()].to_string());
        }
    }
    out
}

fn png_size(path: &Path) -> (u32, u32) {
    image::image_dimensions(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn eval_writes_panels_plots_and_an_index_that_links_only_existing_files() {
    let gpu = support::gpu();
    let model = Model::new(
        gpu,
        ModelConfig {
            width: 0.125,
            resize: Mode::Bilinear,
        },
        1,
    )
    .unwrap();
    let predictor = engine::predictor::Predictor::single(model, None, "c");
    // Three small scans: two with a square lesion, one without; sizes not
    // multiples of 32 (the padded, fully convolutional path).
    let mut samples = Vec::new();
    for (i, (w, h, lesion)) in [(64, 48, true), (40, 56, false), (72, 64, true)]
        .into_iter()
        .enumerate()
    {
        let mut scan = gray(w, h, (0..w * h).map(|j| (j * 7 % 200) as u8).collect());
        let mut mask = Gray8::new(w, h);
        if lesion {
            for y in 10..20 {
                for x in 12..24 {
                    mask.set(x, y, 1);
                    scan.set(x, y, 250);
                }
            }
        }
        samples.push(Sample::in_memory(format!("dir/img {i}.png"), scan, mask));
    }
    let out = temp("outputs");
    let opts = EvalOptions {
        panel_size: 48,
        ..EvalOptions::default()
    };
    let s = evaluate(
        gpu,
        &predictor,
        &samples,
        &opts,
        Default::default(),
        &out,
        false,
    )
    .unwrap();
    assert_eq!((s.images, s.positive_images, s.negative_images), (3, 2, 1));
    let c = s.pixel.counts;
    assert_eq!(c.tp + c.fp + c.fn_ + c.tn, 64 * 48 + 40 * 56 + 72 * 64);
    assert_eq!(c.tp + c.fn_, 2 * 120);
    assert_eq!(s.sweep.len(), 101);
    // The same probability maps as `engine infer`'s path.
    for (r, smp) in s.per_image.iter().zip(&samples) {
        let (scan, _) = smp.load().unwrap();
        let p = probability_map(
            gpu,
            &predictor.members()[0].model,
            &scan,
            &TileOptions::default(),
        )
        .unwrap();
        let max = p.iter().copied().fold(0.0f32, f32::max) as f64;
        assert_eq!(r.max_probability, max, "{}", r.file);
    }
    for f in [
        "summary.json",
        "images.csv",
        "sweep.csv",
        "pr_pixel.png",
        "pr_image.png",
        "roc_image.png",
        "froc.png",
        "index.html",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
        assert!(s.files.iter().any(|x| x == f), "{f} not listed");
    }
    assert_eq!(png_size(&out.join("pr_pixel.png")), (640, 520));
    // Panels: four pictures of the scaled scan side by side under a label strip.
    assert_eq!(s.per_image[0].panel, "panels/0000_dir_img_0.png");
    let (pw, ph) = png_size(&out.join(&s.per_image[0].panel));
    assert_eq!((pw, ph), (4 * 48 + 3 * 4, 36 + 24));
    for r in &s.per_image {
        assert!(out.join(&r.panel).is_file(), "{}", r.panel);
    }
    let csv = std::fs::read_to_string(out.join("images.csv")).unwrap();
    assert_eq!(csv.lines().count(), 4);
    assert!(csv.starts_with("file,width,height,truth,score,predicted,"));
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(json["images"], 3);
    assert_eq!(json["image_score"], "area");
    assert_eq!(json["per_image"].as_array().unwrap().len(), 3);
    let html = std::fs::read_to_string(out.join("index.html")).unwrap();
    for id in ["best", "worst", "false-positives", "false-negatives", "all"] {
        assert!(html.contains(&format!("id=\"{id}\"")), "section {id}");
    }
    let l = links(&html);
    // Three panel links in the table, three plots twice, three data files.
    assert!(l.len() >= 3 + 6 + 3, "{l:?}");
    for target in &l {
        assert!(
            !target.contains("://") && !target.starts_with('/'),
            "{target}"
        );
        assert!(out.join(target).is_file(), "index links a missing {target}");
    }
    for r in &s.per_image {
        assert!(l.contains(&r.panel), "{} not linked", r.panel);
    }
    let _ = std::fs::remove_dir_all(&out);

    // Saved and loaded through the command: exit code 0 and the JSON on stdout.
    let dir = temp("cli");
    let ckpt = dir.join("tiny.safetensors");
    predictor.members()[0]
        .model
        .save(
            gpu,
            &ckpt,
            &Meta {
                pos_weight: 15.0,
                ..Default::default()
            },
            false,
        )
        .unwrap();
    let data = dir.join("data");
    support::write_test_split(&data, &samples);
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_engine"))
        .args(["eval", "--json", "--no-panels", "--checkpoint"])
        .arg(&ckpt)
        .arg("--data")
        .arg(&data)
        .arg("--out")
        .arg(dir.join("out"))
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(json["images"], 3);
    assert!(!dir.join("out/index.html").exists());
    let _ = std::fs::remove_dir_all(&dir);
}

fn run_engine(args: &[&str]) -> (Option<i32>, String) {
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_engine"))
        .args(args)
        .output()
        .unwrap();
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn bad_input_exits_with_2() {
    let dir = temp("bad");
    let ckpt = dir.join("missing.safetensors");
    let (code, err) = run_engine(&[
        "eval",
        "--checkpoint",
        ckpt.to_str().unwrap(),
        "--data",
        "data/sample",
    ]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("does not exist"), "{err}");
    // A corrupt checkpoint.
    let corrupt = dir.join("corrupt.safetensors");
    std::fs::write(&corrupt, b"not a checkpoint").unwrap();
    let (code, err) = run_engine(&[
        "eval",
        "--checkpoint",
        corrupt.to_str().unwrap(),
        "--data",
        "data/sample",
        "--out",
        dir.join("o").to_str().unwrap(),
    ]);
    assert_eq!(code, Some(2), "{err}");
    // A folder that is not a prepared set.
    let (code, err) = run_engine(&[
        "eval",
        "--checkpoint",
        corrupt.to_str().unwrap(),
        "--data",
        dir.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(2), "{err}");
    // Bad values, and clap's own usage errors.
    let (code, err) = run_engine(&[
        "eval",
        "--checkpoint",
        corrupt.to_str().unwrap(),
        "--data",
        "data/sample",
        "--threshold",
        "1.5",
    ]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--threshold"), "{err}");
    let (code, _) = run_engine(&["eval", "--data", "data/sample"]);
    assert_eq!(code, Some(2));
    // An empty split.
    let (code, err) = run_engine(&[
        "eval",
        "--checkpoint",
        corrupt.to_str().unwrap(),
        "--data",
        "data/sample",
        "--split",
        "nosuch",
    ]);
    assert_eq!(code, Some(2), "{err}");
    // The classification itself: internal errors are 1.
    assert_eq!(exit_code(&anyhow::anyhow!("GPU lost")), 1);
    assert_eq!(
        exit_code(&anyhow::Error::new(engine::error::BadInput("x".into())).context("reading")),
        2
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_scaled_down_panel_keeps_the_scan_grey_levels() {
    // A 100x80 scan of grey 200 drawn at most 50 px per side: the scan tile
    // must stay grey 200 (the image crate clamps f32 resizes to [0, 1]).
    let mut scan = Gray8::new(100, 80);
    scan.pixels.iter_mut().for_each(|v| *v = 200);
    let mask = Gray8::new(100, 80);
    let prob = vec![0.25f32; 100 * 80];
    let dir = std::env::temp_dir().join(format!("engine-panel-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("panel.png");
    engine::eval::panels::write_panel(&path, &scan, &mask, &prob, 0.5, 50, &[]).unwrap();
    let img = image::open(&path).unwrap().to_rgb8();
    // Tile 0 (the scan) starts at x = 0 below the label strip.
    let px = img.get_pixel(10, img.height() - 10);
    assert_eq!(px.0, [200, 200, 200], "scan tile pixel");
    std::fs::remove_dir_all(&dir).ok();
}
