//! Lesion-level work end to end: `engine prepare coco` on a small
//! hand-written COCO export (exact masks, patients kept together, each bad
//! input), the FROC of hand-made maps through `engine eval`'s accumulator,
//! candidates and COCO detections out of `engine infer`, an evaluation-only
//! set (`--val 0 --test 1`) run by `engine eval --split test`, and training
//! on two prepared sets.
mod support;
use engine::data::Gray8;
use engine::data::coco::{BoxMask, draw_box};
use engine::data::prepared::{PreparedSet, load_combined};
use engine::eval::{Accumulator, EvalOptions, lesions_of};
use engine::model::{Meta, Model, ModelConfig};
use engine::ops::resize::Mode;
use std::path::{Path, PathBuf};
use support::{engine, gpu};

fn temp(name: &str) -> PathBuf {
    support::temp_dir("lesions", name)
}

/// `engine prepare coco --input INPUT --out OUT ARGS`.
fn prepare_coco(input: &Path, out: &Path, args: &[&str]) -> (i32, String, String) {
    let mut all = vec![
        "prepare".to_string(),
        "coco".into(),
        "--input".into(),
        s(input),
        "--out".into(),
        s(out),
    ];
    all.extend(args.iter().map(|a| a.to_string()));
    engine(&all)
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// A 40 x 20 grey image whose pixel (x, y) is `10 + x + 3y`, as PNG.
fn write_scan(path: &Path) {
    let mut g = Gray8::new(40, 20);
    for y in 0..20 {
        for x in 0..40 {
            g.set(x, y, (10 + x + 3 * y) as u8);
        }
    }
    engine::data::read::write_gray_png(path, &g).unwrap();
}

/// Five images of three patients (pa: 2 images, pb: 2, pc: 1 normal film),
/// boxes in pixels of the 40 x 20 images.
const COCO: &str = r#"{
  "categories": [{"id": 0, "name": "Mass", "supercategory": "none"}],
  "images": [
    {"id": 1, "file_name": "pa_L_CC.png", "width": 40, "height": 20},
    {"id": 2, "file_name": "pa_L_MLO.png", "width": 40, "height": 20},
    {"id": 3, "file_name": "pb_R_CC.png", "width": 40, "height": 20},
    {"id": 4, "file_name": "pb_R_MLO.png", "width": 40, "height": 20},
    {"id": 5, "file_name": "pc_L_CC.png", "width": 40, "height": 20}
  ],
  "annotations": [
    {"id": 10, "image_id": 1, "category_id": 0, "bbox": [4, 2, 12, 8]},
    {"id": 11, "image_id": 1, "category_id": 0, "bbox": [24, 10, 8, 6]},
    {"id": 12, "image_id": 2, "category_id": 0, "bbox": [10, 4, 16, 10]},
    {"id": 13, "image_id": 3, "category_id": 0, "bbox": [0, 0, 40, 20]},
    {"id": 14, "image_id": 4, "category_id": 0, "bbox": [30.5, 15.5, 3, 2]}
  ]
}"#;

/// A COCO export folder: the JSON as `_annotations.coco.json` and the images.
fn export(dir: &Path, json: &str) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("_annotations.coco.json"), json).unwrap();
    for name in ["pa_L_CC", "pa_L_MLO", "pb_R_CC", "pb_R_MLO", "pc_L_CC"] {
        write_scan(&dir.join(format!("{name}.png")));
    }
}

#[test]
fn coco_preparation_gives_exact_masks_at_square_pixels_and_keeps_patients_together() {
    let root = temp("prepare");
    let input = root.join("export");
    export(&input, COCO);
    let out = root.join("prepared");
    // Rows 0.2 mm, columns 0.1 mm: images become 20 x 20 at 0.2 mm.
    let (code, stdout, stderr) = prepare_coco(
        &input,
        &out,
        &[
            "--pixel-spacing",
            "0.2,0.1",
            "--box-mask",
            "box",
            "--val",
            "0.34",
            "--test",
            "0.33",
        ],
    );
    assert_eq!(code, 0, "{stdout}{stderr}");
    let set = PreparedSet::open(&out).unwrap();
    let films: Vec<_> = set.manifest.images.iter().filter(|e| !e.crop).collect();
    assert_eq!(films.len(), 5);
    for e in &films {
        assert_eq!((e.width, e.height), (20, 20), "{}", e.file);
        assert_eq!(e.pixel_spacing_mm, Some(0.2));
        // Patients are one split each.
        let same: Vec<_> = films.iter().filter(|o| o.patient == e.patient).collect();
        assert!(
            same.iter().all(|o| o.split == e.split),
            "{} split apart",
            e.patient
        );
    }
    let patients: std::collections::BTreeSet<_> =
        films.iter().map(|e| e.patient.as_str()).collect();
    assert_eq!(patients, ["pa", "pb", "pc"].into_iter().collect());
    let splits: std::collections::BTreeSet<_> = films.iter().map(|e| e.split.as_str()).collect();
    assert_eq!(splits.len(), 3, "one patient per split: {splits:?}");

    // pa_L_CC: boxes [4,2,12,8] and [24,10,8,6] halve in x: [2,2,8,10] and [12,10,16,16].
    let e = films.iter().find(|e| e.source == "pa_L_CC.png").unwrap();
    assert_eq!(
        e.lesion_boxes.as_deref(),
        Some(&[[2.0, 2.0, 8.0, 10.0], [12.0, 10.0, 16.0, 16.0]][..])
    );
    let (scan, mask) = load_combined(&out.join(&e.file)).unwrap();
    let mut expected = Gray8::new(20, 20);
    for y in 0..20 {
        for x in 0..20 {
            let inside = |b: [usize; 4]| x >= b[0] && x < b[2] && y >= b[1] && y < b[3];
            expected.set(
                x,
                y,
                (inside([2, 2, 8, 10]) || inside([12, 10, 16, 16])) as u8,
            );
        }
    }
    assert_eq!(mask, expected, "box masks, exactly");
    // Each output pixel averages two source columns: 10 + (2x + 0.5) + 3y, rounded.
    assert_eq!(scan.get(0, 0), 11);
    assert_eq!(scan.get(5, 3), 10 + 10 + 9 + 1);
    assert_eq!(e.classes, vec!["Mass".to_string()]);
    assert!(e.abnormal);
    // The film without boxes is normal; the sub-pixel box marks one pixel.
    let normal = films.iter().find(|e| e.source == "pc_L_CC.png").unwrap();
    assert!(!normal.abnormal && normal.positive_pixels == 0);
    let tiny = films.iter().find(|e| e.source == "pb_R_MLO.png").unwrap();
    // [15.25, 15.5, 16.75, 17.5] holds the centres (15.5 | 16.5, 15.5 | 16.5).
    assert_eq!(tiny.positive_pixels, 4);

    // The default ellipse: the inscribed ellipse of each box, drawn by the same rule.
    let out_e = root.join("prepared-ellipse");
    let (code, stdout, stderr) = prepare_coco(&input, &out_e, &["--pixel-spacing", "0.2,0.1"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let set = PreparedSet::open(&out_e).unwrap();
    let e = set
        .manifest
        .images
        .iter()
        .find(|e| e.source == "pa_L_MLO.png" && !e.crop)
        .unwrap();
    let (_, mask) = load_combined(&out_e.join(&e.file)).unwrap();
    let mut expected = Gray8::new(20, 20);
    draw_box(&mut expected, [5.0, 4.0, 13.0, 14.0], BoxMask::Ellipse);
    for v in &mut expected.pixels {
        *v = (*v != 0) as u8;
    }
    assert_eq!(mask, expected);
    // Semi-axes 4 and 5 around (9, 9): the widest row is 8 pixels, the box's width.
    assert_eq!(mask.count_nonzero(), 64);
}

/// `engine prepare coco` on an export whose JSON is `json`: (code, stderr).
fn prepare_with(name: &str, json: &str) -> (i32, String, PathBuf) {
    let root = temp(name);
    let input = root.join("export");
    export(&input, json);
    let out = root.join("prepared");
    let (code, _, stderr) = prepare_coco(&input, &out, &["--pixel-spacing", "0.2"]);
    (code, stderr, out)
}

#[test]
fn bad_coco_input_is_named_and_refused_before_anything_is_written() {
    let cases = [
        ("malformed", COCO.replace("\"images\": [", "\"images\": [[")),
        ("outside", COCO.replace("[24, 10, 8, 6]", "[36, 10, 8, 6]")),
        (
            "category",
            COCO.replace(
                "\"image_id\": 2, \"category_id\": 0",
                "\"image_id\": 2, \"category_id\": 7",
            ),
        ),
        (
            "no-image",
            COCO.replace("\"image_id\": 3,", "\"image_id\": 33,"),
        ),
        ("no-area", COCO.replace("[10, 4, 16, 10]", "[10, 4, 0, 10]")),
    ];
    let expect = [
        "not a COCO detection file",
        "annotation 11 on pa_L_CC.png (40x20): bbox [36.0, 10.0, 8.0, 6.0] lies outside the image",
        "annotation 12 has category 7, which is not in \"categories\" (known: 0)",
        "annotation 13 names image 33, which is not in \"images\"",
        "annotation 12 on pa_L_MLO.png (40x20): bbox [10.0, 4.0, 0.0, 10.0] has no area",
    ];
    for ((name, json), want) in cases.iter().zip(expect) {
        let (code, stderr, out) = prepare_with(name, json);
        assert_eq!(code, 2, "{name}: {stderr}");
        assert!(
            stderr.contains("_annotations.coco.json"),
            "{name}: names the file: {stderr}"
        );
        assert!(stderr.contains(want), "{name}: {stderr}");
        assert!(
            !out.join("manifest.json").exists(),
            "{name}: nothing prepared"
        );
    }
    // A file name the patient regex cannot read.
    let root = temp("regex");
    let input = root.join("export");
    export(&input, COCO);
    let (code, _, stderr) = prepare_coco(
        &input,
        &root.join("p"),
        &["--pixel-spacing", "0.2", "--patient-regex", "^case([0-9]+)"],
    );
    assert_eq!(code, 2);
    assert!(
        stderr.contains("file name \"pa_L_CC.png\" does not match --patient-regex"),
        "{stderr}"
    );
}

#[test]
fn a_missing_or_unreadable_image_is_skipped_and_reported() {
    let root = temp("missing");
    let input = root.join("export");
    export(&input, COCO);
    std::fs::remove_file(input.join("pb_R_CC.png")).unwrap();
    std::fs::write(input.join("pb_R_MLO.png"), b"not a png").unwrap();
    let out = root.join("prepared");
    let (code, stdout, stderr) = prepare_coco(&input, &out, &["--pixel-spacing", "0.2"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("pb_R_CC.png") && stderr.contains("pb_R_MLO.png"),
        "{stderr}"
    );
    assert!(stdout.contains("skipped: 2"), "{stdout}");
    let m = PreparedSet::open(&out).unwrap().manifest;
    assert_eq!(m.images.iter().filter(|e| !e.crop).count(), 3);
    let skipped: Vec<&str> = m.skipped.iter().map(|k| k.item.as_str()).collect();
    assert_eq!(skipped, ["pb_R_CC.png", "pb_R_MLO.png"]);
}

/// Cones of height `v` at (x, y), falling `slope` per pixel.
fn cones(w: usize, h: usize, peaks: &[(f32, f32, f32)], slope: f32) -> Vec<f32> {
    (0..w * h)
        .map(|i| {
            let (x, y) = ((i % w) as f32, (i / w) as f32);
            peaks
                .iter()
                .map(|&(px, py, v)| v - slope * (x - px).hypot(y - py))
                .fold(0.0f32, f32::max)
        })
        .collect()
}

#[test]
fn froc_of_hand_made_maps_through_the_evaluation() {
    // Image A: lesions as boxes around (10, 10) and (40, 30); its map peaks
    // on the first (0.9) and at a false spot (0.7). Image B: a mask lesion
    // around (20, 20) (no boxes); its map peaks there (0.6) and at a false
    // spot (0.8). Image C: normal, a false peak of 0.5.
    let (w, h) = (50, 40);
    let mut acc = Accumulator::new(EvalOptions::default());
    let opts = engine::lesions::CandidateOptions {
        min_distance_mm: 5.0,
        min_score: 0.05,
        max_per_image: 10,
    };
    let mut add = |name: &str, mask: Gray8, boxes: Option<Vec<[f64; 4]>>, prob: Vec<f32>| {
        let mut sample =
            engine::data::prepared::Sample::in_memory(name, Gray8::new(w, h), mask.clone());
        sample.lesion_boxes = boxes;
        let (_, l) = lesions_of(&sample, &mask, &prob, 1.0, &opts);
        acc.add(name, &mask, &prob, l);
    };
    let mut mask_a = Gray8::new(w, h);
    draw_box(&mut mask_a, [6.0, 6.0, 14.0, 14.0], BoxMask::Box);
    draw_box(&mut mask_a, [36.0, 26.0, 44.0, 34.0], BoxMask::Box);
    add(
        "a",
        mask_a,
        Some(vec![[6.0, 6.0, 14.0, 14.0], [36.0, 26.0, 44.0, 34.0]]),
        cones(w, h, &[(10.0, 10.0, 0.9), (30.0, 5.0, 0.7)], 0.1),
    );
    let mut mask_b = Gray8::new(w, h);
    draw_box(&mut mask_b, [17.0, 17.0, 24.0, 24.0], BoxMask::Ellipse);
    add(
        "b",
        mask_b,
        None,
        cones(w, h, &[(20.0, 20.0, 0.6), (5.0, 35.0, 0.8)], 0.1),
    );
    add(
        "c",
        Gray8::new(w, h),
        None,
        cones(w, h, &[(25.0, 20.0, 0.5)], 0.1),
    );
    let s = acc.finish();
    let f = &s.lesion;
    assert_eq!((f.images, f.lesions, f.candidates), (3, 3, 5));
    let pts: Vec<(f64, f64, f64)> = f
        .curve
        .iter()
        .map(|p| {
            (
                (p.threshold * 10.0).round() / 10.0,
                p.fp_per_image * 3.0,
                p.sensitivity * 3.0,
            )
        })
        .collect();
    // Scores high to low: 0.9 hit, 0.8 FP, 0.7 FP, 0.6 hit, 0.5 FP.
    let want = [
        (0.9, 0.0, 1.0),
        (0.8, 1.0, 1.0),
        (0.7, 2.0, 1.0),
        (0.6, 2.0, 2.0),
        (0.5, 3.0, 2.0),
    ];
    assert_eq!(pts.len(), want.len());
    for (p, q) in pts.iter().zip(want) {
        approx::assert_abs_diff_eq!(p.0, q.0, epsilon = 1e-9);
        approx::assert_abs_diff_eq!(p.1, q.1, epsilon = 1e-9);
        approx::assert_abs_diff_eq!(p.2, q.2, epsilon = 1e-9);
    }
    let at: Vec<f64> = f.sensitivity_at.iter().map(|x| x.1).collect();
    let third = 1.0 / 3.0;
    for (got, want) in at
        .iter()
        .zip([third, third, 2.0 * third, 2.0 * third, 2.0 * third])
    {
        approx::assert_abs_diff_eq!(*got, want, epsilon = 1e-12);
    }
    let rows: Vec<(usize, usize)> = s
        .per_image
        .iter()
        .map(|r| (r.lesions, r.lesions_found))
        .collect();
    assert_eq!(rows, [(2, 1), (1, 1), (0, 0)]);
    let scores: Vec<(f64, f64)> = s
        .per_image
        .iter()
        .map(|r| {
            let r1 = |v: f64| (v * 10.0).round() / 10.0;
            (r1(r.best_hit_score), r1(r.best_false_positive_score))
        })
        .collect();
    assert_eq!(scores, [(0.9, 0.7), (0.6, 0.8), (0.0, 0.5)]);
}

fn tiny_checkpoint(path: &Path) {
    let model = Model::new(
        gpu(),
        ModelConfig {
            width: 0.125,
            resize: Mode::Bilinear,
        },
        5,
    )
    .unwrap();
    model
        .save(
            gpu(),
            path,
            &Meta {
                pos_weight: 15.0,
                ..Default::default()
            },
            false,
        )
        .unwrap();
}

#[test]
fn an_evaluation_only_set_runs_in_eval_and_infer_writes_candidates_and_coco_detections() {
    let root = temp("evalonly");
    let input = root.join("export");
    export(&input, COCO);
    let prepared = root.join("prepared");
    let (code, stdout, stderr) = prepare_coco(
        &input,
        &prepared,
        &["--pixel-spacing", "0.2", "--val", "0", "--test", "1"],
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("test             5 images"), "{stdout}");
    let m = PreparedSet::open(&prepared).unwrap().manifest;
    assert!(m.images.iter().all(|e| e.split == "test" && !e.crop));
    let ck = root.join("tiny.safetensors");
    tiny_checkpoint(&ck);
    let out = root.join("eval");
    let (code, stdout, stderr) = engine(&[
        "eval",
        "--checkpoint",
        &s(&ck),
        "--data",
        &s(&prepared),
        "--split",
        "test",
        "--out",
        &s(&out),
        "--no-panels",
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("lesion FROC: 5 lesions in 5 images"),
        "{stdout}"
    );
    assert!(out.join("froc.png").is_file());
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["lesion"]["lesions"], 5);
    assert_eq!(
        summary["lesion"]["sensitivity_at"]
            .as_array()
            .unwrap()
            .len(),
        5
    );

    // The same films through engine infer, with the export's own ids.
    let inf = root.join("infer");
    let files: Vec<String> = ["pa_L_CC", "pc_L_CC"]
        .iter()
        .map(|n| s(&input.join(format!("{n}.png"))))
        .collect();
    let mut args = vec![
        "infer".to_string(),
        "--checkpoint".into(),
        s(&ck),
        "--out".into(),
        s(&inf),
        "--json".into(),
        "--pixel-spacing".into(),
        "0.2".into(),
        "--min-candidate-score".into(),
        "0".into(),
        "--coco-images".into(),
        s(&input.join("_annotations.coco.json")),
    ];
    args.extend(files);
    let (code, stdout, stderr) = engine(&args);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let rows = engine::batch::read_rows(&inf.join("results.csv")).unwrap();
    let dets: Vec<engine::batch::CocoDetection> =
        serde_json::from_str(&std::fs::read_to_string(inf.join("detections.json")).unwrap())
            .unwrap();
    let mut total = 0;
    for (row, image_id) in rows.iter().zip([1u64, 5]) {
        let sc: engine::batch::ScanCandidates = serde_json::from_str(
            &std::fs::read_to_string(inf.join(format!("{}_candidates.json", row.output))).unwrap(),
        )
        .unwrap();
        assert_eq!(row.candidates, Some(sc.candidates.len()));
        assert!(
            !sc.candidates.is_empty(),
            "a map always has a peak at score floor 0"
        );
        assert_eq!(row.top_candidate_score, Some(sc.candidates[0].score));
        let mine: Vec<_> = dets.iter().filter(|d| d.image_id == image_id).collect();
        assert_eq!(mine.len(), sc.candidates.len());
        for (d, c) in mine.iter().zip(&sc.candidates) {
            assert_eq!(d.category_id, 0, "the export's category");
            assert_eq!(d.score, c.score);
            assert_eq!(
                d.bbox,
                [
                    c.bbox[0],
                    c.bbox[1],
                    c.bbox[2] - c.bbox[0],
                    c.bbox[3] - c.bbox[1]
                ]
            );
            assert!(c.bbox[0] <= c.x && c.x <= c.bbox[2] && c.bbox[1] <= c.y && c.y <= c.bbox[3]);
        }
        total += mine.len();
    }
    assert_eq!(dets.len(), total);
    let csv = std::fs::read_to_string(inf.join("candidates.csv")).unwrap();
    assert_eq!(csv.lines().count(), total + 1);
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(inf.join("results.json")).unwrap()).unwrap();
    assert_eq!(json["candidates"].as_array().unwrap().len(), 2);
}

#[test]
fn training_on_two_prepared_sets_uses_both_and_validates_each() {
    let root = temp("two-sets");
    let (a, b) = (root.join("alpha"), root.join("beta"));
    for (dir, n, seed) in [(&a, "6", "1"), (&b, "4", "2")] {
        let (code, _, stderr) = engine(&[
            "synth",
            "--out",
            &s(dir),
            "-n",
            n,
            "--width",
            "64",
            "--seed",
            seed,
        ]);
        assert_eq!(code, 0, "{stderr}");
    }
    let count = |d: &Path, split: &str| PreparedSet::open(d).unwrap().split(split).len();
    let run = root.join("run");
    let (code, stdout, stderr) = engine(&[
        "train",
        "--data",
        &s(&a),
        "--data",
        &s(&b),
        "--out",
        &s(&run),
        "--width",
        "0.125",
        "--sizes",
        "64:1",
        "--batch",
        "2",
        "--micro-batch",
        "2",
    ]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    // Synthetic sets have no val split: each holds out round(15%) (at
    // least one) of its training samples.
    let (mut train_total, mut val_total) = (0, 0);
    for d in [&a, &b] {
        let n = count(d, "train") + count(d, "train_crops");
        let k = ((n as f64 * 0.15).round() as usize).clamp(1, n - 1);
        train_total += n - k;
        val_total += k;
    }
    assert!(
        stdout.contains(&format!(
            "{train_total} training and {val_total} validation images"
        )),
        "{stdout}"
    );
    let jsonl = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let epoch: serde_json::Value = jsonl
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| v["kind"] == "epoch")
        .unwrap();
    let sets = epoch["val_sets"].as_object().unwrap();
    assert_eq!(sets.keys().collect::<Vec<_>>(), ["alpha", "beta"]);
    for v in sets.values() {
        assert!(
            v["pixel_ap"].is_f64() && v["sensitivity_at_1fp"].is_f64(),
            "{v}"
        );
    }
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["data"].as_array().unwrap().len(), 2);
    assert!(
        stdout.contains("alpha: pixel AP") && stdout.contains("beta: pixel AP"),
        "{stdout}"
    );
}
