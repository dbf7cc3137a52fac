//! A buffer pool: a tensor's buffer goes back here when the tensor (and every
//! clone of it) is dropped, and the next allocation of the same size class
//! takes it. Tensor lifetimes decide reuse, so peak memory follows the largest
//! live set, not the sum of all intermediates.
//!
//! Reuse is safe inside one command stream: commands run in recording order
//! and wgpu orders the hazards, so a buffer freed after its last recorded read
//! can be written by a later recorded command. Uploads therefore go through
//! the command encoder (a staged copy), never `queue.write_buffer`, which
//! would run before commands already recorded.
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Size classes with 3 mantissa bits: at most 12.5% waste, few distinct sizes.
pub fn size_class(bytes: u64) -> u64 {
    let bytes = bytes.max(256);
    let top = 63 - bytes.leading_zeros() as u64; // floor(log2)
    if top < 3 {
        return bytes;
    }
    let step = 1u64 << (top - 3);
    bytes.div_ceil(step) * step
}

#[derive(Default)]
pub struct PoolState {
    free: HashMap<u64, Vec<wgpu::Buffer>>,
    /// Bytes held by live buffers plus free ones.
    pub allocated: u64,
    /// Bytes held by live (in-use) buffers.
    pub live: u64,
    /// Peak of `live` since the last reset.
    pub peak_live: u64,
}

pub struct BufferPool {
    device: wgpu::Device,
    state: Arc<Mutex<PoolState>>,
}

/// A pooled buffer; returns itself to the pool on drop.
pub struct PooledBuffer {
    buffer: Option<wgpu::Buffer>,
    class: u64,
    state: Arc<Mutex<PoolState>>,
}

impl PooledBuffer {
    pub fn buffer(&self) -> &wgpu::Buffer {
        self.buffer.as_ref().expect("buffer present until drop")
    }
}

impl Drop for PooledBuffer {
    fn drop(&mut self) {
        if let Some(b) = self.buffer.take() {
            let mut s = self.state.lock().unwrap();
            s.live -= self.class;
            s.free.entry(self.class).or_default().push(b);
        }
    }
}

impl BufferPool {
    pub fn new(device: wgpu::Device) -> Self {
        Self {
            device,
            state: Arc::new(Mutex::new(PoolState::default())),
        }
    }

    pub fn get(&self, bytes: u64) -> PooledBuffer {
        let class = size_class(bytes);
        let mut s = self.state.lock().unwrap();
        let buffer = match s.free.get_mut(&class).and_then(|v| v.pop()) {
            Some(b) => b,
            None => {
                s.allocated += class;
                self.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("tensor"),
                    size: class,
                    // UNIFORM: CPU adapters read small operands (a
                    // convolution's weight slice) through a uniform binding.
                    usage: wgpu::BufferUsages::STORAGE
                        | wgpu::BufferUsages::UNIFORM
                        | wgpu::BufferUsages::COPY_SRC
                        | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                })
            }
        };
        s.live += class;
        s.peak_live = s.peak_live.max(s.live);
        PooledBuffer {
            buffer: Some(buffer),
            class,
            state: self.state.clone(),
        }
    }

    /// (allocated, live, peak live) in bytes.
    pub fn stats(&self) -> (u64, u64, u64) {
        let s = self.state.lock().unwrap();
        (s.allocated, s.live, s.peak_live)
    }

    pub fn reset_peak(&self) {
        let mut s = self.state.lock().unwrap();
        s.peak_live = s.live;
    }

    /// Frees every buffer not in use (e.g. before a phase with other sizes).
    pub fn trim(&self) {
        let mut s = self.state.lock().unwrap();
        let freed: u64 = s.free.iter().map(|(class, v)| class * v.len() as u64).sum();
        s.free.clear();
        s.allocated -= freed;
    }
}

#[cfg(test)]
mod tests {
    use super::size_class;

    #[test]
    fn size_classes_cover_and_waste_little() {
        for bytes in [
            1u64,
            255,
            256,
            257,
            1000,
            4096,
            4097,
            1 << 20,
            52_428_800,
            123_456_789,
        ] {
            let c = size_class(bytes);
            assert!(c >= bytes, "{bytes} -> {c}");
            assert!(
                c <= (bytes.max(256) as f64 * 1.125) as u64 + 1,
                "{bytes} -> {c}"
            );
            assert_eq!(c % 4, 0);
        }
    }
}
