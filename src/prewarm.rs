//! Background compiles for a first run on a CPU adapter.
//!
//! lavapipe compiles each kernel with LLVM at its first dispatch, one at a
//! time on its queue's thread, and keeps the result in Mesa's shader cache
//! (`~/.cache/mesa_shader_cache`). A first run of a network therefore
//! waits for 10-20 compiles of 1-5 s in a row while the other cores idle.
//! Here a dry run lists the kernels a scan will need with the parameters
//! of their first dispatch (`Predictor::kernels_for`; lavapipe specialises
//! a kernel to some uniform values, so a compile with other parameters
//! would not be the one the run needs). One of them is dispatched at once
//! on the main device and timed: a cache hit means a warm cache, and
//! nothing more is done. Otherwise a thread opens a second device on the
//! same adapter and dispatches the others once each, last first, one
//! workgroup on small zeroed buffers: what it compiles lands in the
//! shader cache, where the main device's first dispatch finds it. The
//! main run and the thread work from opposite ends of the list and meet
//! in the middle; a kernel both reach is compiled twice, never waited for.
//!
//! Off where it cannot help: on GPUs (their drivers compile when the
//! pipeline is created), when Mesa's shader cache is disabled
//! (`MESA_SHADER_CACHE_DISABLE`), with `ENGINE_TUNE=on` (the run times
//! candidates a dry run cannot foresee), with `ENGINE_TRACE_PIPELINES`
//! (which times each compile alone), and with
//! `ENGINE_BACKGROUND_COMPILE=off`.
use engine_core::gpu::{Gpu, KernelSource, TuneMode};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

/// The threads started, for `finish`.
static THREADS: Mutex<Vec<JoinHandle<()>>> = Mutex::new(Vec::new());
/// Set by `finish`: the threads stop before their next kernel.
static STOP: AtomicBool = AtomicBool::new(false);

/// Stops the background compiles and waits for them: at most the rest of
/// one kernel's compile. The process calls this before it exits, so that
/// no thread is inside the driver while the process tears it down.
pub fn finish() {
    STOP.store(true, Ordering::Relaxed);
    let threads = std::mem::take(&mut *THREADS.lock().unwrap());
    for t in threads {
        let _ = t.join();
    }
}

/// Turns the background compiles off when set to `off` (or `0`).
pub const BACKGROUND_COMPILE_ENV: &str = "ENGINE_BACKGROUND_COMPILE";

/// Whether background compiles can help on `gpu`.
pub fn useful(gpu: &Gpu) -> bool {
    let env_off = |name: &str| {
        std::env::var(name).is_ok_and(|v| {
            let v = v.to_lowercase();
            matches!(v.as_str(), "off" | "0" | "false" | "no")
        })
    };
    let cache_disabled = std::env::var("MESA_SHADER_CACHE_DISABLE")
        .is_ok_and(|v| matches!(v.to_lowercase().as_str(), "1" | "true" | "yes"));
    // With tuning on, the run times candidates the dry run cannot foresee.
    let tuning = gpu.variants().mode() == TuneMode::On;
    gpu.is_cpu()
        && !cache_disabled
        && !tuning
        && !gpu.traces_pipelines()
        && !env_off(BACKGROUND_COMPILE_ENV)
}

/// A first dispatch slower than this compiled (a shader-cache hit takes
/// milliseconds, an LLVM compile of a convolution 1-5 s).
const COLD: std::time::Duration = std::time::Duration::from_millis(250);

/// Compiles `kernels` (in the order a run meets them) ahead of the run:
/// first one heavy kernel on `gpu` itself, timed, and if that compiled
/// (the shader cache is cold) the rest on a second device, last first.
/// None when no thread was started (`finish` stops those that were). On a
/// warm cache this costs one small dispatch, so warm runs keep their speed.
pub fn start(gpu: &Gpu, mut kernels: Vec<KernelSource>) -> Option<()> {
    if kernels.is_empty() || !useful(gpu) || STOP.load(Ordering::Relaxed) {
        return None;
    }
    // The probe: the first kernel at least a quarter the length of the
    // longest (a convolution, not an elementwise pass), which the run
    // would compile first anyway.
    let longest = kernels.iter().map(|k| k.wgsl.len()).max()?;
    let probe = kernels.iter().position(|k| k.wgsl.len() * 4 >= longest)?;
    let started = std::time::Instant::now();
    compile(gpu, &kernels.remove(probe))?;
    if started.elapsed() < COLD || kernels.is_empty() {
        return None;
    }
    let adapter = gpu.info.name.clone();
    let thread = std::thread::Builder::new()
        .name("background compiles".into())
        .spawn(move || {
            // A failure here only loses the head start: the main run
            // compiles whatever this thread did not.
            let Ok(twin) = Gpu::new(Some(&adapter)) else {
                return;
            };
            // Natively an uncaptured error panics; here it would only mean
            // a kernel not compiled ahead.
            twin.device
                .on_uncaptured_error(std::sync::Arc::new(|_: wgpu::Error| {}));
            for k in kernels.iter().rev() {
                if STOP.load(Ordering::Relaxed) || compile(&twin, k).is_none() {
                    return;
                }
            }
        })
        .ok()?;
    THREADS.lock().unwrap().push(thread);
    Some(())
}

/// One workgroup of `k` with its first dispatch's parameters on small
/// zeroed buffers (a uniform array gets its declared size): reads and
/// writes past them are clamped or dropped (wgpu's bounds checks), and the
/// compile is the one the run will need.
fn compile(gpu: &Gpu, k: &KernelSource) -> Option<()> {
    let bindings = operand_bindings(&k.wgsl, &k.entry)?;
    let pipeline = gpu.pipeline_for(k.key.clone(), || k.wgsl.clone(), &k.entry);
    // One buffer per binding: a buffer may not be bound read-only and
    // read-write in one dispatch. A texel operand gets 4 zeros.
    let buffers = bindings
        .iter()
        .map(|&(_, b)| gpu.zeros(&[b.floats()]).ok())
        .collect::<Option<Vec<_>>>()?;
    let (mut windows, mut texels) = (Vec::new(), Vec::new());
    for (&(binding, b), t) in bindings.iter().zip(&buffers) {
        match b {
            Bound::Floats(_) => windows.push((binding, gpu.window(t, 0, t.numel()).0)),
            Bound::Texels => {
                texels.push((binding, gpu.texels("background compile", t, 0, 4).ok()?))
            }
        }
    }
    let windows: Vec<_> = windows.iter().map(|(b, w)| (*b, w)).collect();
    let texels: Vec<_> = texels.iter().map(|(b, v)| (*b, v)).collect();
    let bound = (windows.as_slice(), texels.as_slice());
    gpu.dispatch_grid(&pipeline, "background compile", &k.params, bound, 1, 1);
    gpu.flush();
    gpu.wait().ok()
}

/// What a compile dispatch binds to one operand binding.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Bound {
    /// A buffer of this many f32s.
    Floats(usize),
    /// A texture of texels (`Gpu::texels` of one vec4).
    Texels,
}

impl Bound {
    fn floats(self) -> usize {
        match self {
            Bound::Floats(n) => n,
            Bound::Texels => 4,
        }
    }
}

/// The operand bindings that `entry` of `wgsl` uses (wgpu's automatic
/// layout holds only those), with what to bind: 64 f32s for a storage
/// array, the declared size for a uniform one, texels for a texture.
/// Binding 0 (the parameters) is the dispatch's own.
fn operand_bindings(wgsl: &str, entry: &str) -> Option<Vec<(u32, Bound)>> {
    use naga::valid::{Capabilities, ValidationFlags, Validator};
    let module = naga::front::wgsl::parse_str(wgsl).ok()?;
    let info = Validator::new(ValidationFlags::all(), Capabilities::all())
        .validate(&module)
        .ok()?;
    let index = module.entry_points.iter().position(|e| e.name == entry)?;
    let uses = info.get_entry_point(index);
    let mut out = Vec::new();
    for (h, v) in module.global_variables.iter() {
        let (Some(binding), false) = (v.binding.as_ref(), uses[h].is_empty()) else {
            continue;
        };
        let bound = match v.space {
            naga::AddressSpace::Storage { .. } => Bound::Floats(64),
            naga::AddressSpace::Uniform if binding.binding != 0 => {
                Bound::Floats(module.types[v.ty].inner.size(module.to_ctx()) as usize / 4)
            }
            naga::AddressSpace::Handle
                if matches!(module.types[v.ty].inner, naga::TypeInner::Image { .. }) =>
            {
                Bound::Texels
            }
            _ => continue,
        };
        out.push((binding.binding, bound));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::{Bound, operand_bindings};

    #[test]
    fn operand_bindings_are_those_the_entry_point_uses() {
        let wgsl = "struct Params { n: u32 }\n\
            @group(0) @binding(0) var<uniform> P: Params;\n\
            @group(0) @binding(1) var<storage, read> a: array<f32>;\n\
            @group(0) @binding(2) var<storage, read> unused: array<f32>;\n\
            @group(0) @binding(4) var<storage, read_write> y: array<vec4<f32>>;\n\
            @group(0) @binding(3) var<uniform> u: array<vec4<f32>, 16>;\n\
            @group(0) @binding(5) var t: texture_2d<f32>;\n\
            @compute @workgroup_size(8)\n\
            fn main(@builtin(global_invocation_id) g: vec3<u32>) {\n\
                if (g.x < P.n) { y[g.x] = vec4<f32>(a[g.x]) + u[g.x % 16u] + textureLoad(t, vec2<u32>(g.x, 0u), 0); }\n\
            }\n\
            @compute @workgroup_size(8)\n\
            fn other(@builtin(global_invocation_id) g: vec3<u32>) {\n\
                if (g.x < P.n) { y[g.x] = vec4<f32>(unused[g.x]); }\n\
            }\n";
        assert_eq!(
            operand_bindings(wgsl, "main"),
            Some(vec![
                (1, Bound::Floats(64)),
                (4, Bound::Floats(64)),
                (3, Bound::Floats(64)),
                (5, Bound::Texels)
            ])
        );
        assert_eq!(
            operand_bindings(wgsl, "other"),
            Some(vec![(2, Bound::Floats(64)), (4, Bound::Floats(64))])
        );
        assert_eq!(operand_bindings(wgsl, "missing"), None);
        assert_eq!(operand_bindings("not wgsl", "main"), None);
    }
}
