//! Pixel spacing: the physical pixel size a model works at, and where an
//! input's spacing comes from (docs/MODEL.md, "Pixel spacing").
//!
//! A model is trained at one spacing (by default the training data's over
//! 0.66, the paper's downscale) and recorded in its checkpoint. Inference
//! and evaluation resample every input from its own spacing to the model's
//! and map the probabilities back to the input's pixels, so a lesion has the
//! size in network pixels that training showed, whatever the scanner.
use crate::model::Meta;
use std::path::Path;

/// Checkpoint metadata keys.
pub const MODEL_KEY: &str = "pixel_spacing_mm";
pub const DATA_KEY: &str = "data_pixel_spacing_mm";

/// The paper's downscale of its training data (crops of `size / 0.66`).
pub const PAPER_DOWNSCALE: f64 = 0.66;

/// The spacings a checkpoint records.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ModelSpacing {
    /// Millimetres per network input pixel.
    pub model_mm: f64,
    /// The training data's spacing (assumed for inputs that declare none).
    pub data_mm: f64,
}

impl ModelSpacing {
    /// The spacings of checkpoint `path`; None for checkpoints written
    /// before they were recorded (such models run at the input's pixels).
    pub fn from_meta(meta: &Meta, path: &Path) -> anyhow::Result<Option<ModelSpacing>> {
        let get = |key: &str| -> anyhow::Result<Option<f64>> {
            meta.extra
                .get(key)
                .map(|v| match v.parse::<f64>() {
                    Ok(x) if x > 0.0 && x.is_finite() => Ok(x),
                    _ => anyhow::bail!(
                        "{}: metadata '{key}' is '{v}', not a spacing",
                        path.display()
                    ),
                })
                .transpose()
        };
        Ok(match (get(MODEL_KEY)?, get(DATA_KEY)?) {
            (Some(model_mm), data) => Some(ModelSpacing {
                model_mm,
                data_mm: data.unwrap_or(model_mm * PAPER_DOWNSCALE),
            }),
            (None, _) => None,
        })
    }

    pub fn write(&self, meta: &mut Meta) {
        meta.extra
            .insert(MODEL_KEY.into(), self.model_mm.to_string());
        meta.extra.insert(DATA_KEY.into(), self.data_mm.to_string());
    }
}

/// Where an input's spacing came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// The file's own header (DICOM Pixel Spacing or Imager Pixel Spacing),
    /// or a prepared set's manifest.
    File,
    /// `--pixel-spacing`.
    Flag,
    /// Nothing said: the model's training data spacing is assumed.
    Assumed,
}

impl Origin {
    pub fn name(self) -> &'static str {
        match self {
            Origin::File => "file",
            Origin::Flag => "flag",
            Origin::Assumed => "assumed",
        }
    }
}

/// An input's pixel spacing and the model's, in millimetres.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Spacings {
    pub input_mm: f64,
    pub model_mm: f64,
}

impl ModelSpacing {
    /// The spacings to run one input at: its file's spacing, else the
    /// flag's, else the training data's (`Assumed`: the caller warns).
    pub fn for_input(&self, file: Option<f64>, flag: Option<f64>) -> (Spacings, Origin) {
        let (input_mm, origin) = match (file, flag) {
            (Some(mm), _) => (mm, Origin::File),
            (None, Some(mm)) => (mm, Origin::Flag),
            (None, None) => (self.data_mm, Origin::Assumed),
        };
        let s = Spacings {
            input_mm,
            model_mm: self.model_mm,
        };
        (s, origin)
    }
}

/// The one-line warning for inputs whose spacing was assumed.
pub fn assumed_warning(what: &str, model: &ModelSpacing) -> String {
    format!(
        "warning: {what}: no pixel spacing in the file; assuming the model's training data spacing, {} mm (give --pixel-spacing MM if it differs: the model expects lesions at the size training showed)",
        model.data_mm
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spacing_round_trips_through_metadata_and_rejects_garbage() {
        let s = ModelSpacing {
            model_mm: 0.2 / 0.66,
            data_mm: 0.2,
        };
        let mut meta = Meta::default();
        s.write(&mut meta);
        let back = ModelSpacing::from_meta(&meta, Path::new("c")).unwrap();
        assert_eq!(back, Some(s));
        assert_eq!(
            ModelSpacing::from_meta(&Meta::default(), Path::new("c")).unwrap(),
            None
        );
        meta.extra.insert(MODEL_KEY.into(), "-1".into());
        let e = ModelSpacing::from_meta(&meta, Path::new("c.safetensors")).unwrap_err();
        assert!(e.to_string().contains("c.safetensors"), "{e}");
    }

    #[test]
    fn the_file_wins_then_the_flag_then_the_training_data() {
        let m = ModelSpacing {
            model_mm: 0.3,
            data_mm: 0.2,
        };
        let at = |mm: f64| Spacings {
            input_mm: mm,
            model_mm: 0.3,
        };
        assert_eq!(m.for_input(Some(0.05), Some(0.1)), (at(0.05), Origin::File));
        assert_eq!(m.for_input(None, Some(0.1)), (at(0.1), Origin::Flag));
        assert_eq!(m.for_input(None, None), (at(0.2), Origin::Assumed));
    }
}
