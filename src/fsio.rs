//! Files that are either complete or absent (`engine_core::fsio`), and
//! PNGs written the same way.
pub use engine_core::fsio::*;
use std::path::Path;

/// Encodes a PNG into `path` atomically.
pub fn save_png(path: &Path, img: &image::DynamicImage) -> anyhow::Result<()> {
    write_atomic_with(path, false, |w| {
        img.write_with_encoder(image::codecs::png::PngEncoder::new(w))?;
        Ok(())
    })
}
