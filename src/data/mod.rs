//! Data: image readers (DICOM, PGM, PNG, JPEG), MIAS and CBIS-DDSM preparation,
//! the synthetic phantom generator and the online augmentation pipeline.
//!
//! Everything the network sees is an 8-bit grey image ([`Gray8`]); masks are
//! [`Gray8`] too, holding 0 or 1 once loaded (0 or 255 on disk).
pub mod augment;
pub mod cbis;
pub mod coco;
pub mod dicom;
pub mod loader;
pub mod mias;
pub mod prepared;
pub mod read;
pub use engine_core::resample;
pub mod synth;

pub use engine_core::image::Gray8;

pub use crate::error::DataError;
