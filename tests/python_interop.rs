//! The PyTorch module (tools/engine_torch.py) and the ONNX export: run when
//! python3 with torch, safetensors, numpy and pillow (and, for the export,
//! onnx) was found at build time (build.rs), reported as ignored otherwise.
mod support;
use engine::model::{Meta, Model, ModelConfig};
use engine::ops::resize::Mode;
use std::process::Command;

/// A training checkpoint (Adam moments included: the loader drops them)
/// of a width-0.25 model, in a fresh folder.
fn checkpoint(name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let dir = support::temp_dir("py", name);
    let gpu = support::gpu();
    let model = Model::new(
        gpu,
        ModelConfig {
            width: 0.25,
            resize: Mode::Bilinear,
        },
        11,
    )
    .unwrap();
    let ckpt = dir.join("checkpoint.safetensors");
    model
        .save(
            gpu,
            &ckpt,
            &Meta {
                pos_weight: 15.0,
                ..Default::default()
            },
            true,
        )
        .unwrap();
    (dir, ckpt)
}

#[test]
#[cfg_attr(
    not(python_torch),
    ignore = "needs python3 with torch, safetensors, numpy and pillow when the tests are built"
)]
fn pytorch_module_matches_the_engine() {
    let (dir, ckpt) = checkpoint("torch");
    let mut img = engine::data::Gray8::new(96, 64);
    for (i, v) in img.pixels.iter_mut().enumerate() {
        *v = ((i * 37) % 251) as u8;
    }
    let png = dir.join("scan.png");
    engine::data::read::write_gray_png(&png, &img).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_engine"))
        .args(["infer", "--checkpoint"])
        .arg(&ckpt)
        .arg("--out")
        .arg(dir.join("out"))
        .arg(&png)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = Command::new("python3")
        .arg("tools/pytorch_check.py")
        .arg(&ckpt)
        .arg(&png)
        .arg(dir.join("out/scan_prob.png"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(stdout.contains("PyTorch agrees with engine"), "{stdout}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
#[cfg_attr(
    not(python_onnx),
    ignore = "needs python3 with torch, safetensors, numpy, pillow and onnx (and onnxscript for torch 2.9+) when the tests are built"
)]
fn onnx_export_writes_one_self_contained_file() {
    let (dir, ckpt) = checkpoint("onnx");
    let onnx = dir.join("model.onnx");
    let o = Command::new("python3")
        .args(["tools/export_onnx.py"])
        .arg(&ckpt)
        .arg(&onnx)
        .args(["--height", "64", "--width", "96"])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    // The graph holds the weights (width 0.25: about 0.7 M parameters, 2.9 MB).
    assert!(std::fs::metadata(&onnx).unwrap().len() > 2_000_000);
    let _ = std::fs::remove_dir_all(&dir);
}
