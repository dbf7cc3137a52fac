//! Readers: any supported file as 8-bit grey.
//!
//! - DICOM (see [`super::dicom`] for the 8-bit mapping rule);
//! - PNG 8-bit as is, PNG 16-bit scaled by `round(v * 255 / 65535)`;
//! - PGM/PPM (MIAS is P5, 8-bit) and JPEG;
//! - colour PNG/JPEG is converted to luma (Rec. 601 weights, the `image` crate's rule).
//!
//! The format is recognised by content (DICOM's "DICM" marker, the PNG, PNM
//! and JPEG signatures), not by the file name.
use std::fmt;
use std::io::Read;
use std::path::Path;

use super::dicom::{DicomInfo, read_dicom_with_info};
use super::{DataError, Gray8};

/// File formats the readers know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Dicom,
    Png,
    Pnm,
    Jpeg,
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Dicom => "DICOM",
            Format::Png => "PNG",
            Format::Pnm => "PGM/PNM",
            Format::Jpeg => "JPEG",
        })
    }
}

/// Recognise the format from the first bytes of the file.
pub fn detect_format(path: &Path) -> Result<Format, DataError> {
    let mut head = Vec::with_capacity(132);
    std::fs::File::open(path)
        .and_then(|f| f.take(132).read_to_end(&mut head))
        .map_err(|e| DataError::io(path, e))?;
    if head.len() >= 132 && &head[128..132] == b"DICM" {
        return Ok(Format::Dicom);
    }
    if head.starts_with(b"\x89PNG\r\n\x1a\n") {
        return Ok(Format::Png);
    }
    if head.starts_with(&[0xFF, 0xD8, 0xFF]) {
        return Ok(Format::Jpeg);
    }
    if head.len() >= 2 && head[0] == b'P' && (b'1'..=b'6').contains(&head[1]) {
        return Ok(Format::Pnm);
    }
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    if ext == "dcm" || ext == "dicom" {
        // A .dcm file without the 128-byte preamble and "DICM" marker: dicom-object
        // needs the file meta header to know the transfer syntax.
        return Err(DataError::unsupported(
            path,
            "DICOM file without the preamble and file meta header (no \"DICM\" at byte 128); \
             rewrite it with a meta header (e.g. dcmconv or pydicom's save_as with enforce_file_format)",
        ));
    }
    if head.is_empty() {
        return Err(DataError::invalid(path, "the file is empty"));
    }
    Err(DataError::unsupported(
        path,
        "unknown file format (not DICOM, PNG, PGM/PNM or JPEG)",
    ))
}

/// Whether `path` is a DICOM file (by content: the "DICM" marker).
pub fn is_dicom(path: &Path) -> bool {
    matches!(detect_format(path), Ok(Format::Dicom))
}

/// The default pixel budget of one image: more than the largest
/// mammograms (CBIS-DDSM's reach ~40 MP), far less than a decompression bomb.
pub const DEFAULT_MAX_PIXELS: usize = 50_000_000;

static MAX_PIXELS: std::sync::atomic::AtomicUsize =
    std::sync::atomic::AtomicUsize::new(DEFAULT_MAX_PIXELS);

/// Sets the pixel budget the readers enforce (`--max-pixels`).
pub fn set_max_pixels(n: usize) {
    MAX_PIXELS.store(n.max(1), std::sync::atomic::Ordering::Relaxed);
}

/// The pixel budget the readers enforce now.
pub fn max_pixels() -> usize {
    MAX_PIXELS.load(std::sync::atomic::Ordering::Relaxed)
}

/// Checks the sizes a file's header declares before anything is decoded:
/// width x height (x frames) within `max_pixels`, and for DICOM every
/// declared length within the file size. Errors name the file.
pub fn check_budget(path: &Path, max_pixels: usize) -> Result<(), DataError> {
    match detect_format(path)? {
        Format::Dicom => super::dicom::check_declared_sizes(path, max_pixels),
        format => {
            let dims = image::ImageReader::open(path)
                .and_then(|r| r.with_guessed_format())
                .map_err(|e| DataError::io(path, e))?
                .into_dimensions();
            // A header the decoder cannot read is reported by the decoder.
            if let Ok((w, h)) = dims {
                let pixels = w as u64 * h as u64;
                if pixels > max_pixels as u64 {
                    return Err(DataError::invalid(
                        path,
                        format!(
                            "{format} header says {w}x{h} = {pixels} pixels, over the budget of {max_pixels} (--max-pixels)"
                        ),
                    ));
                }
            }
            Ok(())
        }
    }
}

/// Read any supported image as 8-bit grey.
pub fn read_gray8(path: &Path) -> Result<Gray8, DataError> {
    read_with_info(path).map(|(g, _)| g)
}

/// What `engine inspect` prints about one file.
#[derive(Debug, Clone)]
pub struct ImageInfo {
    pub format: Format,
    pub width: usize,
    pub height: usize,
    /// Bits per sample in the file (bits stored for DICOM).
    pub bit_depth: u16,
    /// Colour type (PNG/PNM/JPEG) or photometric interpretation (DICOM).
    pub colour: String,
    pub dicom: Option<DicomInfo>,
    /// Intensity statistics after mapping to 8 bits.
    pub min: u8,
    pub max: u8,
    pub mean: f64,
}

impl fmt::Display for ImageInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}x{}, {}-bit, {}",
            self.format, self.width, self.height, self.bit_depth, self.colour
        )?;
        if let Some(d) = &self.dicom {
            write!(
                f,
                "\n  transfer syntax: {}\n  bits allocated/stored: {}/{} {}, frames: {}\n  rescale: slope {} intercept {}\n  window: {}\n  values after rescale: {} .. {}\n  pixel spacing: {}",
                d.transfer_syntax,
                d.bits_allocated,
                d.bits_stored,
                if d.signed { "signed" } else { "unsigned" },
                d.frames,
                d.rescale_slope,
                d.rescale_intercept,
                match &d.window {
                    Some((c, w, func)) => format!("center {c} width {w} ({func})"),
                    None => "none (the image's own value range is mapped to 0..255)".into(),
                },
                d.value_min,
                d.value_max,
                match d.pixel_spacing_mm {
                    Some(mm) => format!("{mm} mm"),
                    None => "not in the header".into(),
                }
            )?;
        }
        write!(
            f,
            "\n  8-bit intensity: min {} max {} mean {:.3}",
            self.min, self.max, self.mean
        )
    }
}

fn stats(g: &Gray8) -> (u8, u8, f64) {
    let (mut lo, mut hi, mut sum) = (255u8, 0u8, 0u64);
    for &v in &g.pixels {
        lo = lo.min(v);
        hi = hi.max(v);
        sum += v as u64;
    }
    (lo, hi, sum as f64 / g.pixels.len().max(1) as f64)
}

/// Read a file and describe it. Never panics: decoder panics become errors.
/// Header sizes are checked against the pixel budget (`max_pixels()`)
/// first.
pub fn read_with_info(path: &Path) -> Result<(Gray8, ImageInfo), DataError> {
    read_with_budget(path, max_pixels())
}

/// `read_with_info` with an explicit pixel budget.
pub fn read_with_budget(path: &Path, max_pixels: usize) -> Result<(Gray8, ImageInfo), DataError> {
    check_budget(path, max_pixels)?;
    let format = detect_format(path)?;
    let (g, bit_depth, colour, dicom) = match format {
        Format::Dicom => {
            let (g, d) = read_dicom_with_info(path)?;
            (g, d.bits_stored, d.photometric.clone(), Some(d))
        }
        _ => {
            let img = std::panic::catch_unwind(|| {
                image::ImageReader::open(path)
                    .and_then(|r| r.with_guessed_format())
                    .map(|mut r| {
                        // Second line of defence behind check_budget: at
                        // most 8 bytes (RGBA16) per budgeted pixel.
                        let mut limits = image::Limits::default();
                        limits.max_alloc = Some((max_pixels as u64).saturating_mul(8));
                        r.limits(limits);
                        r.decode()
                    })
            })
            .map_err(|_| {
                DataError::decode(path, format!("the {format} decoder crashed on this file"))
            })?
            .map_err(|e| DataError::io(path, e))?
            .map_err(|e| DataError::decode(path, format!("cannot decode {format}: {e}")))?;
            let colour = format!("{:?}", img.color());
            let bits = (img.color().bits_per_pixel() / img.color().channel_count() as u16).max(1);
            let g = to_gray8(img);
            (g, bits, colour, None)
        }
    };
    let (min, max, mean) = stats(&g);
    let info = ImageInfo {
        format,
        width: g.width,
        height: g.height,
        bit_depth,
        colour,
        dicom,
        min,
        max,
        mean,
    };
    Ok((g, info))
}

/// 16-bit grey is scaled by `round(v * 255 / 65535)`; colour goes to luma first.
fn to_gray8(img: image::DynamicImage) -> Gray8 {
    use image::DynamicImage as D;
    let (w, h) = (img.width() as usize, img.height() as usize);
    let pixels = match img {
        D::ImageLuma8(b) => b.into_raw(),
        D::ImageLuma16(b) => b
            .into_raw()
            .into_iter()
            .map(|v| ((v as u32 * 255 + 32767) / 65535) as u8)
            .collect(),
        D::ImageLumaA16(_) | D::ImageRgb16(_) | D::ImageRgba16(_) => img
            .to_luma16()
            .into_raw()
            .into_iter()
            .map(|v| ((v as u32 * 255 + 32767) / 65535) as u8)
            .collect(),
        other => other.to_luma8().into_raw(),
    };
    Gray8 {
        width: w,
        height: h,
        pixels,
    }
}

/// Write an 8-bit grey PNG.
pub fn write_gray_png(path: &Path, g: &Gray8) -> Result<(), DataError> {
    let img = image::GrayImage::from_raw(g.width as u32, g.height as u32, g.pixels.clone())
        .ok_or_else(|| DataError::invalid(path, "pixel count does not match the size"))?;
    crate::fsio::save_png(path, &img.into()).map_err(|e| DataError::write(path, e.root_cause()))
}
