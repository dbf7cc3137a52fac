//! The bundled pretrained model (data/models/mias-w025/, an ensemble of ten
//! networks, two per cross-validation fold at two pixel spacings): every
//! member loads with the spacing its model card states, and
//! on the real mini-MIAS test split (prepared as the card says) `engine
//! eval` of the folder reproduces the card's numbers.
mod support;
use engine::model::Model;
use engine::spacing::ModelSpacing;
use std::path::{Path, PathBuf};
use support::{gpu, temp_dir};

const MODEL: &str = "data/models/mias-w025";
const FOLDS: usize = 5;
/// Each fold's two members: file suffix and the model spacing in mm (0.3 mm
/// is the training data's 0.2 mm / 0.66, the paper's downscale).
const SCALES: [(&str, f64); 2] = [("0.6mm", 0.6), ("0.3mm", 0.2 / 0.66)];

fn model_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(MODEL)
}

#[test]
fn every_member_of_the_bundled_model_loads_with_its_spacing_and_runs() {
    for fold in 0..FOLDS {
        for (suffix, model_mm) in SCALES {
            let file = format!("fold{fold}-{suffix}.safetensors");
            member_loads_and_runs(&model_path().join(file), model_mm);
        }
    }
    let files = std::fs::read_dir(model_path()).unwrap().count();
    assert_eq!(
        files,
        FOLDS * SCALES.len(),
        "the folder holds exactly the ensemble"
    );
}

fn member_loads_and_runs(path: &Path, model_mm: f64) {
    let (model, meta) = Model::load(gpu(), path).unwrap();
    assert_eq!(model.cfg.width, 0.25);
    let s = ModelSpacing::from_meta(&meta, path).unwrap().unwrap();
    approx::assert_abs_diff_eq!(s.data_mm, 0.2, epsilon = 1e-9);
    approx::assert_abs_diff_eq!(s.model_mm, model_mm, epsilon = 1e-9);
    let scan = engine::data::Gray8 {
        width: 90,
        height: 130,
        pixels: (0..90 * 130).map(|i| (i % 251) as u8).collect(),
    };
    let spacings = engine::infer::Spacings {
        input_mm: s.data_mm,
        model_mm: s.model_mm,
    };
    let p = engine::infer::probability_map_at(
        gpu(),
        &model,
        &scan,
        Some(spacings),
        &Default::default(),
    )
    .unwrap();
    assert_eq!(p.len(), 90 * 130);
    assert!(p.iter().all(|v| (0.0..=1.0).contains(v)));
}

#[test]
#[cfg_attr(
    not(mammo_data),
    ignore = "needs real data: set MAMMO_DATA when building the tests (see data/README.md)"
)]
fn the_bundled_model_reaches_its_card_on_the_mias_test_split() {
    let root = PathBuf::from(std::env::var_os("MAMMO_DATA").expect("MAMMO_DATA"));
    let (s, dir) = prepare_and_evaluate(
        "mias",
        &["mias", "--fold", "0/5", "--test", "0.2"],
        &root.join("mias"),
        &model_path(),
        &[],
    );
    let (images, positives) = (
        s["images"].as_u64().unwrap(),
        s["positive_images"].as_u64().unwrap(),
    );
    assert_eq!((images, positives), (44, 16), "the card's test split");
    let ap = s["pixel"]["average_precision"].as_f64().unwrap();
    let auc = s["image"]["roc_auc"].as_f64().unwrap();
    eprintln!("bundled model on the MIAS test split: pixel AP {ap:.4}, image ROC AUC {auc:.3}");
    // The card's numbers (data/models/README.md); other adapters pick other
    // kernel variants, whose sums differ in the last bits.
    approx::assert_abs_diff_eq!(ap, CARD_PIXEL_AP, epsilon = 0.005);
    approx::assert_abs_diff_eq!(auc, CARD_IMAGE_AUC, epsilon = 0.005);
    std::fs::remove_dir_all(&dir).ok();
}

const CARD_PIXEL_AP: f64 = 0.216;
const CARD_IMAGE_AUC: f64 = 0.603;

/// The bundled mass model (data/models/cbis-w025/: one network, run J of
/// docs/STUDY.md), trained on CBIS-DDSM's Mass-Training export at 0.6 mm
/// per network pixel.
const CBIS_MODEL: &str = "data/models/cbis-w025";

#[test]
fn the_bundled_mass_model_loads_with_its_spacing_and_runs() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(CBIS_MODEL);
    let files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "one network, run J: {files:?}");
    for file in &files {
        let (model, meta) = Model::load(gpu(), file).unwrap();
        assert_eq!(model.cfg.width, 0.25);
        let s = ModelSpacing::from_meta(&meta, file).unwrap().unwrap();
        approx::assert_abs_diff_eq!(s.data_mm, 0.3, epsilon = 1e-9);
        approx::assert_abs_diff_eq!(s.model_mm, 0.6, epsilon = 1e-9);
    }
}

#[test]
#[cfg_attr(
    not(mammo_data),
    ignore = "needs real data: set MAMMO_DATA when building the tests (see data/README.md)"
)]
fn the_bundled_mass_model_reaches_its_card_on_the_cbis_ddsm_test_split() {
    let root = PathBuf::from(std::env::var_os("MAMMO_DATA").expect("MAMMO_DATA"));
    let (s, dir) = prepare_and_evaluate(
        "cbis",
        &[
            "coco",
            "--pixel-spacing",
            "0.3,0.1875",
            "--val",
            "0.1",
            "--test",
            "0.2",
        ],
        &root.join("cbis-ddsm-masses/train"),
        &Path::new(env!("CARGO_MANIFEST_DIR")).join(CBIS_MODEL),
        CBIS_EVAL_FLAGS,
    );
    assert_eq!(s["images"], 253, "the card's test split");
    assert_eq!(s["lesion"]["lesions"], 273);
    let at: Vec<f64> = s["lesion"]["sensitivity_at"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p[1].as_f64().unwrap())
        .collect();
    eprintln!("bundled mass model on the CBIS-DDSM test split: FROC {at:?}");
    // The card's numbers (data/models/README.md): 273 lesions, so one lesion
    // is 0.0037; other adapters' kernel variants differ in the last bits.
    for (got, card) in at.iter().zip(CARD_FROC) {
        approx::assert_abs_diff_eq!(*got, card, epsilon = 0.008);
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
#[cfg_attr(
    not(mammo_data),
    ignore = "needs real data: set MAMMO_DATA when building the tests (see data/README.md)"
)]
fn the_bundled_mass_model_reaches_its_card_on_the_mias_test_split() {
    let root = PathBuf::from(std::env::var_os("MAMMO_DATA").expect("MAMMO_DATA"));
    let (s, dir) = prepare_and_evaluate(
        "mias-cbis-model",
        &["mias", "--fold", "0/5", "--test", "0.2"],
        &root.join("mias"),
        &Path::new(env!("CARGO_MANIFEST_DIR")).join(CBIS_MODEL),
        CBIS_EVAL_FLAGS,
    );
    assert_eq!(s["images"], 44, "the card's MIAS test split");
    let ap = s["pixel"]["average_precision"].as_f64().unwrap();
    let auc = s["image"]["roc_auc"].as_f64().unwrap();
    eprintln!(
        "bundled mass model on the MIAS test split: pixel AP {ap:.4}, image ROC AUC {auc:.3}"
    );
    // The card's MIAS row (data/models/README.md).
    approx::assert_abs_diff_eq!(ap, 0.224, epsilon = 0.005);
    approx::assert_abs_diff_eq!(auc, 0.855, epsilon = 0.005);
    std::fs::remove_dir_all(&dir).ok();
}

/// The flags the card's evaluation used: the model is run with its
/// mirrored views averaged.
const CBIS_EVAL_FLAGS: &[&str] = &["--tta", "flips"];
/// Sensitivity at 0.25, 0.5, 1, 2 and 4 false positives per image.
const CARD_FROC: [f64; 5] = [0.560, 0.641, 0.736, 0.839, 0.879];

/// `engine prepare ARGS --input INPUT` into a temp folder, then `engine eval
/// --split test` of `model` on it (with `flags`): the summary JSON and the
/// temp folder.
fn prepare_and_evaluate(
    name: &str,
    prepare: &[&str],
    input: &Path,
    model: &Path,
    flags: &[&str],
) -> (serde_json::Value, PathBuf) {
    let dir = temp_dir("pretrained", name);
    let data = dir.join(name);
    let mut args: Vec<std::ffi::OsString> = vec!["prepare".into()];
    args.extend(prepare.iter().map(|a| a.into()));
    args.extend([
        "--input".into(),
        input.into(),
        "--out".into(),
        data.clone().into(),
    ]);
    let (code, _, stderr) = support::engine(&args);
    assert_eq!(code, 0, "{stderr}");
    let mut args: Vec<std::ffi::OsString> = [
        "eval",
        "--json",
        "--no-panels",
        "--split",
        "test",
        "--checkpoint",
    ]
    .iter()
    .map(|a| a.into())
    .collect();
    args.push(model.into());
    args.extend(flags.iter().map(|a| a.into()));
    args.extend([
        "--data".into(),
        data.into(),
        "--out".into(),
        dir.join("eval").into(),
    ]);
    let (code, stdout, stderr) = support::engine(&args);
    assert_eq!(code, 0, "{stderr}");
    (serde_json::from_str(&stdout).unwrap(), dir)
}
