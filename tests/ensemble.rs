//! Ensembles: `--checkpoint` given several times (or a folder of models)
//! makes `engine infer` and `engine eval` average the members' probability
//! maps, each member at its own pixel spacing.
mod support;
use engine::data::Gray8;
use engine::model::{Meta, Model, ModelConfig};
use engine::spacing::ModelSpacing;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use support::{gpu, temp_dir, textured_scan as scan};

/// A small model with seed `seed`, saved at `path` with `model_mm` as its
/// spacing (training data at 0.2 mm).
fn save_member(path: &Path, seed: u64, model_mm: f64) {
    let model = Model::new(
        gpu(),
        ModelConfig {
            width: 0.125,
            ..ModelConfig::default()
        },
        seed,
    )
    .unwrap();
    let mut meta = Meta::default();
    ModelSpacing {
        model_mm,
        data_mm: 0.2,
    }
    .write(&mut meta);
    model.save(gpu(), path, &meta, false).unwrap();
}

fn run(args: &[&OsStr]) -> (i32, String) {
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_engine"))
        .args(args)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
    (o.status.code().unwrap_or(-1), text)
}

fn read_npy(path: &Path) -> Vec<f32> {
    let b = std::fs::read(path).unwrap();
    let header = u16::from_le_bytes([b[8], b[9]]) as usize;
    bytemuck::pod_collect_to_vec(&b[10 + header..])
}

/// `engine infer --npy` of `png` with the given `--checkpoint`s.
fn infer(checkpoints: &[&Path], png: &Path, out: &Path) -> Vec<f32> {
    let mut args: Vec<&OsStr> = vec!["infer".as_ref(), "--npy".as_ref()];
    for c in checkpoints {
        args.extend(["--checkpoint".as_ref(), c.as_os_str()]);
    }
    args.extend([
        "--pixel-spacing".as_ref(),
        "0.2".as_ref(),
        "--out".as_ref(),
        out.as_os_str(),
        png.as_os_str(),
    ]);
    let (code, text) = run(&args);
    assert_eq!(code, 0, "{text}");
    read_npy(&out.join("scan_prob.npy"))
}

struct Setup {
    dir: PathBuf,
    models: PathBuf,
    a: PathBuf,
    b: PathBuf,
    png: PathBuf,
}

fn setup(name: &str) -> Setup {
    let dir = temp_dir("ensemble", name);
    let models = dir.join("models");
    std::fs::create_dir_all(&models).unwrap();
    // Different seeds and different spacings: each member resamples.
    let (a, b) = (models.join("a.safetensors"), models.join("b.safetensors"));
    save_member(&a, 3, 0.4);
    save_member(&b, 4, 0.3);
    let png = dir.join("scan.png");
    engine::data::read::write_gray_png(&png, &scan(100, 76)).unwrap();
    Setup {
        dir,
        models,
        a,
        b,
        png,
    }
}

#[test]
fn an_ensemble_map_is_the_mean_of_its_members_maps() {
    let s = setup("mean");
    let pa = infer(&[&s.a], &s.png, &s.dir.join("a"));
    let pb = infer(&[&s.b], &s.png, &s.dir.join("b"));
    let both = infer(&[&s.a, &s.b], &s.png, &s.dir.join("ab"));
    assert_eq!(both.len(), 100 * 76);
    let differ = pa
        .iter()
        .zip(&pb)
        .filter(|(x, y)| (*x - *y).abs() > 1e-3)
        .count();
    assert!(
        differ > 100,
        "the members must differ for the test to mean anything"
    );
    for ((x, y), e) in pa.iter().zip(&pb).zip(&both) {
        approx::assert_abs_diff_eq!(*e, (x + y) / 2.0, epsilon = 1e-6);
    }
    // A folder is its .safetensors files in name order: the same ensemble.
    let folder = infer(&[&s.models], &s.png, &s.dir.join("folder"));
    assert_eq!(folder, both);
}

#[test]
fn checkpoint_folders_that_are_not_model_folders_are_bad_input() {
    let s = setup("bad");
    let out = s.dir.join("out");
    // A training run's folder: its checkpoint and best model are one run.
    let run_dir = s.dir.join("run");
    std::fs::create_dir_all(&run_dir).unwrap();
    std::fs::copy(&s.a, run_dir.join("checkpoint.safetensors")).unwrap();
    std::fs::copy(&s.a, run_dir.join("best.safetensors")).unwrap();
    let empty = s.dir.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    for (folder, says) in [
        (&run_dir, "training run's folder"),
        (&empty, "no .safetensors"),
    ] {
        let (code, text) = run(&[
            "infer".as_ref(),
            "--checkpoint".as_ref(),
            folder.as_os_str(),
            "--out".as_ref(),
            out.as_os_str(),
            s.png.as_os_str(),
        ]);
        assert_eq!(code, 2, "{text}");
        assert!(text.contains(says), "{text}");
    }
}

#[test]
fn eval_of_an_ensemble_names_every_member() {
    let s = setup("eval");
    let mut mask = Gray8::new(100, 76);
    for y in 25..36 {
        for x in 35..46 {
            mask.set(x, y, 1);
        }
    }
    let samples = vec![
        engine::data::prepared::Sample::in_memory("pos.png", scan(100, 76), mask),
        engine::data::prepared::Sample::in_memory("neg.png", scan(100, 76), Gray8::new(100, 76)),
    ];
    let data = s.dir.join("data");
    support::write_test_split(&data, &samples);
    let out = s.dir.join("eval");
    let (code, text) = run(&[
        "eval".as_ref(),
        "--checkpoint".as_ref(),
        s.a.as_os_str(),
        "--checkpoint".as_ref(),
        s.b.as_os_str(),
        "--data".as_ref(),
        data.as_os_str(),
        "--pixel-spacing".as_ref(),
        "0.2".as_ref(),
        "--no-panels".as_ref(),
        "--out".as_ref(),
        out.as_os_str(),
    ]);
    assert_eq!(code, 0, "{text}");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    let named = summary["source"]["checkpoint"].as_str().unwrap();
    assert!(
        named.contains("a.safetensors") && named.contains("b.safetensors"),
        "{named}"
    );
    assert_eq!(summary["images"], 2);
}
