//! `ops`: one module per op family. Each holds the GPU entry points (which
//! validate shapes, plan how the work is split so that every binding fits
//! the adapter, and record dispatches) and `cpu`, a plain Rust f64
//! reference used by the tests and by nothing else.
pub mod batchnorm;
pub mod conv;
pub mod elementwise;
pub mod fold;
pub mod loss;
pub mod optim;
pub mod pool;
pub mod reduce;
pub mod resize;

use crate::error::{EngineError, Result};

/// Declares a shader's uniform `Params` once: a `#[repr(C)]` struct of u32
/// fields for the host and, from the same field list, its WGSL declaration
/// (`NAME::WGSL`), so the two cannot drift apart. Generated kernels paste
/// `WGSL` into their source.
macro_rules! wgsl_params {
    ($(#[$meta:meta])* $vis:vis struct $name:ident { $($(#[$fmeta:meta])* $field:ident),* $(,)? }) => {
        $(#[$meta])*
        #[repr(C)]
        #[derive(Clone, Copy, Default, Debug, bytemuck::Pod, bytemuck::Zeroable)]
        $vis struct $name { $($(#[$fmeta])* pub $field: u32),* }
        impl $name {
            /// The WGSL declaration of this struct, named `Params`.
            #[allow(dead_code)]
            pub const WGSL: &'static str =
                concat!("struct Params {\n", $("    ", stringify!($field), ": u32,\n",)* "}\n");
        }
    };
}
use crate::gpu::{Gpu, Kernel, Shader, Tensor, Window};
pub(crate) use wgsl_params;

pub(crate) static CONV2D: Shader = Shader {
    name: "conv2d",
    source: include_str!("../../../shaders/conv2d.wgsl"),
};
pub(crate) static CONV_PREP: Shader = Shader {
    name: "conv_prep",
    source: include_str!("../../../shaders/conv_prep.wgsl"),
};
pub(crate) static FOLD: Shader = Shader {
    name: "fold",
    source: include_str!("../../../shaders/fold.wgsl"),
};
pub(crate) static REDUCE: Shader = Shader {
    name: "reduce",
    source: include_str!("../../../shaders/reduce.wgsl"),
};
pub(crate) static BATCHNORM: Shader = Shader {
    name: "batchnorm",
    source: include_str!("../../../shaders/batchnorm.wgsl"),
};
pub(crate) static POOL: Shader = Shader {
    name: "pool",
    source: include_str!("../../../shaders/pool.wgsl"),
};
pub(crate) static RESIZE: Shader = Shader {
    name: "resize",
    source: include_str!("../../../shaders/resize.wgsl"),
};
pub(crate) static ELEMENTWISE: Shader = Shader {
    name: "elementwise",
    source: include_str!("../../../shaders/elementwise.wgsl"),
};
pub(crate) static LOSS: Shader = Shader {
    name: "loss",
    source: include_str!("../../../shaders/loss.wgsl"),
};
pub(crate) static OPTIM: Shader = Shader {
    name: "optim",
    source: include_str!("../../../shaders/optim.wgsl"),
};

/// Every shader file, for validation tests and `engine bench`.
pub static SHADERS: [&Shader; 10] = [
    &CONV2D,
    &CONV_PREP,
    &FOLD,
    &REDUCE,
    &BATCHNORM,
    &POOL,
    &RESIZE,
    &ELEMENTWISE,
    &LOSS,
    &OPTIM,
];

pub(crate) const fn kernel(shader: &'static Shader, entry: &'static str) -> Kernel {
    Kernel {
        shader,
        entry,
        workgroup: 64,
    }
}

/// Builds a shader's uniform `Params` struct word by word, in field order.
#[derive(Default)]
pub(crate) struct Params(Vec<u32>);

impl Params {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn u(mut self, v: usize) -> Self {
        self.0.push(u32::try_from(v).expect("param exceeds u32"));
        self
    }
    pub fn f(mut self, v: f32) -> Self {
        self.0.push(v.to_bits());
        self
    }
    /// The words of a `#[repr(C)]` struct that mirrors a shader's `Params`.
    pub fn of<T: bytemuck::Pod>(v: &T) -> Self {
        Params(bytemuck::cast_slice(bytemuck::bytes_of(v)).to_vec())
    }
    pub fn words(&self) -> &[u32] {
        &self.0
    }
}

/// Records a dispatch with windows bound at the given binding numbers.
pub(crate) fn launch(
    gpu: &Gpu,
    k: &Kernel,
    params: &Params,
    windows: &[(u32, &Window)],
    threads: usize,
) {
    gpu.dispatch(k, params.words(), windows, threads);
}

/// 4 where a kernel written over `alias V = f32;` may run as vec4s over
/// items of `len` elements (windows keep vec4 alignment and `len` is a
/// multiple of 4), else 1.
pub(crate) fn vec4_lanes(gpu: &Gpu, len: usize) -> usize {
    if gpu.vec4_windows() && len.is_multiple_of(4) {
        4
    } else {
        1
    }
}

/// `launch` over `elems` elements taken `lanes` (from `vec4_lanes`) at a
/// time: 4 runs the kernel's vec4 form (`Gpu::dispatch_vec4`; lengths and
/// offsets in `params` counted in vec4s), 1 the kernel itself.
pub(crate) fn launch_lanes(
    gpu: &Gpu,
    k: &Kernel,
    params: &Params,
    windows: &[(u32, &Window)],
    elems: usize,
    lanes: usize,
) {
    if lanes == 4 {
        gpu.dispatch_vec4(k, params.words(), windows, elems / 4);
    } else {
        gpu.dispatch(k, params.words(), windows, elems);
    }
}

/// `[start, start + len)` runs of at most `max` items covering `total`.
pub(crate) fn runs(total: usize, max: usize) -> impl Iterator<Item = (usize, usize)> {
    let max = max.max(1);
    (0..total.div_ceil(max)).map(move |i| (i * max, max.min(total - i * max)))
}

/// How many items of `item_elems` elements fit one window; an error naming
/// the op when not even one does.
pub(crate) fn items_per_window(
    gpu: &Gpu,
    op: &'static str,
    item_elems: usize,
    what: &str,
) -> Result<usize> {
    let n = gpu.window_elems() / item_elems.max(1);
    if n == 0 {
        return Err(EngineError::TooLarge {
            op,
            detail: format!(
                "one {what} of {item_elems} values ({} bytes) exceeds the storage binding limit of {} bytes; use smaller tiles",
                item_elems * 4,
                gpu.binding_limit()
            ),
        });
    }
    Ok(n)
}

pub(crate) fn check_nonempty(op: &'static str, name: &str, t: &Tensor) -> Result<()> {
    if t.numel() == 0 {
        return crate::error::shape_err(op, format!("{name} {:?} is empty", t.shape()));
    }
    Ok(())
}

pub(crate) fn check_rank(op: &'static str, name: &str, t: &Tensor, rank: usize) -> Result<()> {
    if t.shape().len() != rank {
        return crate::error::shape_err(
            op,
            format!("{name} must have {rank} dimensions, got {:?}", t.shape()),
        );
    }
    check_nonempty(op, name, t)
}

/// TensorFlow SAME padding (docs/MODEL.md): output `ceil(in / s)` and the pad
/// before (top/left); the rest of the total pad goes after.
pub fn same_padding(input: usize, k: usize, stride: usize, dil: usize) -> (usize, usize) {
    let out = input.div_ceil(stride);
    let need = (out - 1) * stride + (k - 1) * dil + 1;
    let pad = need.saturating_sub(input);
    (out, pad / 2)
}
