//! DICOM decoding through dicom-object and dicom-pixeldata, from a file's
//! bytes or an opened object: the same rule for `engine` and the web page
//! (pure-Rust decoders only, so it builds for wasm32).
//!
//! The rule that maps a DICOM image to the network's 8-bit range (also in
//! `data/README.md`):
//!
//! 1. Decode the stored values (native, RLE, deflate, JPEG baseline/lossless,
//!    JPEG 2000) and apply the modality rescale `v = stored * slope + intercept`.
//! 2. If the file has a VOI window (first Window Center / Window Width pair),
//!    apply it with the DICOM formulas (PS3.3 C.11.2.1.2: LINEAR by default,
//!    LINEAR_EXACT or SIGMOID when VOI LUT Function says so) onto [0, 255].
//!    Otherwise map the image's own range linearly: `(v - min) / (max - min) * 255`
//!    where min and max are the smallest and largest rescaled values present.
//! 3. Round half up (`floor(y + 0.5)`), clamp to [0, 255].
//! 4. MONOCHROME1 (white = low values) is inverted to MONOCHROME2: `255 - y`.
//!
//! Colour images, multi-frame images, files without pixel data and transfer
//! syntaxes the decoders lack (JPEG-LS: no pure-Rust CharLS; 12-bit JPEG
//! Extended: jpeg-decoder has no 12-bit support) are errors naming the file
//! and the reason.
use std::io::Read;
use std::path::Path;

use dicom_object::{DefaultDicomObject, OpenFileOptions, Tag};
use dicom_pixeldata::{
    ConvertOptions, DecodedPixelData, ModalityLutOption, PixelDecoder, VoiLutFunction, VoiLutOption,
};

use crate::error::DataError;
use crate::image::Gray8;

pub const PIXEL_DATA: Tag = Tag(0x7FE0, 0x0010);
const FLOAT_PIXEL_DATA: Tag = Tag(0x7FE0, 0x0008);
const DOUBLE_PIXEL_DATA: Tag = Tag(0x7FE0, 0x0009);

/// What the reader saw in a DICOM file (for `engine inspect`).
#[derive(Debug, Clone)]
pub struct DicomInfo {
    pub transfer_syntax: String,
    pub width: usize,
    pub height: usize,
    pub frames: u32,
    pub samples_per_pixel: u16,
    pub bits_allocated: u16,
    pub bits_stored: u16,
    pub signed: bool,
    pub photometric: String,
    pub rescale_slope: f64,
    pub rescale_intercept: f64,
    /// (center, width, function) of the first VOI window, if any.
    pub window: Option<(f64, f64, String)>,
    /// Range of the rescaled values (before the 8-bit mapping).
    pub value_min: f64,
    pub value_max: f64,
    /// Millimetres per pixel from Pixel Spacing (0028,0030), else Imager
    /// Pixel Spacing (0018,1164); the mean of the row and column spacing.
    pub pixel_spacing_mm: Option<f64>,
}

/// The pixel spacing a header declares (see [`DicomInfo::pixel_spacing_mm`]).
/// Values that are not two positive numbers count as absent.
fn pixel_spacing(obj: &DefaultDicomObject) -> Option<f64> {
    [Tag(0x0028, 0x0030), Tag(0x0018, 0x1164)]
        .into_iter()
        .find_map(|tag| {
            let v = obj
                .element_opt(tag)
                .ok()
                .flatten()?
                .to_multi_float64()
                .ok()?;
            match v.as_slice() {
                [r, c] if *r > 0.0 && *c > 0.0 && r.is_finite() && c.is_finite() => {
                    Some((r + c) / 2.0)
                }
                _ => None,
            }
        })
}

/// Human name of a transfer syntax UID (the common ones), else the UID itself.
pub fn transfer_syntax_name(uid: &str) -> String {
    let uid = uid.trim_end_matches(['\0', ' ']);
    let name = match uid {
        "1.2.840.10008.1.2" => "Implicit VR Little Endian",
        "1.2.840.10008.1.2.1" => "Explicit VR Little Endian",
        "1.2.840.10008.1.2.1.99" => "Deflated Explicit VR Little Endian",
        "1.2.840.10008.1.2.2" => "Explicit VR Big Endian",
        "1.2.840.10008.1.2.5" => "RLE Lossless",
        "1.2.840.10008.1.2.4.50" => "JPEG Baseline (8-bit)",
        "1.2.840.10008.1.2.4.51" => "JPEG Extended (12-bit)",
        "1.2.840.10008.1.2.4.57" => "JPEG Lossless",
        "1.2.840.10008.1.2.4.70" => "JPEG Lossless SV1",
        "1.2.840.10008.1.2.4.80" => "JPEG-LS Lossless",
        "1.2.840.10008.1.2.4.81" => "JPEG-LS Near-Lossless",
        "1.2.840.10008.1.2.4.90" => "JPEG 2000 Lossless",
        "1.2.840.10008.1.2.4.91" => "JPEG 2000",
        _ => return uid.to_string(),
    };
    format!("{name} ({uid})")
}

/// Transfer syntaxes we know the decoders here cannot handle, with the reason.
fn known_unsupported(uid: &str) -> Option<&'static str> {
    match uid {
        "1.2.840.10008.1.2.4.80" | "1.2.840.10008.1.2.4.81" => Some(
            "JPEG-LS compressed pixel data is not supported (the only Rust JPEG-LS decoder, CharLS, \
             needs a C++ library); convert the file to an uncompressed or JPEG 2000 transfer syntax first",
        ),
        _ => None,
    }
}

/// `e: cause: cause ...`, so the innermost reason is not lost.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

/// Checks a DICOM file's declared sizes before anything is allocated from
/// them: every element, item and sequence length against the file's size
/// (a 4 KB file cannot hold a 4 GB pixel data element), and Rows x Columns
/// x Number of Frames against `max_pixels`. Reads the header only: the walk
/// stops at the pixel data. Parse errors are left to the full reader, which
/// names them; only sizes that cannot be right are errors here.
pub fn check_declared_sizes<R: Read>(
    path: &Path,
    file: R,
    file_len: u64,
    max_pixels: usize,
) -> Result<(), DataError> {
    use dicom_encoding::TransferSyntaxIndex;
    use dicom_parser::dataset::{DataSetReader, DataToken};
    let mut f = std::io::BufReader::new(file);
    let mut preamble = [0u8; 128];
    if f.read_exact(&mut preamble).is_err() {
        return Ok(());
    }
    let Ok(meta) = dicom_object::FileMetaTable::from_reader(&mut f) else {
        return Ok(());
    };
    let Some(ts) =
        dicom_transfer_syntax_registry::TransferSyntaxRegistry.get(meta.transfer_syntax())
    else {
        return Ok(());
    };
    if meta.transfer_syntax() == "1.2.840.10008.1.2.1.99" || !ts.can_decode_dataset() {
        // Lengths inside a deflated data set may exceed the file size.
        return Ok(());
    }
    let Ok(reader) = DataSetReader::new_with_ts(f, ts) else {
        return Ok(());
    };
    let too_long = |what: String, len: u32| {
        DataError::invalid(
            path,
            format!(
                "{what} declares {len} bytes but the whole file has {file_len}: refusing to allocate it (corrupt or hostile file)"
            ),
        )
    };
    let (mut rows, mut cols, mut frames) = (None::<u64>, None::<u64>, 1u64);
    let mut pending = None;
    for token in reader {
        let Ok(token) = token else { break };
        match token {
            DataToken::ElementHeader(h) => {
                if let Some(len) = h.len.get()
                    && len as u64 > file_len
                {
                    return Err(too_long(format!("element {}", h.tag), len));
                }
                if h.tag == PIXEL_DATA {
                    break;
                }
                pending = Some(h.tag);
            }
            // Encapsulated pixel data: its fragments (items) are checked
            // one by one before each is read.
            DataToken::PixelSequenceStart => {}
            DataToken::SequenceStart { tag, len } => {
                if let Some(l) = len.get()
                    && l as u64 > file_len
                {
                    return Err(too_long(format!("sequence {tag}"), l));
                }
            }
            DataToken::ItemStart { len } => {
                if let Some(l) = len.get()
                    && l as u64 > file_len
                {
                    return Err(too_long("a sequence item".into(), l));
                }
            }
            DataToken::PrimitiveValue(v) => {
                let n = || v.to_int::<u64>().ok();
                match pending.take() {
                    Some(Tag(0x0028, 0x0010)) => rows = n(),
                    Some(Tag(0x0028, 0x0011)) => cols = n(),
                    Some(Tag(0x0028, 0x0008)) => frames = n().unwrap_or(1).max(1),
                    _ => {}
                }
            }
            _ => {}
        }
    }
    if let (Some(r), Some(c)) = (rows, cols) {
        let pixels = r.saturating_mul(c).saturating_mul(frames);
        if pixels > max_pixels as u64 {
            return Err(DataError::invalid(
                path,
                format!(
                    "{c}x{r}{} is {pixels} pixels, over the budget of {max_pixels} (--max-pixels)",
                    if frames > 1 {
                        format!(" x {frames} frames")
                    } else {
                        String::new()
                    }
                ),
            ));
        }
    }
    Ok(())
}

/// Whether bytes are a DICOM file: "DICM" after the 128-byte preamble.
pub fn is_dicom_bytes(bytes: &[u8]) -> bool {
    bytes.get(128..132) == Some(b"DICM")
}

/// Decodes a DICOM file held in memory (the rule is in the module docs),
/// after checking its declared sizes against its length and `max_pixels`.
/// `path` names the file in errors.
pub fn decode_bytes(
    path: &Path,
    bytes: &[u8],
    max_pixels: usize,
) -> Result<(Gray8, DicomInfo), DataError> {
    check_declared_sizes(path, bytes, bytes.len() as u64, max_pixels)?;
    let obj = OpenFileOptions::new()
        .from_reader(bytes)
        .map_err(|e| not_dicom(path, &e))?;
    decode_object(path, &obj)
}

/// The error of a file the DICOM parser rejects.
pub fn not_dicom(path: &Path, e: &dyn std::error::Error) -> DataError {
    // dicom-object's errors are layered; show the chain so the cause is visible.
    DataError::decode(
        path,
        format!("not a readable DICOM file: {}", error_chain(e)),
    )
}

/// Decodes an opened DICOM object and reports what was seen.
pub fn decode_object(
    path: &Path,
    obj: &DefaultDicomObject,
) -> Result<(Gray8, DicomInfo), DataError> {
    let ts_uid = obj
        .meta()
        .transfer_syntax()
        .trim_end_matches(['\0', ' '])
        .to_string();
    let ts = transfer_syntax_name(&ts_uid);
    if obj.element_opt(PIXEL_DATA).ok().flatten().is_none() {
        let why = if obj.element_opt(FLOAT_PIXEL_DATA).ok().flatten().is_some()
            || obj.element_opt(DOUBLE_PIXEL_DATA).ok().flatten().is_some()
        {
            "float pixel data is not supported"
        } else {
            "the file has no pixel data (tag 7FE0,0010): it is not an image"
        };
        return Err(DataError::invalid(path, why));
    }
    if let Some(why) = known_unsupported(&ts_uid) {
        return Err(DataError::unsupported(
            path,
            format!("transfer syntax {ts}: {why}"),
        ));
    }
    // Decoders can panic on malformed streams: turn that into an error too.
    let decoded =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| obj.decode_pixel_data()))
            .map_err(|_| {
                DataError::decode(path, format!("the {ts} decoder crashed on this pixel data"))
            })?
            .map_err(|e| {
                DataError::decode(
                    path,
                    format!("cannot decode pixel data ({ts}): {}", error_chain(&e)),
                )
            })?;
    let (gray, mut info) = to_gray8(path, &decoded, ts)?;
    info.pixel_spacing_mm = pixel_spacing(obj);
    Ok((gray, info))
}

fn to_gray8(
    path: &Path,
    d: &DecodedPixelData<'_>,
    ts: String,
) -> Result<(Gray8, DicomInfo), DataError> {
    let photometric = d.photometric_interpretation().to_string();
    let (w, h) = (d.columns() as usize, d.rows() as usize);
    if d.samples_per_pixel() != 1 || !d.photometric_interpretation().is_monochrome() {
        return Err(DataError::unsupported(
            path,
            format!(
                "colour image ({photometric}, {} samples per pixel): only greyscale MONOCHROME1/2 is supported",
                d.samples_per_pixel()
            ),
        ));
    }
    if d.number_of_frames() != 1 {
        return Err(DataError::unsupported(
            path,
            format!(
                "multi-frame image ({} frames): only single images are supported",
                d.number_of_frames()
            ),
        ));
    }
    if w == 0 || h == 0 {
        return Err(DataError::invalid(path, format!("empty image ({w}x{h})")));
    }
    let expected = w * h * (d.bits_allocated() as usize).div_ceil(8);
    if d.data().len() < expected {
        return Err(DataError::invalid(
            path,
            format!(
                "pixel data is truncated: {} bytes, {w}x{h} needs {expected}",
                d.data().len()
            ),
        ));
    }
    let rescale =
        d.rescale()
            .ok()
            .and_then(|r| r.first().copied())
            .unwrap_or(dicom_pixeldata::Rescale {
                slope: 1.0,
                intercept: 0.0,
            });
    // Modality values only (rescale applied, no VOI): the window is applied below
    // so that the rule stays ours and documented.
    let opts = ConvertOptions::new()
        .with_modality_lut(ModalityLutOption::Default)
        .with_voi_lut(VoiLutOption::Identity);
    let values: Vec<f64> = d.to_vec_frame_with_options(0, &opts).map_err(|e| {
        DataError::decode(
            path,
            format!("cannot convert pixel values: {}", error_chain(&e)),
        )
    })?;
    if values.len() != w * h {
        return Err(DataError::invalid(
            path,
            format!("{} pixel values for a {w}x{h} image", values.len()),
        ));
    }
    let (vmin, vmax) = values
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| {
            (a.min(v), b.max(v))
        });
    let window = d
        .window()
        .ok()
        .flatten()
        .and_then(|ws| ws.first().copied())
        .filter(|wl| wl.width >= 1.0);
    let function = d
        .voi_lut_function()
        .ok()
        .flatten()
        .and_then(|f| f.first().copied())
        .unwrap_or(VoiLutFunction::Linear);
    let map: Box<dyn Fn(f64) -> f64> = match window {
        Some(wl) => {
            let (c, wd) = (wl.center, wl.width);
            match function {
                VoiLutFunction::Linear => Box::new(move |v| {
                    if v <= c - 0.5 - (wd - 1.0) / 2.0 {
                        0.0
                    } else if v > c - 0.5 + (wd - 1.0) / 2.0 || wd <= 1.0 {
                        // (width 1 is a threshold: anything not below it is white)
                        255.0
                    } else {
                        ((v - (c - 0.5)) / (wd - 1.0) + 0.5) * 255.0
                    }
                }),
                VoiLutFunction::LinearExact => Box::new(move |v| ((v - c) / wd + 0.5) * 255.0),
                VoiLutFunction::Sigmoid => {
                    Box::new(move |v| 255.0 / (1.0 + (-4.0 * (v - c) / wd).exp()))
                }
            }
        }
        None if vmax > vmin => Box::new(move |v| (v - vmin) / (vmax - vmin) * 255.0),
        None => Box::new(|_| 0.0),
    };
    let invert = photometric.trim() == "MONOCHROME1";
    let pixels: Vec<u8> = values
        .iter()
        .map(|&v| {
            let y = (map(v) + 0.5).floor().clamp(0.0, 255.0) as u8;
            if invert { 255 - y } else { y }
        })
        .collect();
    let info = DicomInfo {
        transfer_syntax: ts,
        width: w,
        height: h,
        frames: d.number_of_frames(),
        samples_per_pixel: d.samples_per_pixel(),
        bits_allocated: d.bits_allocated(),
        bits_stored: d.bits_stored(),
        signed: d.pixel_representation() == dicom_pixeldata::PixelRepresentation::Signed,
        photometric,
        rescale_slope: rescale.slope,
        rescale_intercept: rescale.intercept,
        window: window.map(|wl| (wl.center, wl.width, format!("{function:?}").to_uppercase())),
        value_min: vmin,
        value_max: vmax,
        pixel_spacing_mm: None,
    };
    Ok((
        Gray8 {
            width: w,
            height: h,
            pixels,
        },
        info,
    ))
}
