//! Test-time augmentation (`--tta flips|dihedral`): the map is the mean of
//! the maps of the scan's flipped and rotated views, each turned back.
mod support;
use engine::Gpu;
use engine::data::Gray8;
use engine::infer::{TileOptions, probability_map_at};
use engine::model::{Model, ModelConfig};
use engine::predictor::Predictor;
use engine::spacing::ModelSpacing;
use engine::tta::{Tta, View};
use std::ffi::OsStr;
use support::{gpu, temp_dir, textured_scan};

/// Training data at 0.2 mm, the model at 0.3 mm: every run resamples.
const SPACING: ModelSpacing = ModelSpacing {
    model_mm: 0.3,
    data_mm: 0.2,
};

fn model(seed: u64) -> Model {
    let cfg = ModelConfig {
        width: 0.125,
        ..ModelConfig::default()
    };
    Model::new(gpu(), cfg, seed).unwrap()
}

/// A non-square scan whose views all differ.
fn scan() -> Gray8 {
    textured_scan(90, 70)
}

fn view_of(g: &Gray8, v: View) -> Gray8 {
    let (width, height) = v.size((g.width, g.height));
    Gray8 {
        width,
        height,
        pixels: v.apply(&g.pixels, (g.width, g.height)),
    }
}

fn map(p: &Predictor, g: &Gray8) -> Vec<f32> {
    pollster::block_on(p.probability_map(gpu(), g, Some(0.2), None, &TileOptions::default()))
        .unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn a_tta_map_is_the_mean_of_the_views_maps_turned_back() {
    let g = scan();
    let size = (g.width, g.height);
    let m = model(5);
    let one = Predictor::single(model(5), Some(SPACING), "m");
    let tta = Predictor::single(model(5), Some(SPACING), "m").with_tta(Tta::Dihedral);
    let got = map(&tta, &g);
    let mut want = vec![0.0f64; got.len()];
    for v in Tta::Dihedral.views() {
        let p = probability_map_at(
            gpu(),
            &m,
            &view_of(&g, v),
            Some(SPACING.for_input(Some(0.2), None).0),
            &TileOptions::default(),
        )
        .unwrap();
        for (w, x) in want.iter_mut().zip(v.undo(&p, size)) {
            *w += x as f64 / 8.0;
        }
    }
    let want: Vec<f32> = want.into_iter().map(|x| x as f32).collect();
    for (i, (a, b)) in got.iter().zip(&want).enumerate() {
        approx::assert_abs_diff_eq!(*a, *b, epsilon = 1e-6);
        assert!(a.is_finite(), "pixel {i}");
    }
    // The views differ: the mean is not the plain map.
    assert!(max_diff(&got, &map(&one, &g)) > 1e-4);
}

/// The views form a group, so the TTA map of a flipped or rotated scan is
/// the flipped or rotated TTA map; the plain map is not (the check has
/// power: an untrained network is not symmetric).
#[test]
fn tta_maps_turn_with_the_scan() {
    let g = scan();
    let size = (g.width, g.height);
    for tta in [Tta::Flips, Tta::Dihedral] {
        let p = Predictor::single(model(7), Some(SPACING), "m").with_tta(tta);
        let base = map(&p, &g);
        for v in tta.views().into_iter().skip(1) {
            let turned = map(&p, &view_of(&g, v));
            let d = max_diff(&turned, &v.apply(&base, size));
            assert!(d < 1e-5, "{tta:?} {v:?}: {d}");
        }
    }
    let plain = Predictor::single(model(7), Some(SPACING), "m");
    let v = Tta::Dihedral.views()[5];
    let d = max_diff(
        &map(&plain, &view_of(&g, v)),
        &v.apply(&map(&plain, &g), size),
    );
    assert!(
        d > 1e-4,
        "without TTA the map should depend on the orientation: {d}"
    );
}

#[test]
fn infer_records_the_tta_and_writes_its_map() {
    let dir = temp_dir("tta", "infer");
    let ckpt = dir.join("m.safetensors");
    let mut meta = engine::model::Meta::default();
    SPACING.write(&mut meta);
    model(3).save(gpu(), &ckpt, &meta, false).unwrap();
    let png = dir.join("scan.png");
    engine::data::read::write_gray_png(&png, &scan()).unwrap();
    let out = dir.join("out");
    let args: Vec<&OsStr> = vec![
        "infer".as_ref(),
        "--tta".as_ref(),
        "flips".as_ref(),
        "--json".as_ref(),
        "--npy".as_ref(),
        "--pixel-spacing".as_ref(),
        "0.2".as_ref(),
        "--checkpoint".as_ref(),
        ckpt.as_os_str(),
        "--out".as_ref(),
        out.as_os_str(),
        png.as_os_str(),
    ];
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_engine"))
        .args(&args)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    assert_eq!(json["tta"], "flips");
    let b = std::fs::read(out.join("scan_prob.npy")).unwrap();
    let header = u16::from_le_bytes([b[8], b[9]]) as usize;
    let npy: Vec<f32> = bytemuck::pod_collect_to_vec(&b[10 + header..]);
    // infer folds batch norm into the convolutions at load: so does this.
    let mut frozen = model(3);
    frozen.freeze(gpu()).unwrap();
    let want = map(
        &Predictor::single(frozen, Some(SPACING), "m").with_tta(Tta::Flips),
        &scan(),
    );
    assert!(max_diff(&npy, &want) < 1e-6);
}

/// A batch of many scans (`engine infer` of a folder, `engine eval`) reads
/// the convolutions' inputs as texels on CPU adapters
/// (`Variants::many_runs`): each scan's map must be the one it gets alone,
/// bit for bit, from other kernels.
#[test]
fn a_scan_in_a_many_scan_batch_gets_its_map_alone_bit_for_bit() {
    let open = |many_runs: bool| {
        let gpu = Gpu::new(None).expect("a GPU adapter");
        gpu.set_texel_operands(true);
        gpu.variants().set_many_runs(many_runs);
        gpu
    };
    let g = scan();
    let run = |gpu: &Gpu| {
        let cfg = ModelConfig {
            width: 0.125,
            ..ModelConfig::default()
        };
        let mut m = Model::new(gpu, cfg, 11).unwrap();
        m.freeze(gpu).unwrap();
        let p = Predictor::single(m, Some(SPACING), "m").with_tta(Tta::Flips);
        let spacing = (Some(0.2), None);
        let tiles = TileOptions::default();
        let keys: Vec<String> = p
            .kernels_for(gpu, (g.width, g.height), spacing, &tiles)
            .unwrap()
            .into_iter()
            .map(|k| k.key)
            .filter(|k| k.starts_with("direct"))
            .collect();
        let map = pollster::block_on(p.probability_map(gpu, &g, Some(0.2), None, &tiles)).unwrap();
        (map, keys)
    };
    let (alone, alone_keys) = run(&open(false));
    let (batch, batch_keys) = run(&open(true));
    let all_say = |keys: &[String], t: &str| {
        !keys.is_empty() && keys.iter().all(|k| k.split(' ').any(|w| w == t))
    };
    assert!(
        all_say(&alone_keys, "t0") && all_say(&batch_keys, "t1"),
        "kernels {alone_keys:?} / {batch_keys:?}"
    );
    assert_eq!(alone.len(), batch.len());
    let same = alone
        .iter()
        .zip(&batch)
        .all(|(a, b)| a.to_bits() == b.to_bits());
    assert!(same, "maps differ by up to {}", max_diff(&alone, &batch));
}
