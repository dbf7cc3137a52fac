//! Resolution awareness end to end: one physical phantom rendered at two
//! pixel spacings gives the same probability map once `engine infer` has
//! resampled each to the model's spacing and mapped the map back, and
//! clearly different maps when the checkpoint records no spacing (each
//! scan then runs at its own pixels).
mod support;
use engine::data::Gray8;
use engine::model::{Meta, Model, ModelConfig};
use engine::spacing::ModelSpacing;
use std::path::Path;
use support::{gpu, temp_dir};

/// Grey level of the phantom at (x, y) millimetres: a smooth background and
/// two Gaussian "lesions" (smooth, so that rendering at either spacing
/// samples the same function without aliasing).
fn phantom_mm(x: f64, y: f64) -> f64 {
    let blob = |cx: f64, cy: f64, sigma: f64, amp: f64| {
        amp * (-((x - cx).powi(2) + (y - cy).powi(2)) / (2.0 * sigma * sigma)).exp()
    };
    70.0 + 25.0 * (x / 9.0).sin() * (y / 13.0).cos()
        + blob(22.0, 30.0, 5.0, 120.0)
        + blob(40.0, 58.0, 3.0, 90.0)
}

/// The 60 x 80 mm phantom at `spacing` mm per pixel (pixel centres).
fn render(spacing: f64) -> Gray8 {
    let (w, h) = ((60.0 / spacing) as usize, (80.0 / spacing) as usize);
    let mut g = Gray8::new(w, h);
    for y in 0..h {
        for x in 0..w {
            let v = phantom_mm((x as f64 + 0.5) * spacing, (y as f64 + 0.5) * spacing);
            g.set(x, y, v.round().clamp(0.0, 255.0) as u8);
        }
    }
    g
}

/// Reads a float32 `.npy` written by `engine infer --npy`.
fn read_npy(path: &Path) -> Vec<f32> {
    let b = std::fs::read(path).unwrap();
    let header = u16::from_le_bytes([b[8], b[9]]) as usize;
    bytemuck::pod_collect_to_vec(&b[10 + header..])
}

/// `engine infer --npy` on one PNG; returns the probability map.
fn infer(ckpt: &Path, png: &Path, spacing: f64, out: &Path) -> Vec<f32> {
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_engine"))
        .args(["infer", "--npy", "--checkpoint"])
        .arg(ckpt)
        .args(["--pixel-spacing", &spacing.to_string(), "--out"])
        .arg(out)
        .arg(png)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stem = png.file_stem().unwrap().to_string_lossy();
    read_npy(&out.join(format!("{stem}_prob.npy")))
}

/// The fine map (2x the pixels each way) averaged over 2x2 blocks onto the
/// coarse grid.
fn halve(fine: &[f32], w: usize, h: usize) -> Vec<f32> {
    let fw = 2 * w;
    (0..h)
        .flat_map(|y| (0..w).map(move |x| (y, x)))
        .map(|(y, x)| {
            let at = |dy: usize, dx: usize| fine[(2 * y + dy) * fw + 2 * x + dx];
            (at(0, 0) + at(0, 1) + at(1, 0) + at(1, 1)) / 4.0
        })
        .collect()
}

fn mean_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).sum::<f32>() / a.len() as f32
}

fn save(model: &Model, path: &Path, spacing: Option<ModelSpacing>) {
    let mut meta = Meta::default();
    if let Some(s) = spacing {
        s.write(&mut meta);
    }
    model.save(gpu(), path, &meta, false).unwrap();
}

#[test]
fn a_phantom_at_two_spacings_gives_one_map_after_resampling() {
    let dir = temp_dir("spacing", "two");
    let model = Model::new(
        gpu(),
        ModelConfig {
            width: 0.25,
            ..ModelConfig::default()
        },
        3,
    )
    .unwrap();
    let aware = dir.join("aware.safetensors");
    let unaware = dir.join("unaware.safetensors");
    save(
        &model,
        &aware,
        Some(ModelSpacing {
            model_mm: 0.4,
            data_mm: 0.2,
        }),
    );
    save(&model, &unaware, None);
    let (coarse, fine) = (render(0.2), render(0.1));
    let (w, h) = (coarse.width, coarse.height);
    assert_eq!((fine.width, fine.height), (2 * w, 2 * h));
    let (pc, pf) = (dir.join("coarse.png"), dir.join("fine.png"));
    engine::data::read::write_gray_png(&pc, &coarse).unwrap();
    engine::data::read::write_gray_png(&pf, &fine).unwrap();

    let a = infer(&aware, &pc, 0.2, &dir.join("a"));
    let b = halve(&infer(&aware, &pf, 0.1, &dir.join("b")), w, h);
    let spread = {
        let m = a.iter().sum::<f32>() / a.len() as f32;
        (a.iter().map(|v| (v - m).powi(2)).sum::<f32>() / a.len() as f32).sqrt()
    };
    let same = mean_abs_diff(&a, &b);
    // Run at their own pixels, the two renderings show the network lesions
    // of different sizes, and the maps part.
    let na = infer(&unaware, &pc, 0.2, &dir.join("na"));
    let nb = halve(&infer(&unaware, &pf, 0.1, &dir.join("nb")), w, h);
    let apart = mean_abs_diff(&na, &nb);
    eprintln!("map spread {spread:.4}; resampled diff {same:.5}; native diff {apart:.5}");
    assert!(
        spread > 0.01,
        "the map must vary for the test to mean anything"
    );
    assert!(
        same < 0.1 * spread,
        "resampled maps differ by {same} (spread {spread})"
    );
    assert!(apart > 4.0 * same, "native {apart} vs resampled {same}");
    std::fs::remove_dir_all(&dir).ok();
}
