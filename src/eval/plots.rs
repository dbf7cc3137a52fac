//! PNG plots of the curves (plotters, drawn into a buffer that the `image`
//! crate encodes; text in DejaVu Sans, embedded by the `dejavu` crate, so
//! no system font library is needed).
use super::metrics::Choice;
use super::report::Summary;
use plotters::prelude::*;
use std::path::Path;

pub const PR_PIXEL: &str = "pr_pixel.png";
pub const PR_IMAGE: &str = "pr_image.png";
pub const ROC_IMAGE: &str = "roc_image.png";
pub const FROC: &str = "froc.png";

const SIZE: (u32, u32) = (640, 520);

/// Registers the embedded font as "sans-serif" (once).
pub fn register_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular())
            .unwrap_or_else(|_| panic!("the embedded DejaVu Sans font does not parse"));
    });
}

/// A plotters error as an [`anyhow::Error`] carrying its `Debug` text.
pub fn to_anyhow<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow::anyhow!("plotting: {e:?}")
}

/// A curve plot with x and y in [0, 1].
struct Plot<'a> {
    title: String,
    x_label: &'a str,
    y_label: &'a str,
    /// (x, y) points, drawn as a polyline.
    curve: Vec<(f64, f64)>,
    /// Draw the chance diagonal.
    diagonal: bool,
    /// The x axis runs from 0 to this.
    x_max: f64,
    /// Marked operating points with a label.
    marks: Vec<(f64, f64, String)>,
}

fn draw(plot: &Plot, path: &Path) -> anyhow::Result<()> {
    register_font();
    let (w, h) = SIZE;
    let mut buf = vec![255u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(to_anyhow)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(&plot.title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(0.0f64..plot.x_max, 0.0f64..1.02f64)
            .map_err(to_anyhow)?;
        chart
            .configure_mesh()
            .light_line_style(RGBColor(238, 238, 238))
            .x_desc(plot.x_label)
            .y_desc(plot.y_label)
            .label_style(("sans-serif", 13))
            .axis_desc_style(("sans-serif", 15))
            .draw()
            .map_err(to_anyhow)?;
        if plot.diagonal {
            chart
                .draw_series(LineSeries::new(
                    [(0.0, 0.0), (1.0, 1.0)],
                    ShapeStyle::from(&RGBColor(160, 160, 160)).stroke_width(1),
                ))
                .map_err(to_anyhow)?;
        }
        chart
            .draw_series(LineSeries::new(
                plot.curve.iter().copied(),
                ShapeStyle::from(&BLUE).stroke_width(2),
            ))
            .map_err(to_anyhow)?;
        let colors = [RED, RGBColor(0, 150, 0)];
        for (i, (x, y, label)) in plot.marks.iter().enumerate() {
            let c = colors[i % colors.len()];
            chart
                .draw_series(std::iter::once(Circle::new((*x, *y), 5, c.filled())))
                .map_err(to_anyhow)?
                .label(label.clone())
                .legend(move |(x, y)| Circle::new((x, y), 5, c.filled()));
        }
        if !plot.marks.is_empty() {
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::LowerLeft)
                .label_font(("sans-serif", 13))
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .draw()
                .map_err(to_anyhow)?;
        }
        root.present().map_err(to_anyhow)?;
    }
    crate::fsio::save_png(
        path,
        &image::RgbImage::from_raw(w, h, buf)
            .expect("buffer size")
            .into(),
    )
}

fn pr_marks(
    target: f64,
    at_target: &Option<Choice>,
    max_f1: &Option<Choice>,
) -> Vec<(f64, f64, String)> {
    let mut m = Vec::new();
    if let Some(c) = at_target {
        m.push((
            c.recall,
            c.precision,
            format!(
                "recall >= {target}: t = {:.3}, precision {:.3}",
                c.threshold, c.precision
            ),
        ));
    }
    if let Some(c) = max_f1 {
        m.push((
            c.recall,
            c.precision,
            format!("max F1 {:.3}: t = {:.3}", c.f1, c.threshold),
        ));
    }
    m
}

/// A precision-recall polyline that starts at recall 0 (precision of the
/// first point), as the step-wise AP reads it.
fn pr_curve(points: &[super::metrics::PrPoint]) -> Vec<(f64, f64)> {
    let mut v = Vec::with_capacity(points.len() + 1);
    if let Some(first) = points.first() {
        v.push((0.0, first.precision));
    }
    v.extend(points.iter().map(|p| (p.recall, p.precision)));
    v
}

/// Writes the three plots; returns their file names.
pub fn write_plots(s: &Summary, out: &Path) -> anyhow::Result<Vec<String>> {
    draw(
        &Plot {
            title: format!(
                "Pixel precision-recall, AP {:.3} ({} images)",
                s.pixel.average_precision, s.images
            ),
            x_label: "recall",
            y_label: "precision",
            curve: pr_curve(&s.curves.pixel_pr),
            diagonal: false,
            x_max: 1.0,
            marks: pr_marks(s.target_recall, &s.pixel.at_target_recall, &s.pixel.max_f1),
        },
        &out.join(PR_PIXEL),
    )?;
    draw(
        &Plot {
            title: format!(
                "Image precision-recall, AP {:.3} (score: {})",
                s.image.average_precision,
                s.image_score.name()
            ),
            x_label: "recall",
            y_label: "precision",
            curve: pr_curve(&s.curves.image_pr),
            diagonal: false,
            x_max: 1.0,
            marks: pr_marks(s.target_recall, &s.image.at_target_recall, &s.image.max_f1),
        },
        &out.join(PR_IMAGE),
    )?;
    draw(
        &Plot {
            title: match s.image.roc_auc {
                Some(a) => format!("Image ROC, AUC {a:.3} (score: {})", s.image_score.name()),
                None => "Image ROC (AUC undefined: one class only)".to_string(),
            },
            x_label: "false-positive rate",
            y_label: "true-positive rate (recall)",
            curve: s.curves.image_roc.iter().map(|p| (p.fpr, p.tpr)).collect(),
            diagonal: true,
            x_max: 1.0,
            marks: Vec::new(),
        },
        &out.join(ROC_IMAGE),
    )?;
    draw(&froc_plot(&s.lesion), &out.join(FROC))?;
    Ok(vec![
        PR_PIXEL.into(),
        PR_IMAGE.into(),
        ROC_IMAGE.into(),
        FROC.into(),
    ])
}

/// The FROC curve from (0, 0) to 4 false positives per image, flat past
/// its last point, with the sensitivity at 1 marked.
fn froc_plot(f: &crate::lesions::Froc) -> Plot<'static> {
    let x_max = *crate::lesions::FP_RATES.last().expect("rates");
    let mut curve = vec![(0.0, 0.0)];
    let mut last = 0.0;
    for p in f.curve.iter().take_while(|p| p.fp_per_image <= x_max) {
        curve.push((p.fp_per_image, last));
        curve.push((p.fp_per_image, p.sensitivity));
        last = p.sensitivity;
    }
    curve.push((x_max, last));
    let at1 = crate::lesions::sensitivity_at(&f.curve, 1.0);
    Plot {
        title: format!(
            "Lesion FROC: {} lesions, {} images; {at1:.3} at 1 FP/image",
            f.lesions, f.images
        ),
        x_label: "false positives per image",
        y_label: "sensitivity (lesions found)",
        curve,
        diagonal: false,
        x_max,
        marks: vec![(1.0, at1, format!("1 FP/image: {at1:.3}"))],
    }
}
