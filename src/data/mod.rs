//! Data: image readers (DICOM, PGM, PNG, JPEG), MIAS and CBIS-DDSM preparation,
//! the synthetic phantom generator and the online augmentation pipeline.
pub mod cli;
