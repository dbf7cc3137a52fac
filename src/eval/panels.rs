//! Per-image panels like the paper's figures and the HTML index that picks
//! out the best, worst, false-positive and false-negative cases.
//!
//! A panel is one PNG of four pictures side by side, each scaled so that its
//! longer side is at most `size` pixels: the scan; the scan with the
//! ground-truth outline (green); the probability heatmap (blue 0 -> cyan ->
//! yellow -> red 1); the scan with the outline of the pixels whose
//! probability exceeds the threshold (red). Outlines are drawn at the
//! picture's resolution: a pixel is on the outline when it is inside the
//! region and one of its 8 neighbours is not.
use super::report::{self, ImageRecord, Summary};
use crate::data::Gray8;
use crate::lesions::Candidate;
use plotters::prelude::*;
use std::fmt::Write as _;
use std::path::Path;

const LABEL_H: u32 = 24;
const GAP: u32 = 4;

/// `engine infer`'s heat colour as 8-bit RGB.
pub fn heat(p: f32) -> [u8; 3] {
    crate::infer::heat(p).map(|c| (c * 255.0).round() as u8)
}

/// Scales a float plane (row-major w x h) to (sw, sh) with a triangle filter.
fn scale(plane: Vec<f32>, w: usize, h: usize, sw: u32, sh: u32) -> Vec<f32> {
    if (w as u32, h as u32) == (sw, sh) {
        return plane;
    }
    let img = image::ImageBuffer::<image::Luma<f32>, _>::from_raw(w as u32, h as u32, plane)
        .expect("plane size");
    image::imageops::resize(&img, sw, sh, image::imageops::FilterType::Triangle).into_raw()
}

/// The outline of a boolean region (row-major w x h).
pub fn outline(region: &[bool], w: usize, h: usize) -> Vec<bool> {
    let mut out = vec![false; w * h];
    for y in 0..h {
        for x in 0..w {
            if !region[y * w + x] {
                continue;
            }
            let mut edge = false;
            for dy in -1i64..=1 {
                for dx in -1i64..=1 {
                    let (nx, ny) = (x as i64 + dx, y as i64 + dy);
                    if nx >= 0
                        && ny >= 0
                        && (nx as usize) < w
                        && (ny as usize) < h
                        && !region[ny as usize * w + nx as usize]
                    {
                        edge = true;
                    }
                }
            }
            out[y * w + x] = edge;
        }
    }
    out
}

/// Writes the panel of one image: the scan, the ground truth's outline,
/// the map, and the outline of `p > threshold` with the boxes of the
/// candidates scoring above the threshold (yellow: hits a lesion; cyan:
/// a false positive).
pub fn write_panel(
    path: &Path,
    scan: &Gray8,
    mask: &Gray8,
    prob: &[f32],
    threshold: f32,
    size: usize,
    candidates: &[(Candidate, bool)],
) -> anyhow::Result<()> {
    let (w, h) = (scan.width, scan.height);
    let f = (size as f64 / w.max(h) as f64).min(1.0);
    let (sw, sh) = (
        ((w as f64 * f).round() as u32).max(1),
        ((h as f64 * f).round() as u32).max(1),
    );
    let (pw, ph) = (sw as usize, sh as usize);
    // `image`'s f32 resize clamps to [0, 1]: scale grey values into it.
    let grey: Vec<f32> = scale(
        scan.pixels.iter().map(|&v| v as f32 / 255.0).collect(),
        w,
        h,
        sw,
        sh,
    )
    .into_iter()
    .map(|v| v * 255.0)
    .collect();
    let p = scale(prob.to_vec(), w, h, sw, sh);
    // A region stays visible when scaled down: any covered pixel counts.
    let truth = scale(
        mask.pixels.iter().map(|&v| (v != 0) as u8 as f32).collect(),
        w,
        h,
        sw,
        sh,
    );
    let pred = scale(
        prob.iter().map(|&v| (v > threshold) as u8 as f32).collect(),
        w,
        h,
        sw,
        sh,
    );
    let truth_edge = outline(&truth.iter().map(|&v| v > 0.0).collect::<Vec<_>>(), pw, ph);
    let pred_edge = outline(&pred.iter().map(|&v| v > 0.0).collect::<Vec<_>>(), pw, ph);

    let total_w = 4 * sw + 3 * GAP;
    let total_h = sh + LABEL_H;
    let mut buf = vec![255u8; (total_w * total_h * 3) as usize];
    let mut put = |tile: u32, x: usize, y: usize, c: [u8; 3]| {
        let px = (tile * (sw + GAP)) as usize + x;
        let i = ((y + LABEL_H as usize) * total_w as usize + px) * 3;
        buf[i..i + 3].copy_from_slice(&c);
    };
    for y in 0..ph {
        for x in 0..pw {
            let i = y * pw + x;
            let g = grey[i].round().clamp(0.0, 255.0) as u8;
            put(0, x, y, [g, g, g]);
            put(
                1,
                x,
                y,
                if truth_edge[i] {
                    [0, 230, 0]
                } else {
                    [g, g, g]
                },
            );
            put(2, x, y, heat(p[i]));
            put(
                3,
                x,
                y,
                if pred_edge[i] {
                    [255, 40, 40]
                } else {
                    [g, g, g]
                },
            );
        }
    }
    for (c, hit) in candidates.iter().filter(|(c, _)| c.score > threshold) {
        let colour = if *hit { [255, 220, 0] } else { [0, 230, 255] };
        let b = [c.bbox[0] * f, c.bbox[1] * f, c.bbox[2] * f, c.bbox[3] * f];
        let (x0, y0) = ((b[0] as usize).min(pw - 1), (b[1] as usize).min(ph - 1));
        let (x1, y1) = (
            (b[2].ceil() as usize).clamp(x0 + 1, pw) - 1,
            (b[3].ceil() as usize).clamp(y0 + 1, ph) - 1,
        );
        for x in x0..=x1 {
            put(3, x, y0, colour);
            put(3, x, y1, colour);
        }
        for y in y0..=y1 {
            put(3, x0, y, colour);
            put(3, x1, y, colour);
        }
    }
    super::plots::register_font();
    {
        let root = BitMapBackend::with_buffer(&mut buf, (total_w, total_h)).into_drawing_area();
        let labels = [
            "scan".to_string(),
            "ground truth".to_string(),
            "probability".to_string(),
            format!("p > {threshold}, candidates"),
        ];
        for (i, l) in labels.iter().enumerate() {
            root.draw_text(
                l,
                &("sans-serif", 15).into_font().color(&BLACK),
                (i as i32 * (sw + GAP) as i32 + 4, 4),
            )
            .map_err(|e| anyhow::anyhow!("drawing a label: {e:?}"))?;
        }
        root.present()
            .map_err(|e| anyhow::anyhow!("drawing a label: {e:?}"))?;
    }
    crate::fsio::save_png(
        path,
        &image::RgbImage::from_raw(total_w, total_h, buf)
            .expect("buffer size")
            .into(),
    )
}

/// HTML-escapes text.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

/// A link target: the relative path with its characters percent-encoded
/// where a URL needs it (panel names are already plain).
fn href(rel: &str) -> String {
    esc(rel)
}

fn row_cells(r: &ImageRecord) -> String {
    format!(
        "<td>{}</td><td>{}x{}</td><td>{}</td><td>{:.4}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.4}</td><td>{:.4}</td><td>{:.4}</td><td>{}</td><td>{}</td>",
        esc(&r.file),
        r.width,
        r.height,
        r.truth,
        r.score,
        r.predicted,
        r.outcome,
        r.mask_pixels,
        r.predicted_pixels,
        r.tp,
        r.fp,
        r.fn_,
        r.tn,
        r.dice,
        r.iou,
        r.max_probability,
        r.lesions,
        r.lesions_found
    )
}

const HEADER: &str = "<tr><th>file</th><th>size</th><th>truth</th><th>score</th><th>predicted</th><th>outcome</th><th>mask px</th><th>predicted px</th><th>TP</th><th>FP</th><th>FN</th><th>TN</th><th>Dice</th><th>IoU</th><th>max p</th><th>lesions</th><th>found</th></tr>";

/// Writes index.html into `out` (panels must have been written).
pub fn write_index(s: &Summary, out: &Path) -> anyhow::Result<()> {
    let by_file = |f: &str| s.per_image.iter().find(|r| r.file == f);
    let mut h = String::new();
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>engine eval: {}</title>\n<style>body{{font-family:sans-serif;margin:1em}}table{{border-collapse:collapse;font-size:13px}}td,th{{border:1px solid #ccc;padding:2px 6px;text-align:right}}td:first-child{{text-align:left}}img.panel{{max-width:100%}}figure{{margin:0.5em 0}}figcaption{{font-size:13px}}</style></head><body>\n",
        esc(&s.source.checkpoint)
    );
    let _ = writeln!(
        h,
        "<h1>engine eval</h1>\n<p>checkpoint {}; data {} (split {}); {} images ({} with lesions); threshold {} (p &gt; t).</p>",
        esc(&s.source.checkpoint),
        esc(&s.source.data),
        esc(&s.source.split),
        s.images,
        s.positive_images,
        s.threshold
    );
    let _ = writeln!(h, "<pre>{}</pre>", esc(&report::table(s)));
    let _ = writeln!(
        h,
        "<p>Files: <a href=\"{}\">summary.json</a>, <a href=\"{}\">images.csv</a>, <a href=\"{}\">sweep.csv</a>.</p>",
        report::SUMMARY_JSON,
        report::IMAGES_CSV,
        report::SWEEP_CSV
    );
    let _ = writeln!(h, "<h2>Curves</h2><p>");
    for p in [
        super::plots::PR_PIXEL,
        super::plots::PR_IMAGE,
        super::plots::ROC_IMAGE,
        super::plots::FROC,
    ] {
        let _ = write!(
            h,
            "<a href=\"{p}\"><img src=\"{p}\" width=\"420\" alt=\"{p}\"></a> "
        );
    }
    let _ = writeln!(
        h,
        "</p>\n<p>Candidate lesions: {}.</p>\n<p>FROC: {}.</p>",
        esc(&s.definitions.candidates),
        esc(s.definitions.froc)
    );
    let _ = writeln!(h, "<p>Picked by: {}.</p>", esc(&s.picks.criterion));
    for (id, title, files) in [
        ("best", "Best", &s.picks.best),
        ("worst", "Worst", &s.picks.worst),
        (
            "false-positives",
            "False positives",
            &s.picks.false_positives,
        ),
        (
            "false-negatives",
            "False negatives",
            &s.picks.false_negatives,
        ),
    ] {
        let _ = writeln!(h, "<h2 id=\"{id}\">{title}</h2>");
        if files.is_empty() {
            let _ = writeln!(h, "<p>none</p>");
        }
        for f in files {
            let Some(r) = by_file(f) else { continue };
            let _ = writeln!(
                h,
                "<figure><a href=\"{0}\"><img class=\"panel\" src=\"{0}\" alt=\"{1}\"></a><figcaption>{1}: {2}, score {3:.4}, Dice {4:.4}, {5} of {6} mask pixels found, {7} false-positive pixels</figcaption></figure>",
                href(&r.panel),
                esc(&r.file),
                r.outcome,
                r.score,
                r.dice,
                r.tp,
                r.mask_pixels,
                r.fp
            );
        }
    }
    let _ = writeln!(
        h,
        "<h2 id=\"all\">All images</h2>\n<table>{}",
        HEADER.replace("</tr>", "<th>panel</th></tr>")
    );
    for r in &s.per_image {
        let _ = writeln!(
            h,
            "<tr>{}<td><a href=\"{}\">panel</a></td></tr>",
            row_cells(r),
            href(&r.panel)
        );
    }
    let _ = writeln!(h, "</table>\n</body></html>");
    let path = out.join(report::INDEX_HTML);
    crate::fsio::write_atomic(&path, h.as_bytes(), false)
}
