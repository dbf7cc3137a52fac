//! DICOM results for a DICOM input, so that viewers show them with the
//! study they belong to (`--dicom` picks them):
//!
//! - `STEM_seg.dcm`: a DICOM Segmentation (BINARY, one segment "lesion",
//!   `p > threshold`, 1 bit per pixel);
//! - `STEM_pmap.dcm`: a DICOM Parametric Map of the probability (32-bit
//!   float pixels, real world value mapping identity, unit "no units");
//! - `STEM_overlay.dcm`: a Secondary Capture of the heat overlay (RGB).
//!
//! All carry the source's Patient and Study identity, reference the source
//! image, get new Series and SOP Instance UIDs (`2.25.` + a random 128-bit
//! number), and a Series Description naming the model and the threshold.
//! The Frame of Reference rule is at `Geometry` below. Checked with dciodvfy
//! (tests/workflow.rs). For research use, not diagnosis.
use crate::data::Gray8;
use crate::infer::output_path;
use anyhow::Context;
use dicom_core::value::{C, DataSetSequence, PrimitiveValue};
use dicom_core::{DataElement, Tag, VR};
use dicom_object::{FileMetaTableBuilder, InMemDicomObject, OpenFileOptions};
use std::path::{Path, PathBuf};

/// Image Type (and Frame Type) of the Parametric Map: derived, primary,
/// image flavor STATIC (one 2D image), derived pixel contrast NONE.
const PM_IMAGE_TYPE: &str = "DERIVED\\PRIMARY\\STATIC\\NONE";

pub const SEGMENTATION_STORAGE: &str = "1.2.840.10008.5.1.4.1.1.66.4";
pub const PARAMETRIC_MAP_STORAGE: &str = "1.2.840.10008.5.1.4.1.1.30";
pub const SECONDARY_CAPTURE_STORAGE: &str = "1.2.840.10008.5.1.4.1.1.7";
const EXPLICIT_VR_LE: &str = "1.2.840.10008.1.2.1";

/// Tags used here (PS3.6).
pub mod tags {
    use dicom_core::Tag;
    pub const SPECIFIC_CHARACTER_SET: Tag = Tag(0x0008, 0x0005);
    pub const IMAGE_TYPE: Tag = Tag(0x0008, 0x0008);
    pub const SOP_CLASS_UID: Tag = Tag(0x0008, 0x0016);
    pub const SOP_INSTANCE_UID: Tag = Tag(0x0008, 0x0018);
    pub const STUDY_DATE: Tag = Tag(0x0008, 0x0020);
    pub const CONTENT_DATE: Tag = Tag(0x0008, 0x0023);
    pub const STUDY_TIME: Tag = Tag(0x0008, 0x0030);
    pub const CONTENT_TIME: Tag = Tag(0x0008, 0x0033);
    pub const ACCESSION_NUMBER: Tag = Tag(0x0008, 0x0050);
    pub const MODALITY: Tag = Tag(0x0008, 0x0060);
    pub const MANUFACTURER: Tag = Tag(0x0008, 0x0070);
    pub const REFERRING_PHYSICIAN_NAME: Tag = Tag(0x0008, 0x0090);
    pub const CODE_VALUE: Tag = Tag(0x0008, 0x0100);
    pub const CODING_SCHEME_DESIGNATOR: Tag = Tag(0x0008, 0x0102);
    pub const CODE_MEANING: Tag = Tag(0x0008, 0x0104);
    pub const STUDY_DESCRIPTION: Tag = Tag(0x0008, 0x1030);
    pub const SERIES_DESCRIPTION: Tag = Tag(0x0008, 0x103E);
    pub const MANUFACTURER_MODEL_NAME: Tag = Tag(0x0008, 0x1090);
    pub const REFERENCED_SERIES_SEQUENCE: Tag = Tag(0x0008, 0x1115);
    pub const REFERENCED_INSTANCE_SEQUENCE: Tag = Tag(0x0008, 0x114A);
    pub const REFERENCED_SOP_CLASS_UID: Tag = Tag(0x0008, 0x1150);
    pub const REFERENCED_SOP_INSTANCE_UID: Tag = Tag(0x0008, 0x1155);
    pub const SOURCE_IMAGE_SEQUENCE: Tag = Tag(0x0008, 0x2112);
    pub const CONVERSION_TYPE: Tag = Tag(0x0008, 0x0064);
    pub const DERIVATION_DESCRIPTION: Tag = Tag(0x0008, 0x2111);
    pub const PLANAR_CONFIGURATION: Tag = Tag(0x0028, 0x0006);
    pub const SPATIAL_LOCATIONS_PRESERVED: Tag = Tag(0x0028, 0x135A);
    pub const FRAME_TYPE: Tag = Tag(0x0008, 0x9007);
    pub const DERIVATION_IMAGE_SEQUENCE: Tag = Tag(0x0008, 0x9124);
    pub const DERIVATION_CODE_SEQUENCE: Tag = Tag(0x0008, 0x9215);
    pub const PATIENT_NAME: Tag = Tag(0x0010, 0x0010);
    pub const PATIENT_ID: Tag = Tag(0x0010, 0x0020);
    pub const PATIENT_BIRTH_DATE: Tag = Tag(0x0010, 0x0030);
    pub const PATIENT_SEX: Tag = Tag(0x0010, 0x0040);
    pub const DEVICE_SERIAL_NUMBER: Tag = Tag(0x0018, 0x1000);
    pub const SOFTWARE_VERSIONS: Tag = Tag(0x0018, 0x1020);
    pub const IMAGER_PIXEL_SPACING: Tag = Tag(0x0018, 0x1164);
    pub const STUDY_INSTANCE_UID: Tag = Tag(0x0020, 0x000D);
    pub const SERIES_INSTANCE_UID: Tag = Tag(0x0020, 0x000E);
    pub const STUDY_ID: Tag = Tag(0x0020, 0x0010);
    pub const SERIES_NUMBER: Tag = Tag(0x0020, 0x0011);
    pub const INSTANCE_NUMBER: Tag = Tag(0x0020, 0x0013);
    pub const FRAME_OF_REFERENCE_UID: Tag = Tag(0x0020, 0x0052);
    pub const LATERALITY: Tag = Tag(0x0020, 0x0060);
    pub const IMAGE_LATERALITY: Tag = Tag(0x0020, 0x0062);
    pub const POSITION_REFERENCE_INDICATOR: Tag = Tag(0x0020, 0x1040);
    pub const PATIENT_ORIENTATION: Tag = Tag(0x0020, 0x0020);
    pub const IMAGE_POSITION_PATIENT: Tag = Tag(0x0020, 0x0032);
    pub const IMAGE_ORIENTATION_PATIENT: Tag = Tag(0x0020, 0x0037);
    pub const SLICE_THICKNESS: Tag = Tag(0x0018, 0x0050);
    pub const CONTENT_QUALIFICATION: Tag = Tag(0x0018, 0x9004);
    pub const PLANE_POSITION_SEQUENCE: Tag = Tag(0x0020, 0x9113);
    pub const PLANE_ORIENTATION_SEQUENCE: Tag = Tag(0x0020, 0x9116);
    pub const RECOGNIZABLE_VISUAL_FEATURES: Tag = Tag(0x0028, 0x0302);
    pub const RESCALE_INTERCEPT: Tag = Tag(0x0028, 0x1052);
    pub const RESCALE_SLOPE: Tag = Tag(0x0028, 0x1053);
    pub const RESCALE_TYPE: Tag = Tag(0x0028, 0x1054);
    pub const PIXEL_VALUE_TRANSFORMATION_SEQUENCE: Tag = Tag(0x0028, 0x9145);
    pub const ACQUISITION_CONTEXT_SEQUENCE: Tag = Tag(0x0040, 0x0555);
    pub const FRAME_CONTENT_SEQUENCE: Tag = Tag(0x0020, 0x9111);
    pub const STACK_ID: Tag = Tag(0x0020, 0x9056);
    pub const IN_STACK_POSITION_NUMBER: Tag = Tag(0x0020, 0x9057);
    pub const DIMENSION_INDEX_VALUES: Tag = Tag(0x0020, 0x9157);
    pub const DIMENSION_ORGANIZATION_UID: Tag = Tag(0x0020, 0x9164);
    pub const DIMENSION_INDEX_POINTER: Tag = Tag(0x0020, 0x9165);
    pub const FUNCTIONAL_GROUP_POINTER: Tag = Tag(0x0020, 0x9167);
    pub const DIMENSION_ORGANIZATION_SEQUENCE: Tag = Tag(0x0020, 0x9221);
    pub const DIMENSION_INDEX_SEQUENCE: Tag = Tag(0x0020, 0x9222);
    pub const SAMPLES_PER_PIXEL: Tag = Tag(0x0028, 0x0002);
    pub const PHOTOMETRIC_INTERPRETATION: Tag = Tag(0x0028, 0x0004);
    pub const NUMBER_OF_FRAMES: Tag = Tag(0x0028, 0x0008);
    pub const ROWS: Tag = Tag(0x0028, 0x0010);
    pub const COLUMNS: Tag = Tag(0x0028, 0x0011);
    pub const PIXEL_SPACING: Tag = Tag(0x0028, 0x0030);
    pub const BITS_ALLOCATED: Tag = Tag(0x0028, 0x0100);
    pub const BITS_STORED: Tag = Tag(0x0028, 0x0101);
    pub const HIGH_BIT: Tag = Tag(0x0028, 0x0102);
    pub const PIXEL_REPRESENTATION: Tag = Tag(0x0028, 0x0103);
    pub const BURNED_IN_ANNOTATION: Tag = Tag(0x0028, 0x0301);
    pub const LOSSY_IMAGE_COMPRESSION: Tag = Tag(0x0028, 0x2110);
    pub const PRESENTATION_LUT_SHAPE: Tag = Tag(0x2050, 0x0020);
    pub const LUT_EXPLANATION: Tag = Tag(0x0028, 0x3003);
    pub const WINDOW_CENTER: Tag = Tag(0x0028, 0x1050);
    pub const WINDOW_WIDTH: Tag = Tag(0x0028, 0x1051);
    pub const PIXEL_MEASURES_SEQUENCE: Tag = Tag(0x0028, 0x9110);
    pub const FRAME_VOI_LUT_SEQUENCE: Tag = Tag(0x0028, 0x9132);
    pub const MEASUREMENT_UNITS_CODE_SEQUENCE: Tag = Tag(0x0040, 0x08EA);
    pub const PARAMETRIC_MAP_FRAME_TYPE_SEQUENCE: Tag = Tag(0x0040, 0x9092);
    pub const REAL_WORLD_VALUE_MAPPING_SEQUENCE: Tag = Tag(0x0040, 0x9096);
    pub const LUT_LABEL: Tag = Tag(0x0040, 0x9210);
    pub const DOUBLE_RWV_FIRST_VALUE_MAPPED: Tag = Tag(0x0040, 0x9213);
    pub const DOUBLE_RWV_LAST_VALUE_MAPPED: Tag = Tag(0x0040, 0x9214);
    pub const RWV_INTERCEPT: Tag = Tag(0x0040, 0x9224);
    pub const RWV_SLOPE: Tag = Tag(0x0040, 0x9225);
    pub const PURPOSE_OF_REFERENCE_CODE_SEQUENCE: Tag = Tag(0x0040, 0xA170);
    pub const CONTENT_LABEL: Tag = Tag(0x0070, 0x0080);
    pub const CONTENT_DESCRIPTION: Tag = Tag(0x0070, 0x0081);
    pub const CONTENT_CREATOR_NAME: Tag = Tag(0x0070, 0x0084);
    pub const SEGMENT_SEQUENCE: Tag = Tag(0x0062, 0x0002);
    pub const SEGMENTED_PROPERTY_CATEGORY_CODE_SEQUENCE: Tag = Tag(0x0062, 0x0003);
    pub const SEGMENT_NUMBER: Tag = Tag(0x0062, 0x0004);
    pub const SEGMENT_LABEL: Tag = Tag(0x0062, 0x0005);
    pub const SEGMENT_ALGORITHM_TYPE: Tag = Tag(0x0062, 0x0008);
    pub const SEGMENT_ALGORITHM_NAME: Tag = Tag(0x0062, 0x0009);
    pub const SEGMENT_IDENTIFICATION_SEQUENCE: Tag = Tag(0x0062, 0x000A);
    pub const REFERENCED_SEGMENT_NUMBER: Tag = Tag(0x0062, 0x000B);
    pub const SEGMENTED_PROPERTY_TYPE_CODE_SEQUENCE: Tag = Tag(0x0062, 0x000F);
    pub const SEGMENTATION_TYPE: Tag = Tag(0x0062, 0x0001);
    pub const SHARED_FUNCTIONAL_GROUPS_SEQUENCE: Tag = Tag(0x5200, 0x9229);
    pub const PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE: Tag = Tag(0x5200, 0x9230);
    pub const FLOAT_PIXEL_DATA: Tag = Tag(0x7FE0, 0x0008);
    pub const PIXEL_DATA: Tag = Tag(0x7FE0, 0x0010);
}
use tags::*;

/// The source's identity copied into every result (when present).
const COPIED: &[Tag] = &[
    SPECIFIC_CHARACTER_SET,
    PATIENT_NAME,
    PATIENT_ID,
    PATIENT_BIRTH_DATE,
    PATIENT_SEX,
    STUDY_INSTANCE_UID,
    STUDY_DATE,
    STUDY_TIME,
    STUDY_ID,
    STUDY_DESCRIPTION,
    ACCESSION_NUMBER,
    REFERRING_PHYSICIAN_NAME,
];

/// Which DICOM results to write (`--dicom seg,pmap,overlay`, or `none`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DicomKinds {
    pub segmentation: bool,
    pub parametric_map: bool,
    pub overlay: bool,
}

impl Default for DicomKinds {
    /// The Segmentation and the Parametric Map.
    fn default() -> Self {
        DicomKinds {
            segmentation: true,
            parametric_map: true,
            overlay: false,
        }
    }
}

impl DicomKinds {
    pub const NONE: DicomKinds = DicomKinds {
        segmentation: false,
        parametric_map: false,
        overlay: false,
    };
    pub const ALL: DicomKinds = DicomKinds {
        segmentation: true,
        parametric_map: true,
        overlay: true,
    };
    pub fn any(&self) -> bool {
        self.segmentation || self.parametric_map || self.overlay
    }
    /// The output suffixes of the kinds asked for.
    pub fn suffixes(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        if self.segmentation {
            v.push("seg.dcm");
        }
        if self.parametric_map {
            v.push("pmap.dcm");
        }
        if self.overlay {
            v.push("overlay.dcm");
        }
        v
    }
}

impl std::str::FromStr for DicomKinds {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut k = DicomKinds::NONE;
        for part in s.split(',').map(str::trim) {
            match part {
                "seg" => k.segmentation = true,
                "pmap" => k.parametric_map = true,
                "overlay" => k.overlay = true,
                "none" => {}
                _ => {
                    return Err(format!(
                        "{part:?}: expected a comma-separated list of seg, pmap, overlay, or none"
                    ));
                }
            }
        }
        Ok(k)
    }
}

/// What the DICOM results of one input need besides the maps.
#[derive(Clone, Debug)]
pub struct DicomOptions {
    /// The results to write.
    pub kinds: DicomKinds,
    /// The Segmentation marks `p > threshold`.
    pub threshold: f32,
    /// Describes the model (e.g. the checkpoint's name).
    pub model_name: String,
}

/// The files written for one input.
#[derive(Debug, Clone)]
pub struct DicomResults {
    pub segmentation: Option<PathBuf>,
    pub parametric_map: Option<PathBuf>,
    pub overlay: Option<PathBuf>,
    /// The Frame of Reference UID both carry.
    pub frame_of_reference: String,
    /// Whether it (and the plane geometry) is the source's, or new.
    pub frame_of_reference_from_source: bool,
}

/// A new UID: `2.25.` and a random 128-bit number (PS3.5 B.2).
pub fn new_uid() -> String {
    format!("2.25.{}", rand::random::<u128>())
}

fn el(tag: Tag, vr: VR, v: impl Into<PrimitiveValue>) -> DataElement<InMemDicomObject> {
    DataElement::new(tag, vr, v.into())
}

fn s(tag: Tag, vr: VR, v: &str) -> DataElement<InMemDicomObject> {
    el(tag, vr, PrimitiveValue::from(v))
}

fn seq(tag: Tag, items: Vec<InMemDicomObject>) -> DataElement<InMemDicomObject> {
    DataElement::new(tag, VR::SQ, DataSetSequence::from(items))
}

fn obj(elements: Vec<DataElement<InMemDicomObject>>) -> InMemDicomObject {
    InMemDicomObject::from_element_iter(elements)
}

fn code(value: &str, scheme: &str, meaning: &str) -> InMemDicomObject {
    obj(vec![
        s(CODE_VALUE, VR::SH, value),
        s(CODING_SCHEME_DESIGNATOR, VR::SH, scheme),
        s(CODE_MEANING, VR::LO, meaning),
    ])
}

fn us(tag: Tag, v: u16) -> DataElement<InMemDicomObject> {
    el(tag, VR::US, PrimitiveValue::U16(C::from_elem(v, 1)))
}

fn fd(tag: Tag, v: f64) -> DataElement<InMemDicomObject> {
    el(tag, VR::FD, PrimitiveValue::F64(C::from_elem(v, 1)))
}

/// Truncates to a VR's maximum length in characters.
fn limit(text: &str, max: usize) -> String {
    text.chars().take(max).collect()
}

/// What is read from the source file (its header only).
struct SourceInfo {
    header: InMemDicomObject,
    sop_class: String,
    sop_instance: String,
    series_instance: String,
    modality: String,
    spacing: Option<DataElement<InMemDicomObject>>,
    geometry: Geometry,
}

/// The patient geometry the results carry. The Parametric Map IOD needs a
/// Frame of Reference and plane position/orientation: a source that has all
/// three lends them; otherwise (projection images such as CBIS-DDSM's
/// secondary captures) the results get a new Frame of Reference UID, shared
/// by the Segmentation and the Parametric Map of one input, with the image
/// plane at the origin, rows along x and columns along y.
struct Geometry {
    frame_of_reference: String,
    from_source: bool,
    position: DataElement<InMemDicomObject>,
    orientation: DataElement<InMemDicomObject>,
    thickness: Option<DataElement<InMemDicomObject>>,
}

fn text(o: &InMemDicomObject, tag: Tag) -> Option<String> {
    o.get(tag)
        .and_then(|e| e.to_str().ok())
        .map(|s| s.trim_end_matches(['\0', ' ']).to_string())
        .filter(|s| !s.is_empty())
}

fn read_source(path: &Path) -> anyhow::Result<SourceInfo> {
    let file = OpenFileOptions::new()
        .read_until(PIXEL_DATA)
        .open_file(path)
        .with_context(|| format!("{}: reading the DICOM header", path.display()))?;
    let header: InMemDicomObject = (*file).clone();
    let get = |tag: Tag, what: &str| {
        text(&header, tag).with_context(|| format!("{}: no {what}", path.display()))
    };
    let spacing = header
        .get(PIXEL_SPACING)
        .or_else(|| header.get(IMAGER_PIXEL_SPACING))
        .map(|e| DataElement::new(PIXEL_SPACING, VR::DS, e.value().clone()));
    let geometry = match (
        text(&header, FRAME_OF_REFERENCE_UID),
        header.get(IMAGE_POSITION_PATIENT),
        header.get(IMAGE_ORIENTATION_PATIENT),
    ) {
        (Some(uid), Some(pos), Some(ori)) => Geometry {
            frame_of_reference: uid,
            from_source: true,
            position: pos.clone(),
            orientation: ori.clone(),
            thickness: header.get(SLICE_THICKNESS).cloned(),
        },
        _ => Geometry {
            frame_of_reference: new_uid(),
            from_source: false,
            position: s(IMAGE_POSITION_PATIENT, VR::DS, "0\\0\\0"),
            orientation: s(IMAGE_ORIENTATION_PATIENT, VR::DS, "1\\0\\0\\0\\1\\0"),
            thickness: None,
        },
    };
    Ok(SourceInfo {
        geometry,
        sop_class: get(SOP_CLASS_UID, "SOP Class UID")?,
        sop_instance: get(SOP_INSTANCE_UID, "SOP Instance UID")?,
        series_instance: get(SERIES_INSTANCE_UID, "Series Instance UID")?,
        modality: text(&header, MODALITY).unwrap_or_else(|| "OT".into()),
        spacing,
        header,
    })
}

/// The elements every result shares: the source identity, new UIDs,
/// equipment, instance and reference modules.
fn common(
    src: &SourceInfo,
    sop_class: &str,
    modality: &str,
    series_number: i32,
    description: &str,
    opts: &DicomOptions,
) -> InMemDicomObject {
    let mut o = InMemDicomObject::new_empty();
    for &t in COPIED {
        if let Some(e) = src.header.get(t) {
            o.put(e.clone());
        }
    }
    // Type 2 elements of the patient and study modules: present, maybe empty.
    for (t, vr) in [
        (PATIENT_NAME, VR::PN),
        (PATIENT_ID, VR::LO),
        (PATIENT_BIRTH_DATE, VR::DA),
        (PATIENT_SEX, VR::CS),
        (STUDY_DATE, VR::DA),
        (STUDY_TIME, VR::TM),
        (STUDY_ID, VR::SH),
        (ACCESSION_NUMBER, VR::SH),
        (REFERRING_PHYSICIAN_NAME, VR::PN),
    ] {
        if o.get(t).is_none() {
            o.put(DataElement::empty(t, vr));
        }
    }
    let now = now_utc();
    o.put(s(SOP_CLASS_UID, VR::UI, sop_class));
    o.put(s(SOP_INSTANCE_UID, VR::UI, &new_uid()));
    o.put(s(SERIES_INSTANCE_UID, VR::UI, &new_uid()));
    o.put(s(MODALITY, VR::CS, modality));
    o.put(el(
        SERIES_NUMBER,
        VR::IS,
        PrimitiveValue::from(series_number.to_string()),
    ));
    o.put(s(INSTANCE_NUMBER, VR::IS, "1"));
    o.put(s(SERIES_DESCRIPTION, VR::LO, &limit(description, 64)));
    o.put(s(CONTENT_DESCRIPTION, VR::LO, &limit(description, 64)));
    // Type 2: no person made it (the software is in the equipment module).
    o.put(DataElement::empty(CONTENT_CREATOR_NAME, VR::PN));
    o.put(s(CONTENT_DATE, VR::DA, &now.0));
    o.put(s(CONTENT_TIME, VR::TM, &now.1));
    o.put(s(
        MANUFACTURER,
        VR::LO,
        "engine (research use, not for diagnosis)",
    ));
    o.put(s(
        MANUFACTURER_MODEL_NAME,
        VR::LO,
        &limit(&opts.model_name, 64),
    ));
    o.put(s(DEVICE_SERIAL_NUMBER, VR::LO, "0"));
    o.put(s(SOFTWARE_VERSIONS, VR::LO, env!("CARGO_PKG_VERSION")));
    o.put(s(
        FRAME_OF_REFERENCE_UID,
        VR::UI,
        &src.geometry.frame_of_reference,
    ));
    o.put(DataElement::empty(POSITION_REFERENCE_INDICATOR, VR::LO));
    // Type 2C: the source's when it is a valid one (two values of L, R, A,
    // P, H, F), else empty.
    let orientation = text(&src.header, PATIENT_ORIENTATION).filter(|v| {
        let parts: Vec<&str> = v.split('\\').collect();
        parts.len() == 2
            && parts
                .iter()
                .all(|p| !p.is_empty() && p.chars().all(|c| "LRAPHF".contains(c)))
    });
    o.put(match orientation {
        Some(v) => s(PATIENT_ORIENTATION, VR::CS, &v),
        None => DataElement::empty(PATIENT_ORIENTATION, VR::CS),
    });
    if let Some(l) = text(&src.header, IMAGE_LATERALITY) {
        o.put(s(IMAGE_LATERALITY, VR::CS, &l));
    }
    o.put(s(BURNED_IN_ANNOTATION, VR::CS, "NO"));
    o.put(s(LOSSY_IMAGE_COMPRESSION, VR::CS, "00"));
    // The source image, in the Common Instance Reference module.
    o.put(seq(
        REFERENCED_SERIES_SEQUENCE,
        vec![obj(vec![
            seq(REFERENCED_INSTANCE_SEQUENCE, vec![source_ref(src)]),
            s(SERIES_INSTANCE_UID, VR::UI, &src.series_instance),
        ])],
    ));
    o
}

fn source_ref(src: &SourceInfo) -> InMemDicomObject {
    obj(vec![
        s(REFERENCED_SOP_CLASS_UID, VR::UI, &src.sop_class),
        s(REFERENCED_SOP_INSTANCE_UID, VR::UI, &src.sop_instance),
    ])
}

/// Derivation Image functional group item: derived from the source image.
fn derivation(src: &SourceInfo, derivation_code: InMemDicomObject) -> InMemDicomObject {
    let mut r = source_ref(src);
    // Every output pixel is the source pixel at the same place.
    r.put(s(SPATIAL_LOCATIONS_PRESERVED, VR::CS, "YES"));
    r.put(seq(
        PURPOSE_OF_REFERENCE_CODE_SEQUENCE,
        vec![code(
            "121322",
            "DCM",
            "Source image for image processing operation",
        )],
    ));
    obj(vec![
        seq(DERIVATION_CODE_SEQUENCE, vec![derivation_code]),
        seq(SOURCE_IMAGE_SEQUENCE, vec![r]),
    ])
}

/// Dimension modules with one dimension (the index named by `pointer`
/// inside the functional group `group`).
fn dimensions(o: &mut InMemDicomObject, pointer: Tag, group: Tag) {
    let uid = new_uid();
    o.put(seq(
        DIMENSION_ORGANIZATION_SEQUENCE,
        vec![obj(vec![s(DIMENSION_ORGANIZATION_UID, VR::UI, &uid)])],
    ));
    o.put(seq(
        DIMENSION_INDEX_SEQUENCE,
        vec![obj(vec![
            s(DIMENSION_ORGANIZATION_UID, VR::UI, &uid),
            el(
                DIMENSION_INDEX_POINTER,
                VR::AT,
                PrimitiveValue::Tags(C::from_elem(pointer, 1)),
            ),
            el(
                FUNCTIONAL_GROUP_POINTER,
                VR::AT,
                PrimitiveValue::Tags(C::from_elem(group, 1)),
            ),
        ])],
    ));
}

fn image_pixel(o: &mut InMemDicomObject, rows: usize, cols: usize, bits: u16) {
    o.put(us(SAMPLES_PER_PIXEL, 1));
    o.put(s(PHOTOMETRIC_INTERPRETATION, VR::CS, "MONOCHROME2"));
    o.put(us(ROWS, rows as u16));
    o.put(us(COLUMNS, cols as u16));
    o.put(us(BITS_ALLOCATED, bits));
    o.put(s(NUMBER_OF_FRAMES, VR::IS, "1"));
}

fn plane_position(src: &SourceInfo) -> DataElement<InMemDicomObject> {
    seq(
        PLANE_POSITION_SEQUENCE,
        vec![obj(vec![src.geometry.position.clone()])],
    )
}

/// The shared functional groups; `geometry`: with the pixel measures and
/// the plane orientation (without, a Segmentation of a projection image has
/// neither: highdicom wants a slice thickness with any pixel measures).
fn shared_groups(
    src: &SourceInfo,
    extra: Vec<DataElement<InMemDicomObject>>,
    geometry: bool,
) -> InMemDicomObject {
    let mut g = InMemDicomObject::new_empty();
    if geometry {
        // Unknown spacing (CBIS-DDSM's files have none): one unit per pixel;
        // a projection image's slice thickness is unknown: 1.
        let spacing = src
            .spacing
            .clone()
            .unwrap_or_else(|| s(PIXEL_SPACING, VR::DS, "1\\1"));
        let thickness = src
            .geometry
            .thickness
            .clone()
            .unwrap_or_else(|| s(SLICE_THICKNESS, VR::DS, "1"));
        g.put(seq(
            PIXEL_MEASURES_SEQUENCE,
            vec![obj(vec![spacing, thickness])],
        ));
        g.put(seq(
            PLANE_ORIENTATION_SEQUENCE,
            vec![obj(vec![src.geometry.orientation.clone()])],
        ));
    }
    for e in extra {
        g.put(e);
    }
    g
}

/// Packs a mask into DICOM's 1-bit layout: pixel i is bit i % 8 of byte
/// i / 8 (least significant bit first), padded to an even length.
pub fn pack_bits(mask: &[bool]) -> Vec<u8> {
    let mut out = vec![0u8; mask.len().div_ceil(8).next_multiple_of(2)];
    for (i, _) in mask.iter().enumerate().filter(|(_, m)| **m) {
        out[i / 8] |= 1 << (i % 8);
    }
    out
}

/// (YYYYMMDD, HHMMSS) in UTC.
fn now_utc() -> (String, String) {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = (secs / 86400) as i64;
    let rem = secs % 86400;
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + (m <= 2) as i64;
    (
        format!("{y:04}{m:02}{d:02}"),
        format!("{:02}{:02}{:02}", rem / 3600, rem % 3600 / 60, rem % 60),
    )
}

/// Writes `STEM_seg.dcm` and `STEM_pmap.dcm` for the DICOM `source`.
pub fn write_results(
    source: &Path,
    stem: &Path,
    scan: &Gray8,
    prob: &[f32],
    opts: &DicomOptions,
) -> anyhow::Result<DicomResults> {
    let src = read_source(source)?;
    let (rows, cols) = (scan.height, scan.width);
    anyhow::ensure!(prob.len() == rows * cols, "map and scan differ in size");
    anyhow::ensure!(
        rows <= u16::MAX as usize && cols <= u16::MAX as usize,
        "{cols}x{rows} is too large for DICOM rows/columns"
    );
    let segmentation = if opts.kinds.segmentation {
        let path = output_path(stem, "seg.dcm");
        save(segmentation(&src, rows, cols, prob, opts), &path)?;
        Some(path)
    } else {
        None
    };
    let parametric_map = if opts.kinds.parametric_map {
        let path = output_path(stem, "pmap.dcm");
        save(parametric_map(&src, rows, cols, prob, opts), &path)?;
        Some(path)
    } else {
        None
    };
    let overlay = if opts.kinds.overlay {
        let path = output_path(stem, "overlay.dcm");
        save(overlay(&src, scan, prob, opts), &path)?;
        Some(path)
    } else {
        None
    };
    Ok(DicomResults {
        segmentation,
        parametric_map,
        overlay,
        frame_of_reference: src.geometry.frame_of_reference.clone(),
        frame_of_reference_from_source: src.geometry.from_source,
    })
}

/// The DICOM Segmentation of `p > threshold`.
fn segmentation(
    src: &SourceInfo,
    rows: usize,
    cols: usize,
    prob: &[f32],
    opts: &DicomOptions,
) -> InMemDicomObject {
    let t = opts.threshold;
    let description = format!("Lesion p > {t} (research use), {}", opts.model_name);
    let mut seg = common(src, SEGMENTATION_STORAGE, "SEG", 9901, &description, opts);
    // A Segmentation needs no Frame of Reference: it carries the source's
    // (with its plane geometry) and otherwise none; it is placed on the
    // source image through the referenced SOP Instance UID.
    let seg_geometry = src.geometry.from_source;
    if !seg_geometry {
        seg.remove_element(FRAME_OF_REFERENCE_UID);
        seg.remove_element(POSITION_REFERENCE_INDICATOR);
    }
    image_pixel(&mut seg, rows, cols, 1);
    seg.put(s(IMAGE_TYPE, VR::CS, "DERIVED\\PRIMARY"));
    seg.put(us(BITS_STORED, 1));
    seg.put(us(HIGH_BIT, 0));
    seg.put(us(PIXEL_REPRESENTATION, 0));
    seg.put(s(SEGMENTATION_TYPE, VR::CS, "BINARY"));
    seg.put(s(CONTENT_LABEL, VR::CS, "LESION"));
    seg.put(seq(
        SEGMENT_SEQUENCE,
        vec![obj(vec![
            us(SEGMENT_NUMBER, 1),
            s(
                SEGMENT_LABEL,
                VR::LO,
                &limit(&format!("lesion p > {t}"), 64),
            ),
            s(SEGMENT_ALGORITHM_TYPE, VR::CS, "AUTOMATIC"),
            s(SEGMENT_ALGORITHM_NAME, VR::LO, &limit(&opts.model_name, 64)),
            seq(
                SEGMENTED_PROPERTY_CATEGORY_CODE_SEQUENCE,
                vec![code("49755003", "SCT", "Morphologically Altered Structure")],
            ),
            seq(
                SEGMENTED_PROPERTY_TYPE_CODE_SEQUENCE,
                vec![code("52988006", "SCT", "Lesion")],
            ),
        ])],
    ));
    dimensions(
        &mut seg,
        REFERENCED_SEGMENT_NUMBER,
        SEGMENT_IDENTIFICATION_SEQUENCE,
    );
    seg.put(seq(
        SHARED_FUNCTIONAL_GROUPS_SEQUENCE,
        vec![shared_groups(src, vec![], seg_geometry)],
    ));
    let mut seg_frame = if seg_geometry {
        vec![plane_position(src)]
    } else {
        vec![]
    };
    seg_frame.extend([
        seq(
            DERIVATION_IMAGE_SEQUENCE,
            vec![derivation(src, code("113076", "DCM", "Segmentation"))],
        ),
        seq(
            FRAME_CONTENT_SEQUENCE,
            vec![obj(vec![el(
                DIMENSION_INDEX_VALUES,
                VR::UL,
                PrimitiveValue::U32(C::from_elem(1, 1)),
            )])],
        ),
        seq(
            SEGMENT_IDENTIFICATION_SEQUENCE,
            vec![obj(vec![us(REFERENCED_SEGMENT_NUMBER, 1)])],
        ),
    ]);
    seg.put(seq(
        PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE,
        vec![obj(seg_frame)],
    ));
    let mask: Vec<bool> = prob.iter().map(|&p| p > t).collect();
    seg.put(el(
        PIXEL_DATA,
        VR::OB,
        PrimitiveValue::U8(C::from_vec(pack_bits(&mask))),
    ));
    seg
}

/// General Series Laterality, Type 2C where the IOD's General Series
/// module asks for it: absent when Image Laterality is present (copied from
/// the source), else the source's laterality or empty (unknown).
fn series_laterality(o: &mut InMemDicomObject, src: &SourceInfo) {
    if text(&src.header, IMAGE_LATERALITY).is_none() {
        o.put(match text(&src.header, LATERALITY) {
            Some(l) => s(LATERALITY, VR::CS, &l),
            None => DataElement::empty(LATERALITY, VR::CS),
        });
    }
}

/// The DICOM Parametric Map of the probability.
fn parametric_map(
    src: &SourceInfo,
    rows: usize,
    cols: usize,
    prob: &[f32],
    opts: &DicomOptions,
) -> InMemDicomObject {
    let description = format!("Lesion probability (research use), {}", opts.model_name);
    let mut pm = common(
        src,
        PARAMETRIC_MAP_STORAGE,
        &src.modality,
        9902,
        &description,
        opts,
    );
    image_pixel(&mut pm, rows, cols, 32);
    pm.put(s(IMAGE_TYPE, VR::CS, PM_IMAGE_TYPE));
    series_laterality(&mut pm, src);
    pm.put(s(CONTENT_QUALIFICATION, VR::CS, "RESEARCH"));
    pm.put(s(RECOGNIZABLE_VISUAL_FEATURES, VR::CS, "NO"));
    pm.put(DataElement::new(
        ACQUISITION_CONTEXT_SEQUENCE,
        VR::SQ,
        DataSetSequence::<InMemDicomObject>::empty(),
    ));
    pm.put(s(CONTENT_LABEL, VR::CS, "PROBABILITY"));
    pm.put(s(PRESENTATION_LUT_SHAPE, VR::CS, "IDENTITY"));
    dimensions(&mut pm, IN_STACK_POSITION_NUMBER, FRAME_CONTENT_SEQUENCE);
    let mapping = obj(vec![
        s(LUT_EXPLANATION, VR::LO, "lesion probability"),
        s(LUT_LABEL, VR::SH, "P_LESION"),
        fd(DOUBLE_RWV_FIRST_VALUE_MAPPED, 0.0),
        fd(DOUBLE_RWV_LAST_VALUE_MAPPED, 1.0),
        fd(RWV_INTERCEPT, 0.0),
        fd(RWV_SLOPE, 1.0),
        seq(
            MEASUREMENT_UNITS_CODE_SEQUENCE,
            vec![code("1", "UCUM", "no units")],
        ),
    ]);
    pm.put(seq(
        SHARED_FUNCTIONAL_GROUPS_SEQUENCE,
        vec![shared_groups(
            src,
            vec![
                seq(REAL_WORLD_VALUE_MAPPING_SEQUENCE, vec![mapping]),
                seq(
                    FRAME_VOI_LUT_SEQUENCE,
                    vec![obj(vec![
                        s(WINDOW_CENTER, VR::DS, "0.5"),
                        s(WINDOW_WIDTH, VR::DS, "1"),
                    ])],
                ),
                seq(
                    PIXEL_VALUE_TRANSFORMATION_SEQUENCE,
                    vec![obj(vec![
                        s(RESCALE_INTERCEPT, VR::DS, "0"),
                        s(RESCALE_SLOPE, VR::DS, "1"),
                        s(RESCALE_TYPE, VR::LO, "US"),
                    ])],
                ),
                seq(
                    PARAMETRIC_MAP_FRAME_TYPE_SEQUENCE,
                    vec![obj(vec![s(FRAME_TYPE, VR::CS, PM_IMAGE_TYPE)])],
                ),
            ],
            true,
        )],
    ));
    pm.put(seq(
        PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE,
        vec![obj(vec![
            plane_position(src),
            seq(
                DERIVATION_IMAGE_SEQUENCE,
                vec![derivation(src, code("110001", "DCM", "Image Processing"))],
            ),
            seq(
                FRAME_CONTENT_SEQUENCE,
                vec![obj(vec![
                    el(
                        DIMENSION_INDEX_VALUES,
                        VR::UL,
                        PrimitiveValue::U32(C::from_elem(1, 1)),
                    ),
                    s(STACK_ID, VR::SH, "1"),
                    el(
                        IN_STACK_POSITION_NUMBER,
                        VR::UL,
                        PrimitiveValue::U32(C::from_elem(1, 1)),
                    ),
                ])],
            ),
        ])],
    ));
    pm.put(el(
        FLOAT_PIXEL_DATA,
        VR::OF,
        PrimitiveValue::F32(C::from_vec(prob.to_vec())),
    ));
    pm
}

/// A Secondary Capture of the heat overlay (RGB), for viewers and PACS that
/// show neither Segmentations nor Parametric Maps.
fn overlay(src: &SourceInfo, scan: &Gray8, prob: &[f32], opts: &DicomOptions) -> InMemDicomObject {
    let description = format!(
        "Lesion probability overlay (research use), {}",
        opts.model_name
    );
    let mut sc = common(
        src,
        SECONDARY_CAPTURE_STORAGE,
        "OT",
        9903,
        &description,
        opts,
    );
    // The Secondary Capture IOD has neither a Frame of Reference nor the
    // content identification of the enhanced IODs.
    for t in [
        FRAME_OF_REFERENCE_UID,
        POSITION_REFERENCE_INDICATOR,
        CONTENT_DESCRIPTION,
        CONTENT_CREATOR_NAME,
    ] {
        sc.remove_element(t);
    }
    series_laterality(&mut sc, src);
    sc.put(s(CONVERSION_TYPE, VR::CS, "WSD"));
    sc.put(s(IMAGE_TYPE, VR::CS, "DERIVED\\SECONDARY"));
    sc.put(s(
        DERIVATION_DESCRIPTION,
        VR::ST,
        "lesion probability as a heat tint (blue 0.25 to red 1) over the scan",
    ));
    sc.put(seq(SOURCE_IMAGE_SEQUENCE, vec![source_ref(src)]));
    sc.put(us(SAMPLES_PER_PIXEL, 3));
    sc.put(s(PHOTOMETRIC_INTERPRETATION, VR::CS, "RGB"));
    sc.put(us(PLANAR_CONFIGURATION, 0));
    sc.put(us(ROWS, scan.height as u16));
    sc.put(us(COLUMNS, scan.width as u16));
    sc.put(us(BITS_ALLOCATED, 8));
    sc.put(us(BITS_STORED, 8));
    sc.put(us(HIGH_BIT, 7));
    sc.put(us(PIXEL_REPRESENTATION, 0));
    let mut rgb = crate::infer::overlay_rgb(scan, prob);
    if rgb.len() % 2 == 1 {
        rgb.push(0);
    }
    sc.put(el(PIXEL_DATA, VR::OB, PrimitiveValue::U8(C::from_vec(rgb))));
    sc
}

fn save(o: InMemDicomObject, path: &Path) -> anyhow::Result<()> {
    let file = o
        .with_meta(
            FileMetaTableBuilder::new()
                .transfer_syntax(EXPLICIT_VR_LE)
                .implementation_class_uid("2.25.197937497826355702425838370470834153877")
                .implementation_version_name("ENGINE"),
        )
        .context("building the file meta header")?;
    let tmp = path.with_extension("dcm.tmp");
    file.write_to_file(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn bits_are_packed_lsb_first_to_an_even_length() {
        let m = [
            true, false, false, true, false, false, false, false, false, true,
        ];
        assert_eq!(super::pack_bits(&m), vec![0b0000_1001, 0b0000_0010]);
        assert_eq!(super::pack_bits(&[true; 17]).len(), 4);
    }

    #[test]
    fn new_uids_are_distinct_and_valid() {
        let (a, b) = (super::new_uid(), super::new_uid());
        assert_ne!(a, b);
        assert!(a.starts_with("2.25.") && a.len() <= 64, "{a}");
        assert!(a[5..].chars().all(|c| c.is_ascii_digit()));
    }
}
