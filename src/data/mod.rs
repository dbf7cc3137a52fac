//! Data: image readers (DICOM, PGM, PNG, JPEG), MIAS and CBIS-DDSM preparation,
//! the synthetic phantom generator and the online augmentation pipeline.
//!
//! Everything the network sees is an 8-bit grey image ([`Gray8`]); masks are
//! [`Gray8`] too, holding 0 or 1 once loaded (0 or 255 on disk).
pub mod augment;
pub mod cbis;
pub mod cli;
pub mod dicom;
pub mod loader;
pub mod mias;
pub mod prepared;
pub mod read;
pub mod resample;
pub mod synth;

use std::path::{Path, PathBuf};

/// An 8-bit grey image, row-major, `pixels.len() == width * height`.
#[derive(Clone, PartialEq, Eq)]
pub struct Gray8 {
    pub width: usize,
    pub height: usize,
    pub pixels: Vec<u8>,
}

impl std::fmt::Debug for Gray8 {
    // The pixel buffer can hold millions of values: keep debug output short.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Gray8 {{ {}x{} }}", self.width, self.height)
    }
}

impl Gray8 {
    pub fn new(width: usize, height: usize) -> Self {
        Gray8 {
            width,
            height,
            pixels: vec![0; width * height],
        }
    }

    #[inline]
    pub fn get(&self, x: usize, y: usize) -> u8 {
        self.pixels[y * self.width + x]
    }

    #[inline]
    pub fn set(&mut self, x: usize, y: usize, v: u8) {
        self.pixels[y * self.width + x] = v;
    }

    /// The sub-image `[x0, x0+w) x [y0, y0+h)`; the caller keeps it inside.
    pub fn crop(&self, x0: usize, y0: usize, w: usize, h: usize) -> Gray8 {
        let mut out = Gray8::new(w, h);
        for y in 0..h {
            let src = (y0 + y) * self.width + x0;
            out.pixels[y * w..(y + 1) * w].copy_from_slice(&self.pixels[src..src + w]);
        }
        out
    }

    /// Number of non-zero pixels (for masks: the lesion area).
    pub fn count_nonzero(&self) -> usize {
        self.pixels.iter().filter(|&&v| v != 0).count()
    }

    /// Bounding box `(x0, y0, x1, y1)` (exclusive ends) of the non-zero pixels.
    pub fn nonzero_bbox(&self) -> Option<(usize, usize, usize, usize)> {
        let (mut x0, mut y0, mut x1, mut y1) = (usize::MAX, usize::MAX, 0, 0);
        for y in 0..self.height {
            let row = &self.pixels[y * self.width..(y + 1) * self.width];
            if let (Some(a), Some(b)) = (
                row.iter().position(|&v| v != 0),
                row.iter().rposition(|&v| v != 0),
            ) {
                x0 = x0.min(a);
                x1 = x1.max(b + 1);
                y0 = y0.min(y);
                y1 = y + 1;
            }
        }
        (x0 != usize::MAX).then_some((x0, y0, x1, y1))
    }
}

/// Every data-layer failure. Messages always name the file and the reason.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{path}: cannot read file: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Decode { path: PathBuf, reason: String },
    #[error("{path}: unsupported: {reason}")]
    Unsupported { path: PathBuf, reason: String },
    #[error("{path}: invalid data: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

impl DataError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        DataError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
    pub fn decode(path: &Path, reason: impl Into<String>) -> Self {
        DataError::Decode {
            path: path.to_path_buf(),
            reason: reason.into(),
        }
    }
    pub fn unsupported(path: &Path, reason: impl Into<String>) -> Self {
        DataError::Unsupported {
            path: path.to_path_buf(),
            reason: reason.into(),
        }
    }
    pub fn invalid(path: &Path, reason: impl Into<String>) -> Self {
        DataError::Invalid {
            path: path.to_path_buf(),
            reason: reason.into(),
        }
    }
}
