//! mini-MIAS: the `Info.txt` ground truth and `engine prepare mias`.
//!
//! A row is `REF BG CLASS [SEVERITY [X Y RADIUS | note]]`; every line that does not
//! start with a reference `mdbNNN` is prose and ignored. X, Y have their origin at
//! the BOTTOM-LEFT corner, so the image row of the centre is `height - Y`.
//! The lesion mask of a row is the disc of pixels `(col, row)` with
//! `(col - X)^2 + (row - (height - Y))^2 <= RADIUS^2` (pixel centres at integers).
use std::collections::BTreeMap;
use std::path::Path;

use indicatif::{ProgressBar, ProgressStyle};

use super::prepared::{Holdout, Prepared, SetWriter, split_patients};
use super::read::read_gray8;
use super::{DataError, Gray8};

/// mini-MIAS pixel spacing: the films were digitised at 50 um and reduced to
/// 200 um pixel edge for the mini database (Suckling et al. 1994, and the
/// database's own README).
pub const SPACING_MM: f64 = 0.2;

pub const CLASSES: [&str; 7] = ["CALC", "CIRC", "SPIC", "MISC", "ARCH", "ASYM", "NORM"];

/// One row of `Info.txt`.
#[derive(Debug, Clone, PartialEq)]
pub struct MiasRow {
    /// 1-based line number in the file.
    pub line: usize,
    pub reference: String,
    /// F, G or D.
    pub background: char,
    pub class: String,
    /// B or M; None for NORM.
    pub severity: Option<char>,
    /// (X, Y, RADIUS) in MIAS coordinates (origin bottom-left).
    pub circle: Option<(u32, u32, u32)>,
    /// Text found instead of coordinates (e.g. `*NOTE 3*`).
    pub note: Option<String>,
}

impl MiasRow {
    /// Patient number: left and right films are consecutive (mdb001 + mdb002 = 1).
    pub fn patient(&self) -> String {
        let n: u32 = self
            .reference
            .trim_start_matches("mdb")
            .parse()
            .unwrap_or(0);
        format!("{:03}", n.div_ceil(2))
    }
}

/// Parse `Info.txt`. Rows are parsed strictly: a malformed row is an error with its
/// line number, not a silently dropped lesion.
pub fn parse_info(text: &str) -> Result<Vec<MiasRow>, String> {
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let t: Vec<&str> = line.split_whitespace().collect();
        let is_ref = |s: &str| {
            s.len() == 6 && s.starts_with("mdb") && s[3..].bytes().all(|b| b.is_ascii_digit())
        };
        if t.is_empty() || !is_ref(t[0]) {
            continue; // prose header, notes, blank lines
        }
        let lineno = i + 1;
        let bad = |why: &str| format!("line {lineno}: {why}: {line:?}");
        if t.len() < 3 {
            return Err(bad("a row needs at least REF BG CLASS"));
        }
        let background = match t[1] {
            "F" | "G" | "D" => t[1].chars().next().unwrap_or('?'),
            _ => return Err(bad("background must be F, G or D")),
        };
        if !CLASSES.contains(&t[2]) {
            return Err(bad("unknown abnormality class"));
        }
        let mut row = MiasRow {
            line: lineno,
            reference: t[0].to_string(),
            background,
            class: t[2].to_string(),
            severity: None,
            circle: None,
            note: None,
        };
        if row.class == "NORM" {
            if t.len() > 3 {
                return Err(bad("a NORM row has nothing after the class"));
            }
            rows.push(row);
            continue;
        }
        if let Some(sev) = t.get(3) {
            match *sev {
                "B" | "M" => row.severity = sev.chars().next(),
                _ => return Err(bad("severity must be B or M")),
            }
        }
        let rest = &t[t.len().min(4)..];
        let nums: Vec<Option<u32>> = rest.iter().map(|s| s.parse().ok()).collect();
        match (rest.len(), nums.as_slice()) {
            (0, _) => {}
            (3, [Some(x), Some(y), Some(r)]) => {
                if *x > 1024 || *y > 1024 || *r == 0 {
                    return Err(bad("coordinates out of range"));
                }
                row.circle = Some((*x, *y, *r));
            }
            _ if nums.iter().all(|n| n.is_none()) => row.note = Some(rest.join(" ")),
            _ => return Err(bad("expected X Y RADIUS or a note")),
        }
        rows.push(row);
    }
    if rows.is_empty() {
        return Err("no rows (lines starting with mdbNNN) found".into());
    }
    Ok(rows)
}

/// Set the disc of one MIAS circle in `mask` to `value` (origin bottom-left).
pub fn draw_circle(mask: &mut Gray8, x: u32, y: u32, r: u32, value: u8) {
    let (cx, cy, r) = (x as i64, mask.height as i64 - y as i64, r as i64);
    let (w, h) = (mask.width as i64, mask.height as i64);
    for row in (cy - r).max(0)..=(cy + r).min(h - 1) {
        for col in (cx - r).max(0)..=(cx + r).min(w - 1) {
            let (dx, dy) = (col - cx, row - cy);
            if dx * dx + dy * dy <= r * r {
                mask.pixels[(row * w + col) as usize] = value;
            }
        }
    }
}

/// Bounding box (exclusive ends) of a drawn circle, clipped to the image.
pub fn circle_box(
    width: usize,
    height: usize,
    x: u32,
    y: u32,
    r: u32,
) -> (usize, usize, usize, usize) {
    let (cx, cy, r) = (x as i64, height as i64 - y as i64, r as i64);
    let c = |v: i64, len: usize| v.clamp(0, len as i64) as usize;
    (
        c(cx - r, width),
        c(cy - r, height),
        c(cx + r + 1, width),
        c(cy + r + 1, height),
    )
}

/// Options of `engine prepare mias`.
#[derive(Debug, Clone)]
pub struct MiasOptions {
    pub val: Holdout,
    pub test: f64,
    pub seed: u64,
    /// Keep images whose abnormality has no coordinates, as image-level positives
    /// with `mask_complete: false` (evaluation only).
    pub keep_uncoordinated: bool,
    /// Minimum side of ROI crops in millimetres.
    pub crop_mm: f64,
    /// Overrides [`SPACING_MM`].
    pub spacing_mm: Option<f64>,
}

/// `engine prepare mias`: returns the writer (manifest + summary).
pub fn prepare(input: &Path, out: &Path, opt: &MiasOptions) -> Result<SetWriter, DataError> {
    let info = input.join("Info.txt");
    let text = std::fs::read(&info).map_err(|e| DataError::io(&info, e))?;
    let text = String::from_utf8_lossy(&text);
    let rows = parse_info(&text).map_err(|e| DataError::invalid(&info, e))?;
    // Several rows per image: group them, keeping file order.
    let mut images: BTreeMap<String, Vec<MiasRow>> = BTreeMap::new();
    for r in rows {
        images.entry(r.reference.clone()).or_default().push(r);
    }
    let patients: Vec<String> = images.values().map(|rs| rs[0].patient()).collect();
    let split = split_patients(&patients, opt.val, opt.test, opt.seed);
    let mut w = SetWriter::new(out, "mias", opt.crop_mm)?;
    let bar = ProgressBar::new(images.len() as u64).with_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    for (reference, rows) in &images {
        bar.inc(1);
        let uncoordinated: Vec<&MiasRow> = rows
            .iter()
            .filter(|r| r.class != "NORM" && r.circle.is_none())
            .collect();
        if !uncoordinated.is_empty() && !opt.keep_uncoordinated {
            let what = uncoordinated
                .iter()
                .map(|r| {
                    format!(
                        "{} {}",
                        r.class,
                        r.note.as_deref().unwrap_or("without coordinates")
                    )
                })
                .collect::<Vec<_>>()
                .join(", ");
            w.skip(reference.clone(), format!("abnormality without coordinates ({what}); --keep-uncoordinated keeps it for image-level evaluation"));
            continue;
        }
        let path = input.join(format!("{reference}.pgm"));
        let scan = match read_gray8(&path) {
            Ok(g) => g,
            Err(e) => {
                w.skip(reference.clone(), e.to_string());
                continue;
            }
        };
        let mut mask = Gray8::new(scan.width, scan.height);
        let mut rois = Vec::new();
        for r in rows {
            if let Some((x, y, rad)) = r.circle {
                draw_circle(&mut mask, x, y, rad, 255);
                rois.push(circle_box(scan.width, scan.height, x, y, rad));
            }
        }
        let patient = rows[0].patient();
        let mut classes: Vec<String> = rows
            .iter()
            .filter(|r| r.class != "NORM")
            .map(|r| r.class.clone())
            .collect();
        classes.dedup();
        w.add(Prepared {
            name: reference,
            split: &split[&patient],
            patient: &patient,
            source: format!("{reference}.pgm"),
            scan,
            mask,
            rois,
            abnormal: rows.iter().any(|r| r.class != "NORM"),
            mask_complete: uncoordinated.is_empty(),
            classes,
            trim: true,
            spacing_mm: opt.spacing_mm.unwrap_or(SPACING_MM),
            lesion_boxes: None,
        })
        .inspect_err(|_| bar.abandon())?;
    }
    bar.finish_and_clear();
    w.finish()?;
    Ok(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rows_with_and_without_coordinates_and_notes() {
        let text = "MIAS prose header\nmdb in prose is not a row\n\nmdb001 G CIRC B 535 425 197\nmdb003 D NORM \nmdb059 F CIRC B *NOTE 3*\nmdb212 G CALC B\nmdb226 D CALC B 287 610 7\nmdb226 D CALC B 329 550 25\n";
        let rows = parse_info(text).unwrap();
        assert_eq!(rows.len(), 6);
        assert_eq!(rows[0].circle, Some((535, 425, 197)));
        assert_eq!(rows[0].line, 4);
        assert_eq!(rows[1].class, "NORM");
        assert_eq!(rows[1].severity, None);
        assert_eq!(rows[2].note.as_deref(), Some("*NOTE 3*"));
        assert_eq!(rows[2].circle, None);
        assert_eq!(rows[3].circle, None);
        assert_eq!(rows[3].note, None);
        assert_eq!(rows[3].severity, Some('B'));
        assert_eq!(rows[5].patient(), "113");
        assert_eq!(rows[0].patient(), "001");
    }

    #[test]
    fn rejects_malformed_rows_with_line_number() {
        let e = parse_info("x\nmdb001 G CIRC B 535 425\n").unwrap_err();
        assert!(e.starts_with("line 2:"), "{e}");
        assert!(parse_info("mdb001 Q CIRC B 1 2 3\n").is_err());
        assert!(parse_info("mdb001 G BLOB B 1 2 3\n").is_err());
        assert!(parse_info("mdb001 G NORM B\n").is_err());
        assert!(parse_info("just prose\n").is_err());
    }

    #[test]
    fn circle_uses_bottom_left_origin() {
        // 10x10 image, centre X=3, Y=2 -> row 10-2 = 8, col 3, radius 1:
        // pixels (3,8), (2,8), (4,8), (3,7), (3,9) (col,row), nothing else.
        let mut m = Gray8::new(10, 10);
        draw_circle(&mut m, 3, 2, 1, 1);
        let on: Vec<(usize, usize)> = (0..100)
            .filter(|i| m.pixels[*i] == 1)
            .map(|i| (i % 10, i / 10))
            .collect();
        assert_eq!(on, vec![(3, 7), (2, 8), (3, 8), (4, 8), (3, 9)]);
        assert_eq!(circle_box(10, 10, 3, 2, 1), (2, 7, 5, 10));
        // Radius 2 at (5, 5) -> row 5: 13 pixels (the disc x^2+y^2<=4).
        let mut m = Gray8::new(10, 10);
        draw_circle(&mut m, 5, 5, 2, 1);
        assert_eq!(m.count_nonzero(), 13);
        assert_eq!(m.get(5, 3), 1);
        assert_eq!(m.get(5, 2), 0);
        assert_eq!(m.get(4, 4), 1);
        assert_eq!(m.get(3, 3), 0);
        // Clipped at the border: centre on the bottom edge row (Y=0 -> row 10, outside).
        let mut m = Gray8::new(10, 10);
        draw_circle(&mut m, 0, 0, 1, 1);
        assert_eq!(m.count_nonzero(), 1); // only (0, 9)
        assert_eq!(m.get(0, 9), 1);
    }
}
