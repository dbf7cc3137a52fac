//! A training run folder that says what produced it: the non-empty-folder
//! check (`--resume` / `--overwrite`), `config.json`, and `metrics.csv` and
//! `curves.png` rebuilt from `metrics.jsonl` after every epoch.
use crate::error::bad;
use crate::eval::plots::to_anyhow;
use anyhow::Context;
use plotters::prelude::*;
use serde::Serialize;
use serde_json::{Value, json};
use std::path::Path;

pub const CONFIG_JSON: &str = "config.json";
/// The latest state of a run (weights and Adam moments).
pub const CHECKPOINT: &str = "checkpoint.safetensors";
/// The weights of the epoch `--select` liked best.
pub const BEST: &str = "best.safetensors";
/// The weights averaged over the last `--swa` epochs.
pub const SWA: &str = "swa.safetensors";
pub const METRICS_CSV: &str = "metrics.csv";
pub const CURVES_PNG: &str = "curves.png";

/// The files `engine train` writes into a run folder (what `--overwrite`
/// removes; anything else in the folder is left alone).
pub const RUN_FILES: &[&str] = &[
    CHECKPOINT,
    BEST,
    SWA,
    "metrics.jsonl",
    METRICS_CSV,
    CURVES_PNG,
    CONFIG_JSON,
];

/// Refuses to train into a non-empty folder unless `resume` (continue the
/// run there) or `overwrite` (remove the run files listed in [`RUN_FILES`]
/// and start again). Refusals are bad input.
pub fn check_run_folder(dir: &Path, resume: bool, overwrite: bool) -> anyhow::Result<()> {
    if resume && overwrite {
        return Err(bad("--resume and --overwrite exclude each other"));
    }
    if !dir.exists() {
        return Ok(());
    }
    if !dir.is_dir() {
        return Err(bad(format!("run folder {} is a file", dir.display())));
    }
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    if names.is_empty() || resume {
        return Ok(());
    }
    if overwrite {
        for f in RUN_FILES {
            let p = dir.join(f);
            if p.exists() {
                std::fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))?;
            }
        }
        return Ok(());
    }
    let shown: Vec<&str> = names.iter().take(5).map(String::as_str).collect();
    Err(bad(format!(
        "run folder {} is not empty ({}{}): pass --resume to continue that run, --overwrite to start again in it, or another --out",
        dir.display(),
        shown.join(", "),
        if names.len() > shown.len() {
            ", ..."
        } else {
            ""
        }
    )))
}

/// The git commit the binary was built from (build.rs), if known.
pub fn git_commit() -> Option<&'static str> {
    option_env!("ENGINE_GIT_COMMIT").filter(|s| !s.is_empty())
}

/// SHA-256 of `data`, lower-case hex (as `sha256sum` prints it).
pub fn sha256_hex(data: &[u8]) -> String {
    const K: [u32; 64] = [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
        0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
        0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
        0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
        0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
        0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
        0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
        0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
        0xc67178f2,
    ];
    let mut h: [u32; 8] = [
        0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab,
        0x5be0cd19,
    ];
    let mut msg = data.to_vec();
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&((data.len() as u64) * 8).to_be_bytes());
    for chunk in msg.chunks(64) {
        let mut w = [0u32; 64];
        for i in 0..16 {
            w[i] = u32::from_be_bytes(chunk[4 * i..4 * i + 4].try_into().expect("4 bytes"));
        }
        for i in 16..64 {
            let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
            let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16]
                .wrapping_add(s0)
                .wrapping_add(w[i - 7])
                .wrapping_add(s1);
        }
        let mut v = h;
        for i in 0..64 {
            let s1 = v[4].rotate_right(6) ^ v[4].rotate_right(11) ^ v[4].rotate_right(25);
            let ch = (v[4] & v[5]) ^ (!v[4] & v[6]);
            let t1 = v[7]
                .wrapping_add(s1)
                .wrapping_add(ch)
                .wrapping_add(K[i])
                .wrapping_add(w[i]);
            let s0 = v[0].rotate_right(2) ^ v[0].rotate_right(13) ^ v[0].rotate_right(22);
            let maj = (v[0] & v[1]) ^ (v[0] & v[2]) ^ (v[1] & v[2]);
            let t2 = s0.wrapping_add(maj);
            v = [
                t1.wrapping_add(t2),
                v[0],
                v[1],
                v[2],
                v[3].wrapping_add(t1),
                v[4],
                v[5],
                v[6],
            ];
        }
        for (a, b) in h.iter_mut().zip(v) {
            *a = a.wrapping_add(b);
        }
    }
    h.iter().map(|x| format!("{x:08x}")).collect()
}

/// Serialises an f32 as its shortest decimal (`--lr 1e-3` as 0.001, not
/// 0.0010000000474974513).
pub fn short_f32<S: serde::Serializer>(v: &f32, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(v.to_string().parse::<f64>().unwrap_or(*v as f64))
}

/// Writes `config.json` for a fresh run; for a resumed run whose folder
/// already has one, appends this invocation to its `resumes` list.
/// `arguments` is every command-line argument (parsed, defaults included).
pub fn write_config(
    dir: &Path,
    arguments: &impl Serialize,
    gpu: &crate::Gpu,
    data: &[std::path::PathBuf],
    resume: bool,
) -> anyhow::Result<()> {
    let set_json = |d: &Path| {
        let manifest = d.join("manifest.json");
        json!({
            "folder": d.display().to_string(),
            "folder_absolute": d.canonicalize().ok().map(|p| p.display().to_string()),
            "manifest": manifest.display().to_string(),
            "manifest_sha256": std::fs::read(&manifest).ok().map(|b| sha256_hex(&b)),
        })
    };
    // One set: its object; several: a list of them; phantoms: null.
    let data_json = match data {
        [] => Value::Null,
        [one] => set_json(one),
        many => Value::Array(many.iter().map(|d| set_json(d)).collect()),
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let invocation = json!({
        "command_line": std::env::args().collect::<Vec<_>>(),
        "arguments": arguments,
        "engine_version": env!("CARGO_PKG_VERSION"),
        "git_commit": git_commit(),
        "adapter": {
            "name": gpu.info.name,
            "backend": format!("{:?}", gpu.info.backend),
            "device_type": format!("{:?}", gpu.info.device_type),
            "driver": gpu.info.driver,
            "driver_info": gpu.info.driver_info,
        },
        "data": data_json,
        "started_unix_seconds": now,
    });
    let path = dir.join(CONFIG_JSON);
    let config = match (resume, std::fs::read_to_string(&path)) {
        (true, Ok(text)) => {
            let mut v: Value = serde_json::from_str(&text)
                .with_context(|| format!("{}: not JSON", path.display()))?;
            if let Some(obj) = v.as_object_mut() {
                let resumes = obj.entry("resumes").or_insert_with(|| json!([]));
                if let Some(a) = resumes.as_array_mut() {
                    a.push(invocation);
                }
            }
            v
        }
        _ => invocation,
    };
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    write_atomic(&path, serde_json::to_string_pretty(&config)?.as_bytes())
}

fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp-write");
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

/// The columns of `metrics.csv`: one row per epoch (epoch 0: the untrained
/// baseline, without a training loss).
pub const CSV_COLUMNS: &[&str] = &[
    "epoch",
    "size",
    "train_loss",
    "val_pixel_ap",
    "val_image_auc",
    "val_image_ap",
    "val_precision",
    "val_recall",
    "val_f1",
    "val_iou",
    "val_accuracy",
    "val_sensitivity_at_1fp",
    "val_froc_mean",
    "step_ms",
    "peak_tensor_mib",
];

/// The baseline and epoch lines of `metrics.jsonl` as rows keyed by epoch
/// (the last line of an epoch wins), in epoch order.
pub fn epoch_rows(jsonl: &str) -> Vec<serde_json::Map<String, Value>> {
    let mut rows: std::collections::BTreeMap<u64, serde_json::Map<String, Value>> =
        Default::default();
    for line in jsonl.lines() {
        let Ok(Value::Object(mut o)) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let epoch = match o.get("kind").and_then(Value::as_str) {
            Some("baseline") => 0,
            Some("epoch") => match o.get("epoch").and_then(Value::as_u64) {
                Some(e) => e,
                None => continue,
            },
            _ => continue,
        };
        o.insert("epoch".into(), json!(epoch));
        rows.insert(epoch, o);
    }
    rows.into_values().collect()
}

/// Rebuilds `metrics.csv` and `curves.png` from `metrics.jsonl`.
pub fn refresh(dir: &Path) -> anyhow::Result<()> {
    let jsonl = dir.join("metrics.jsonl");
    let text =
        std::fs::read_to_string(&jsonl).with_context(|| format!("reading {}", jsonl.display()))?;
    let rows = epoch_rows(&text);
    let mut csv = CSV_COLUMNS.join(",");
    csv.push('\n');
    for r in &rows {
        let cells: Vec<String> = CSV_COLUMNS
            .iter()
            .map(|c| match r.get(*c) {
                Some(Value::Number(n)) => n.to_string(),
                Some(Value::String(s)) => s.clone(),
                _ => String::new(),
            })
            .collect();
        csv.push_str(&cells.join(","));
        csv.push('\n');
    }
    write_atomic(&dir.join(METRICS_CSV), csv.as_bytes())?;
    draw_curves(&rows, &dir.join(CURVES_PNG))
}

/// [`refresh`], printing a warning instead of failing the run.
pub fn refresh_or_warn(dir: &Path) {
    if let Err(e) = refresh(dir) {
        eprintln!("warning: {METRICS_CSV}/{CURVES_PNG} not updated: {e:#}");
    }
}

/// Whole epochs only on the x axis.
fn epoch_label(x: &f64) -> String {
    if x.fract() == 0.0 {
        format!("{x:.0}")
    } else {
        String::new()
    }
}

pub const CURVES_SIZE: (u32, u32) = (1100, 440);

/// Two charts side by side: training loss per epoch, and validation
/// precision, recall, F1 and lesion IoU per epoch (epoch 0: untrained).
fn draw_curves(rows: &[serde_json::Map<String, Value>], path: &Path) -> anyhow::Result<()> {
    crate::eval::plots::register_font();
    let series = |key: &str| -> Vec<(f64, f64)> {
        rows.iter()
            .filter_map(|r| {
                Some((
                    r.get("epoch")?.as_f64()?,
                    r.get(key)?.as_f64().filter(|v| v.is_finite())?,
                ))
            })
            .collect()
    };
    let last_epoch = rows
        .iter()
        .filter_map(|r| r.get("epoch")?.as_f64())
        .fold(1.0f64, f64::max);
    let loss = series("train_loss");
    let loss_max = loss.iter().map(|p| p.1).fold(0.0f64, f64::max).max(1e-6) * 1.05;
    let validation: Vec<EpochSeries> = [
        ("val_pixel_ap", "pixel AP", BLACK),
        ("val_image_auc", "image ROC AUC", MAGENTA),
        ("val_iou", "lesion IoU at 0.5", RED),
        ("val_f1", "F1", BLUE),
        ("val_precision", "precision", RGBColor(0, 150, 0)),
        ("val_recall", "recall", RGBColor(200, 120, 0)),
    ]
    .into_iter()
    .map(|(key, label, colour)| (series(key), label, colour))
    .collect();
    let (w, h) = CURVES_SIZE;
    let mut buf = vec![255u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, CURVES_SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(to_anyhow)?;
        let (left, right) = root.split_horizontally(w / 2);
        let loss_panel = EpochPanel {
            caption: "Training loss (mean per epoch)",
            y_desc: "loss",
            y_max: loss_max,
            last_epoch,
            legend: false,
        };
        loss_panel.draw(&left, &[(loss, "loss", BLUE)])?;
        let validation_panel = EpochPanel {
            caption: "Validation (whole films)",
            y_desc: "value",
            y_max: 1.02,
            last_epoch,
            legend: true,
        };
        validation_panel.draw(&right, &validation)?;
        root.present().map_err(to_anyhow)?;
    }
    let png = image::RgbImage::from_raw(w, h, buf).expect("buffer size");
    crate::fsio::save_png(path, &png.into())
}

/// One metric's (epoch, value) points, its legend label and colour.
type EpochSeries = (Vec<(f64, f64)>, &'static str, RGBColor);

/// A chart of metrics against the epoch.
struct EpochPanel {
    caption: &'static str,
    y_desc: &'static str,
    y_max: f64,
    last_epoch: f64,
    legend: bool,
}

impl EpochPanel {
    fn draw<DB: DrawingBackend>(
        &self,
        area: &DrawingArea<DB, plotters::coord::Shift>,
        series: &[EpochSeries],
    ) -> anyhow::Result<()> {
        let mut c = ChartBuilder::on(area)
            .caption(self.caption, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..self.last_epoch, 0.0..self.y_max)
            .map_err(to_anyhow)?;
        c.configure_mesh()
            .x_desc("epoch")
            .x_label_formatter(&epoch_label)
            .y_desc(self.y_desc)
            .label_style(("sans-serif", 13))
            .axis_desc_style(("sans-serif", 15))
            .draw()
            .map_err(to_anyhow)?;
        for &(ref points, label, colour) in series {
            let line = ShapeStyle::from(&colour).stroke_width(2);
            c.draw_series(LineSeries::new(points.iter().copied(), line))
                .map_err(to_anyhow)?
                .label(label)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], colour));
            c.draw_series(points.iter().map(|&p| Circle::new(p, 3, colour.filled())))
                .map_err(to_anyhow)?;
        }
        if self.legend {
            c.configure_series_labels()
                .position(SeriesLabelPosition::LowerRight)
                .label_font(("sans-serif", 13))
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .draw()
                .map_err(to_anyhow)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn sha256_known_vectors() {
        assert_eq!(
            super::sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            super::sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        // Two blocks (56 bytes: the padding spills into a second block).
        assert_eq!(
            super::sha256_hex(b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"
        );
    }

    #[test]
    fn epoch_rows_keep_the_last_line_of_each_epoch() {
        let jsonl = r#"{"kind":"baseline","size":64,"val_iou":0.1}
{"kind":"step","epoch":1,"loss":0.9}
{"kind":"epoch","epoch":1,"train_loss":0.8,"val_iou":0.2}
{"kind":"epoch","epoch":2,"train_loss":0.7,"val_iou":0.3}
{"kind":"epoch","epoch":2,"train_loss":0.6,"val_iou":0.4}
"#;
        let rows = super::epoch_rows(jsonl);
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0]["epoch"], 0);
        assert_eq!(rows[2]["train_loss"], 0.6);
    }
}
