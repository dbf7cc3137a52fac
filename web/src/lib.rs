//! engine-web: the engine in a browser tab. The core's inference
//! (`engine_core`) on the reader's own GPU through WebGPU, behind a small
//! API for the page in `web/www/`: decode a scan, open the GPU, load a
//! model from bytes, run it. Nothing here touches the network: the page
//! hands in the bytes of files the reader chose.
//!
//! Everything that waits on the GPU returns a `Promise` (the core's
//! readbacks are async; a browser's main thread never blocks).
use engine_core::dicom;
use engine_core::gpu::Gpu;
use engine_core::image::Gray8;
use engine_core::infer::TileOptions;
use engine_core::lesions::{CandidateOptions, candidates};
use engine_core::model::{Checkpoint, Load, Model};
use engine_core::predictor::{Member, Predictor};
use engine_core::spacing::ModelSpacing;
use engine_core::tta::Tta;
use std::cell::RefCell;
use std::path::Path;
use std::rc::Rc;
use wasm_bindgen::prelude::*;

/// The largest scan the page accepts, in pixels: a full-field digital
/// mammogram is about 4000 x 5000 (20 Mpx); twice that leaves room and
/// keeps the decoded copies well inside a tab's memory.
pub const MAX_PIXELS: usize = 40_000_000;

/// A panic in wasm traps, and a trapped future never settles its Promise:
/// the message goes to the console and to `globalThis.enginePanic`, which
/// the page's error handler shows.
#[wasm_bindgen(start)]
fn start() {
    std::panic::set_hook(Box::new(|info| {
        let text = format!("internal error: {info}");
        web_sys::console::error_1(&text.clone().into());
        let _ = js_sys::Reflect::set(&js_sys::global(), &"enginePanic".into(), &text.into());
    }));
}

fn js_error(e: impl std::fmt::Display) -> JsError {
    JsError::new(&e.to_string())
}

/// A decoded scan: 8-bit grey, as the network reads it, and the pixel
/// spacing its file declares (DICOM's Pixel Spacing).
#[wasm_bindgen]
pub struct Scan {
    gray: Gray8,
    spacing_mm: Option<f64>,
}

#[wasm_bindgen]
impl Scan {
    /// Decodes a DICOM, PNG, JPEG or PGM file (colour goes to luma; DICOM
    /// by `engine`'s rule). `name` is only for messages. Errors say what is
    /// wrong and what to do.
    pub fn decode(name: &str, bytes: &[u8]) -> Result<Scan, JsError> {
        if dicom::is_dicom_bytes(bytes) {
            let (gray, info) =
                dicom::decode_bytes(Path::new(name), bytes, MAX_PIXELS).map_err(js_error)?;
            return Ok(Scan {
                gray,
                spacing_mm: info.pixel_spacing_mm,
            });
        }
        decode_gray(name, bytes)
            .map(|gray| Scan {
                gray,
                spacing_mm: None,
            })
            .map_err(js_error)
    }

    /// Millimetres per pixel from the file's header (DICOM), if it has one.
    #[wasm_bindgen(getter)]
    pub fn pixel_spacing(&self) -> Option<f64> {
        self.spacing_mm
    }

    #[wasm_bindgen(getter)]
    pub fn width(&self) -> usize {
        self.gray.width
    }

    #[wasm_bindgen(getter)]
    pub fn height(&self) -> usize {
        self.gray.height
    }

    /// The grey pixels, row-major.
    pub fn pixels(&self) -> Vec<u8> {
        self.gray.pixels.clone()
    }
}

/// The grey image of a PNG, JPEG or PGM file's bytes, with the checks
/// the native reader makes: a known format, a size within [`MAX_PIXELS`]
/// read from the header before anything is decoded.
pub fn decode_gray(name: &str, bytes: &[u8]) -> anyhow::Result<Gray8> {
    let reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
    if reader.format().is_none() {
        anyhow::bail!("{name}: not an image the page can read (DICOM, PNG, JPEG or PGM)");
    }
    let (w, h) = reader
        .into_dimensions()
        .map_err(|e| anyhow::anyhow!("{name}: cannot read the image header: {e}"))?;
    let pixels = w as usize * h as usize;
    if pixels > MAX_PIXELS {
        anyhow::bail!(
            "{name}: {w} x {h} is {pixels} pixels, more than the page's limit of {MAX_PIXELS}; crop or shrink it, or run `engine infer`"
        );
    }
    let img = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| anyhow::anyhow!("{name}: {e}"))?
        .decode()
        .map_err(|e| anyhow::anyhow!("{name}: cannot decode: {e}"))?
        .to_luma8();
    Ok(Gray8 {
        width: w as usize,
        height: h as usize,
        pixels: img.into_raw(),
    })
}

struct State {
    gpu: Gpu,
    predictor: RefCell<Option<Predictor>>,
}

/// The GPU and the loaded model.
#[wasm_bindgen]
pub struct Engine {
    state: Rc<State>,
}

#[wasm_bindgen]
impl Engine {
    /// Opens the GPU the browser offers (a Promise of an Engine).
    pub async fn open() -> Result<Engine, JsError> {
        let gpu = Gpu::request().await.map_err(js_error)?;
        Ok(Engine {
            state: Rc::new(State {
                gpu,
                predictor: RefCell::new(None),
            }),
        })
    }

    /// The adapter in use, for the page: its name, or (browsers often
    /// hide the name) its kind and backend.
    pub fn adapter(&self) -> String {
        let info = &self.state.gpu.info;
        let kind = format!("{:?}", info.device_type);
        if info.name.is_empty() {
            format!("{kind} adapter via {:?}", info.backend)
        } else {
            format!("{} ({kind})", info.name)
        }
    }

    /// Loads a model from checkpoint files (`.safetensors`; several make an
    /// ensemble whose maps are averaged). Returns a JSON description: the
    /// members and the pixel spacing the model was trained at.
    pub fn load_model(&self, names: Vec<String>, files: js_sys::Array) -> Result<String, JsError> {
        if names.is_empty() || names.len() != files.length() as usize {
            return Err(js_error("load_model: one name per file, at least one file"));
        }
        let mut members = Vec::new();
        for (name, file) in names.iter().zip(files.iter()) {
            let bytes = js_sys::Uint8Array::new(&file).to_vec();
            let member = member(&self.state.gpu, name, &bytes).map_err(js_error)?;
            members.push(member);
        }
        let predictor = Predictor::new(members).map_err(js_error)?;
        let spacing = predictor.spacing();
        let description = serde_json::json!({
            "members": names,
            "model_mm": spacing.map(|s| s.model_mm),
            "data_mm": spacing.map(|s| s.data_mm),
        });
        *self.state.predictor.borrow_mut() = Some(predictor);
        Ok(description.to_string())
    }

    /// The probability map of `scan` (a Promise of a Float32Array, the
    /// scan's size, row-major). `pixel_spacing_mm`: the scan's millimetres
    /// per pixel when its file declares none (None: the model's training
    /// data's). `tta`: "none", "flips" or "dihedral". `progress(done,
    /// total)` is called after each pass of the network (one per member
    /// and view).
    pub fn run(
        &self,
        scan: &Scan,
        pixel_spacing_mm: Option<f64>,
        tta: &str,
        progress: Option<js_sys::Function>,
    ) -> js_sys::Promise {
        let state = self.state.clone();
        let gray = scan.gray.clone();
        let spacings = (scan.spacing_mm, pixel_spacing_mm);
        let tta = match tta {
            "flips" => Ok(Tta::Flips),
            "dihedral" => Ok(Tta::Dihedral),
            "none" | "" => Ok(Tta::None),
            other => Err(format!("unknown test-time augmentation '{other}'")),
        };
        wasm_bindgen_futures::future_to_promise(async move {
            let tta = tta.map_err(|e| JsValue::from(js_error(e)))?;
            let mut report = |done: usize, total: usize| {
                if let Some(f) = &progress {
                    let _ = f.call2(&JsValue::NULL, &done.into(), &total.into());
                }
            };
            let map = probability_map(&state, &gray, spacings, tta, &mut report)
                .await
                .map_err(|e| JsValue::from(js_error(format!("{e:#}"))))?;
            Ok(js_sys::Float32Array::from(map.as_slice()).into())
        })
    }

    /// The candidate lesions of a map (JSON: score, centre, box, in the
    /// scan's pixels), at least 10 mm apart (`engine infer`'s rule).
    /// `pixel_spacing_mm` as for [`Engine::run`].
    pub fn candidates(
        &self,
        scan: &Scan,
        map: &[f32],
        pixel_spacing_mm: Option<f64>,
    ) -> Result<String, JsError> {
        let (width, height) = (scan.gray.width, scan.gray.height);
        if map.len() != width * height {
            return Err(js_error("candidates: the map is not the scan's size"));
        }
        let predictor = self.state.predictor.borrow();
        let mm = predictor
            .as_ref()
            .and_then(|p| p.input_spacing(scan.spacing_mm, pixel_spacing_mm))
            .map(|s| s.input_mm)
            .or(scan.spacing_mm)
            .or(pixel_spacing_mm)
            .unwrap_or(1.0);
        let found = candidates(map, width, height, mm, &CandidateOptions::default());
        serde_json::to_string(&found).map_err(js_error)
    }
}

/// One ensemble member from a checkpoint's bytes, validated as the native
/// loader validates a file.
fn member(gpu: &Gpu, name: &str, bytes: &[u8]) -> anyhow::Result<Member> {
    let checkpoint = Checkpoint::parse(bytes, Path::new(name), Load::Weights)?;
    let (mut model, meta) = Model::from_checkpoint(gpu, checkpoint)?;
    // Inference only: batch norm folded and weights re-laid once, here.
    model.freeze(gpu)?;
    let spacing = ModelSpacing::from_meta(&meta, Path::new(name))?;
    Ok(Member {
        model,
        spacing,
        name: name.to_string(),
    })
}

async fn probability_map(
    state: &State,
    scan: &Gray8,
    spacings: (Option<f64>, Option<f64>),
    tta: Tta,
    progress: &mut dyn FnMut(usize, usize),
) -> anyhow::Result<Vec<f32>> {
    // The predictor is taken out while it runs (a RefCell borrow cannot
    // be held across an await); a model loaded meanwhile wins.
    let predictor = state
        .predictor
        .borrow_mut()
        .take()
        .ok_or_else(|| anyhow::anyhow!("no model loaded"))?
        .with_tta(tta);
    let map = predictor
        .probability_map_with_progress(
            &state.gpu,
            scan,
            spacings,
            &TileOptions::default(),
            progress,
        )
        .await;
    let mut slot = state.predictor.borrow_mut();
    if slot.is_none() {
        *slot = Some(predictor);
    }
    map
}

/// The probability map as a 16-bit grey PNG (65535 = 1.0), the file
/// `engine infer` writes as `NAME_prob.png`.
#[wasm_bindgen]
pub fn probability_png(map: &[f32], width: u32, height: u32) -> Result<Vec<u8>, JsError> {
    let p16: Vec<u16> = map
        .iter()
        .map(|&p| (p.clamp(0.0, 1.0) * 65535.0).round() as u16)
        .collect();
    let img = image::ImageBuffer::<image::Luma<u16>, _>::from_raw(width, height, p16)
        .ok_or_else(|| js_error("probability_png: the map is not width x height"))?;
    png_bytes(&image::DynamicImage::from(img)).map_err(js_error)
}

/// The mask at `threshold` (255 where p > threshold), `NAME_mask.png`.
#[wasm_bindgen]
pub fn mask_png(map: &[f32], width: u32, height: u32, threshold: f32) -> Result<Vec<u8>, JsError> {
    let m: Vec<u8> = map
        .iter()
        .map(|&p| if p > threshold { 255 } else { 0 })
        .collect();
    let img = image::GrayImage::from_raw(width, height, m)
        .ok_or_else(|| js_error("mask_png: the map is not width x height"))?;
    png_bytes(&image::DynamicImage::from(img)).map_err(js_error)
}

fn png_bytes(img: &image::DynamicImage) -> image::ImageResult<Vec<u8>> {
    let mut out = Vec::new();
    img.write_with_encoder(image::codecs::png::PngEncoder::new(&mut out))?;
    Ok(out)
}

/// The heat overlay of `engine infer` (`NAME_overlay.png`: the scan in
/// grey, tinted where p rises above a quarter) as RGBA for a canvas.
#[wasm_bindgen]
pub fn overlay_rgba(scan: &Scan, map: &[f32]) -> Result<Vec<u8>, JsError> {
    if map.len() != scan.gray.pixels.len() {
        return Err(js_error("overlay_rgba: the map is not the scan's size"));
    }
    let rgb = engine_core::infer::overlay_rgb(&scan.gray, map);
    Ok(rgb
        .chunks(3)
        .flat_map(|c| [c[0], c[1], c[2], 255])
        .collect())
}

/// The image score of `engine infer` and docs/MODEL.md's image-level rule:
/// the scan is positive at threshold `t` exactly when the score exceeds `t`
/// (more than H*W/750 pixels above `t`).
#[wasm_bindgen]
pub fn image_score(map: &[f32]) -> f64 {
    engine_core::infer::area_score(map)
}
