//! DICOM files on disk. Decoding, and the rule that maps a DICOM image to
//! the network's 8-bit range, live in the core (`engine_core::dicom`),
//! shared with the web page; this adds what needs a file system.
use std::path::Path;

use dicom_object::{DefaultDicomObject, OpenFileOptions, Tag};
pub use engine_core::dicom::{DicomInfo, error_chain, transfer_syntax_name};
use engine_core::dicom::{PIXEL_DATA, decode_object, not_dicom};

use super::{DataError, Gray8};

fn open(path: &Path) -> Result<DefaultDicomObject, DataError> {
    OpenFileOptions::new()
        .open_file(path)
        .map_err(|e| not_dicom(path, &e))
}

/// Checks a DICOM file's declared sizes before anything is allocated from
/// them (see `engine_core::dicom::check_declared_sizes`).
pub fn check_declared_sizes(path: &Path, max_pixels: usize) -> Result<(), DataError> {
    let file_len = std::fs::metadata(path)
        .map_err(|e| DataError::io(path, e))?
        .len();
    let f = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    engine_core::dicom::check_declared_sizes(path, f, file_len, max_pixels)
}

/// Read a DICOM file as 8-bit grey (the rule is in `engine_core::dicom`).
pub fn read_dicom(path: &Path) -> Result<Gray8, DataError> {
    read_dicom_with_info(path).map(|(g, _)| g)
}

/// Read a DICOM file and report what was seen.
pub fn read_dicom_with_info(path: &Path) -> Result<(Gray8, DicomInfo), DataError> {
    decode_object(path, &open(path)?)
}

/// Read only the image size from the header (cheap: stops before pixel data).
pub fn dicom_size(path: &Path) -> Result<(usize, usize), DataError> {
    let obj = OpenFileOptions::new()
        .read_until(PIXEL_DATA)
        .open_file(path)
        .map_err(|e| not_dicom(path, &e))?;
    let get = |tag: Tag, name: &str| -> Result<usize, DataError> {
        obj.element(tag)
            .ok()
            .and_then(|e| e.to_int::<u32>().ok())
            .map(|v| v as usize)
            .ok_or_else(|| DataError::invalid(path, format!("missing or bad {name}")))
    };
    Ok((
        get(Tag(0x0028, 0x0011), "Columns")?,
        get(Tag(0x0028, 0x0010), "Rows")?,
    ))
}

/// Series Description (0008,103E) of a file, if readable (used to tell CBIS-DDSM
/// ROI masks from cropped images).
pub fn series_description(path: &Path) -> Option<String> {
    let obj = OpenFileOptions::new()
        .read_until(PIXEL_DATA)
        .open_file(path)
        .ok()?;
    obj.element(Tag(0x0008, 0x103E))
        .ok()?
        .to_str()
        .ok()
        .map(|s| s.trim().to_string())
}
