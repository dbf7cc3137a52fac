//! Helpers of the kernel tests. The device comes from the integration
//! tests' shared module (`tests/support`), so there is one `gpu()`.
use engine::{Gpu, Tensor};

pub use crate::checks::*;
pub use crate::support::gpu;
use crate::support::{DevicePool, Lease};

/// The binding limit of `tiny_gpu`: 4 KiB = 1024 floats (minus alignment).
pub const TINY_LIMIT: u64 = 4096;

/// A device told that a storage binding holds only `TINY_LIMIT` bytes,
/// so that every op must split its work into many windows; leased to the
/// calling test like `gpu()`.
pub fn tiny_gpu() -> &'static Gpu {
    static POOL: DevicePool = DevicePool::new();
    thread_local!(static LEASE: Lease = POOL.lease(tiny));
    LEASE.with(|l| l.gpu)
}

fn tiny() -> engine::Result<Gpu> {
    let g = Gpu::new(None)?;
    g.set_binding_limit(TINY_LIMIT);
    Ok(g)
}

pub fn up(gpu: &Gpu, shape: &[usize], data: &[f32]) -> Tensor {
    gpu.upload(shape, data).unwrap()
}

/// An output tensor full of NaN, standing for a pool buffer that still
/// holds an earlier tensor's values: a pass that does not accumulate must
/// overwrite every element of it.
pub fn stale(gpu: &Gpu, shape: &[usize]) -> Tensor {
    let n = shape.iter().product();
    gpu.upload(shape, &vec![f32::NAN; n]).unwrap()
}

pub fn read(gpu: &Gpu, t: &Tensor) -> Vec<f32> {
    gpu.read(t).unwrap()
}
