//! Texel operands: an operand that every lane reads at its own address,
//! copied (or, a padded input, padded straight) into an `rgba32float`
//! texture and read with `textureLoad`.
//!
//! Why: Mesa's gallivm (lavapipe) compiles a load from a storage buffer
//! whose address differs per lane as a loop over the 8 SIMD lanes that
//! inserts each lane's value into a vector through the stack, one
//! store-forwarding stall per element: in `perf`, two thirds of the weight
//! gradient's time sat on those reloads. A texel fetch compiles to
//! unrolled inserts instead; the same kernel reading its padded input from
//! a texture ran 1.5-2.6x as fast. On GPUs a storage load is already the
//! fast path, so this is for CPU adapters only (`Gpu::texel_operands`).
//!
//! Texel `i` (elements `4i..4i+4`) lies at column `i % TEXEL_ROW`, row
//! `i / TEXEL_ROW`; `TEXEL_FN` is the WGSL that reads it, `TEXEL_STORE_FN`
//! the WGSL that writes it.
use super::{Gpu, Tensor};
use crate::error::{EngineError, Result};
use std::sync::atomic::Ordering;

/// Texels per texture row: a power of two, so a kernel splits an index
/// with a shift and a mask, and below every adapter's 2-D size limit
/// (WebGPU guarantees 8192).
const TEXEL_ROW: u32 = 4096;
const TEXEL_BYTES: u32 = 16;

/// WGSL for `texel(i)`, reading texture `XT` (bound by the kernel); its
/// mask and shift are `TEXEL_ROW`'s.
pub const TEXEL_FN: &str = "fn texel(i: u32) -> vec4<f32> {\n    \
     return textureLoad(XT, vec2<u32>(i & 4095u, i >> 12u), 0);\n}\n";
/// WGSL for `texel_store(i, v)`, the writer's side of `texel(i)` into the
/// storage texture `XO` (bound by the kernel that pads into it).
pub const TEXEL_STORE_FN: &str = "fn texel_store(i: u32, v: vec4<f32>) {\n    \
     textureStore(XO, vec2<u32>(i & 4095u, i >> 12u), v);\n}\n";
const _: () = assert!(TEXEL_ROW == 1 << 12);

/// The texture a recording thread copies its texel operands into (or has a
/// kernel write them into: `texel_target`), grown as needed. A thread's
/// copies and dispatches are recorded in order into one encoder, so each
/// dispatch reads what its thread's copy or writer before it wrote;
/// threads sharing a device (tests) each have their own texture, so
/// another thread's copy cannot come in between. A texture lives as
/// long as the device (one per thread that ever recorded a texel copy).
pub(super) struct TexelStore {
    texture: wgpu::Texture,
    view: wgpu::TextureView,
    rows: u32,
}

pub(super) fn texel_operands_fit(limits: &wgpu::Limits) -> bool {
    limits.max_texture_dimension_2d >= TEXEL_ROW
}

impl Gpu {
    /// Whether kernels read per-lane operands (the weight gradient's
    /// padded input) as texels (see the module's comment). On by default
    /// on CPU adapters; tests turn it off to cover the storage path.
    pub fn texel_operands(&self) -> bool {
        self.texel_operands.load(Ordering::Relaxed)
    }

    pub fn set_texel_operands(&self, on: bool) {
        let on = on && texel_operands_fit(&self.limits);
        self.texel_operands.store(on, Ordering::Relaxed);
    }

    /// Records a copy of elements `start..start + len` of `t` (multiples
    /// of 4) into this thread's texel texture, from texel 0 on, and returns
    /// its view, which holds them for every dispatch this thread records
    /// before its next call.
    pub fn texels(
        &self,
        op: &'static str,
        t: &Tensor,
        start: usize,
        len: usize,
    ) -> Result<wgpu::TextureView> {
        assert!(
            start.is_multiple_of(4) && len.is_multiple_of(4) && start + len <= t.numel(),
            "texel operands hold whole vec4s of the tensor"
        );
        let texels = len / 4;
        let (texture, view) = self.texel_store(op, len)?;
        if !self.in_dry_run() {
            let mut rec = self.rec.lock().unwrap();
            let enc = self.encoder(&mut rec);
            let full = (texels / TEXEL_ROW as usize) as u32;
            let tail = (texels % TEXEL_ROW as usize) as u32;
            let (src, offset) = (t.buffer(), start as u64 * 4);
            copy_rows(enc, (src, offset), &texture, (0, full), TEXEL_ROW);
            copy_rows(enc, (src, offset), &texture, (full, 1), tail);
        }
        Ok(view)
    }

    /// This thread's texel texture, grown to hold `len` elements (a
    /// multiple of 4), for a kernel to write (`TEXEL_STORE_FN`) instead of
    /// a copy: what it writes is what the dispatches this thread records
    /// next read, as after `texels`.
    pub fn texel_target(&self, op: &'static str, len: usize) -> Result<wgpu::TextureView> {
        assert!(len.is_multiple_of(4), "texel operands hold whole vec4s");
        self.texel_store(op, len).map(|(_, view)| view)
    }

    /// This thread's texture and its view, grown to hold `len` elements.
    fn texel_store(
        &self,
        op: &'static str,
        len: usize,
    ) -> Result<(wgpu::Texture, wgpu::TextureView)> {
        let rows = (len / 4).div_ceil(TEXEL_ROW as usize).max(1);
        if rows > self.limits.max_texture_dimension_2d as usize {
            return Err(EngineError::TooLarge {
                op,
                detail: format!(
                    "{len} elements need {rows} texture rows of {TEXEL_ROW} texels; the adapter allows {}",
                    self.limits.max_texture_dimension_2d
                ),
            });
        }
        let mut stores = self.texel_stores.lock().unwrap();
        let store = stores
            .entry(super::this_thread())
            .or_insert_with(|| self.texel_texture(rows as u32));
        if (store.rows as usize) < rows {
            *store = self.texel_texture(rows as u32);
        }
        Ok((store.texture.clone(), store.view.clone()))
    }

    fn texel_texture(&self, rows: u32) -> TexelStore {
        let texture = self.device.create_texture(&wgpu::TextureDescriptor {
            label: Some("texel operands"),
            size: wgpu::Extent3d {
                width: TEXEL_ROW,
                height: rows,
                depth_or_array_layers: 1,
            },
            mip_level_count: 1,
            sample_count: 1,
            dimension: wgpu::TextureDimension::D2,
            format: wgpu::TextureFormat::Rgba32Float,
            usage: wgpu::TextureUsages::TEXTURE_BINDING
                | wgpu::TextureUsages::COPY_DST
                | wgpu::TextureUsages::STORAGE_BINDING,
            view_formats: &[],
        });
        let view = texture.create_view(&Default::default());
        TexelStore {
            texture,
            view,
            rows,
        }
    }
}

/// Copies `count` texture rows from `row0` on, `width` texels each, from
/// the same texels of `buffer` counted from byte `offset` (nothing when
/// empty).
fn copy_rows(
    enc: &mut wgpu::CommandEncoder,
    (buffer, offset): (&wgpu::Buffer, u64),
    texture: &wgpu::Texture,
    (row0, count): (u32, u32),
    width: u32,
) {
    if count == 0 || width == 0 {
        return;
    }
    let bytes_per_row = TEXEL_ROW * TEXEL_BYTES;
    enc.copy_buffer_to_texture(
        wgpu::TexelCopyBufferInfo {
            buffer,
            layout: wgpu::TexelCopyBufferLayout {
                offset: offset + row0 as u64 * bytes_per_row as u64,
                bytes_per_row: Some(bytes_per_row),
                rows_per_image: None,
            },
        },
        wgpu::TexelCopyTextureInfo {
            texture,
            mip_level: 0,
            origin: wgpu::Origin3d {
                x: 0,
                y: row0,
                z: 0,
            },
            aspect: wgpu::TextureAspect::All,
        },
        wgpu::Extent3d {
            width,
            height: count,
            depth_or_array_layers: 1,
        },
    );
}
