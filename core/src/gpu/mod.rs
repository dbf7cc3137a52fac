//! `gpu`: adapter selection, the device with the adapter's real limits,
//! pipelines compiled once per shader and specialisation, the buffer pool,
//! upload/readback, and a recorder that batches many dispatches into one
//! command encoder and one submit.
mod pool;
mod profile;
mod tensor;
mod texels;
mod variants;

pub use pool::{BufferPool, PooledBuffer, size_class};
pub use tensor::Tensor;
pub use texels::{TEXEL_FN, TEXEL_STORE_FN};
pub use variants::{TUNE_ENV, TUNE_FILE_ENV, TuneMode, Variants};

use crate::error::{EngineError, Result};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Loop iterations one invocation may run on lavapipe, counted over all
/// nested loops (each iteration and each loop exit counts one).
///
/// Why: Mesa's llvmpipe/lavapipe (measured on Mesa 22.3) stops any loop nest
/// after 65535 counted iterations per invocation, silently, to guard against
/// hangs; a longer loop gives wrong numbers, not an error. Every kernel's
/// planner keeps its per-invocation work under `Gpu::loop_budget()` (this
/// value on lavapipe, with margin) by splitting channels, rows or chunks over
/// more invocations or dispatches.
pub const LOOP_BUDGET: usize = 40_000;

/// Size of a uniform operand binding (`Gpu::uniform_operands`): WebGPU's
/// default limit for a uniform binding, so every adapter can take it.
pub const UNIFORM_OPERAND_BYTES: u64 = 64 << 10;

fn uniform_operands_fit(limits: &wgpu::Limits) -> bool {
    limits.max_uniform_buffer_binding_size >= UNIFORM_OPERAND_BYTES
}
/// The per-invocation loop budget on other adapters: no driver limit, but
/// long invocations risk display-driver watchdogs, so work is still split.
pub const GPU_LOOP_BUDGET: usize = 1 << 20;

/// Float accumulators one invocation of a generated convolution kernel may
/// keep on a GPU, whose registers are few (255 per thread on NVIDIA): the
/// wide register tiles that win on lavapipe, where registers are memory,
/// are not candidates there. On an NVIDIA H200 (driver 580) building the
/// first 1024-accumulator tile (16 pixels x 64 channels) failed, and wgpu
/// lost the device with it.
pub const GPU_ACCUMULATORS: usize = 128;

/// Whether a kernel keeping `n` float accumulators per invocation is a
/// candidate on a CPU adapter (`cpu`: any) or a GPU (`GPU_ACCUMULATORS`).
pub fn holds_accumulators(cpu: bool, n: usize) -> bool {
    cpu || n <= GPU_ACCUMULATORS
}

/// Environment variable that picks an adapter by (part of its) name.
pub const ADAPTER_ENV: &str = "ENGINE_ADAPTER";

/// One WGSL source file under `shaders/`.
pub struct Shader {
    pub name: &'static str,
    pub source: &'static str,
}

/// A compute entry point plus its pipeline-override constants: one pipeline.
#[derive(Clone, Copy)]
pub struct Kernel {
    pub shader: &'static Shader,
    pub entry: &'static str,
    pub workgroup: u32,
}

/// A storage binding: a byte range of one buffer.
pub struct Window<'a> {
    pub buffer: &'a wgpu::Buffer,
    pub offset: u64,
    pub size: u64,
}

/// A dispatch's operands by binding: storage windows, and textures of
/// texels (`Gpu::texels`).
pub type Operands<'s, 'w> = (
    &'s [(u32, &'s Window<'w>)],
    &'s [(u32, &'s wgpu::TextureView)],
);

/// Bytes per parameter slot in the uniform arena (>= every adapter's
/// `min_uniform_buffer_offset_alignment`, which is at most 256).
const PARAM_SLOT: u64 = 256;
/// Dispatches recorded before the recorder submits on its own.
const PARAM_SLOTS: u64 = 2048;

struct Recorder {
    encoder: Option<wgpu::CommandEncoder>,
    params: Vec<u8>,
    params_buf: wgpu::Buffer,
    slots_used: u64,
    dispatches: u64,
    submits: u64,
}

/// Summary of one adapter, for `engine devices`.
pub struct AdapterSummary {
    pub index: usize,
    pub info: wgpu::AdapterInfo,
    pub limits: wgpu::Limits,
    pub timestamps: bool,
}

pub struct Gpu {
    /// The first GPU error nobody captured (a browser only logs them):
    /// readbacks report it instead of returning what a failed kernel left.
    uncaptured: Arc<Mutex<Option<String>>>,
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: wgpu::AdapterInfo,
    pub limits: wgpu::Limits,
    pub timestamps: bool,
    /// The subgroup size, where the device has subgroup operations and
    /// every subgroup has the same size (lavapipe: 8, its SIMD width).
    subgroup: Option<usize>,
    /// Whether kernels share loads across a subgroup; see `subgroup_size`.
    subgroup_loads: std::sync::atomic::AtomicBool,
    /// Largest storage binding the ops plan for, in bytes. Starts at the
    /// adapter's limit; tests lower it to prove that splitting works.
    binding_limit: AtomicU64,
    /// Whether kernels read small read-only operands (a convolution's
    /// weight slice) through a uniform binding; see `uniform_operands`.
    uniform_operands: std::sync::atomic::AtomicBool,
    /// Whether kernels read per-lane operands as texels; see `texel_operands`.
    texel_operands: std::sync::atomic::AtomicBool,
    /// Per recording thread (see `texels::TexelStore`).
    texel_stores: Mutex<HashMap<std::thread::ThreadId, texels::TexelStore>>,
    /// Loop iterations one invocation may run (see `LOOP_BUDGET`).
    loop_budget: usize,
    /// Pipelines by key: `shader:entry` for the static shaders, the
    /// specialisation's own key for generated ones.
    pipelines: Mutex<HashMap<String, Arc<wgpu::ComputePipeline>>>,
    /// With `ENGINE_TRACE_PIPELINES` set: the pipeline created last, timed
    /// at its first dispatch (see `trace_first_dispatch`).
    traced: Option<Mutex<Option<(String, f64)>>>,
    pool: BufferPool,
    rec: Mutex<Recorder>,
    variants: Variants,
    /// Per-dispatch timestamps while profiling (`profile_start`).
    profiler: Mutex<Option<profile::Profiler>>,
    /// The op whose dispatches are being recorded (profile label).
    scope: Mutex<Option<&'static str>>,
    /// The threads in a dry run (`Gpu::dry_run`), each with the kernels
    /// it has created so far; their dispatches are not recorded. Per
    /// thread, so that other threads sharing the device (tests) run as
    /// usual meanwhile.
    dry_runs: Mutex<HashMap<std::thread::ThreadId, Vec<DryKernel>>>,
}

fn this_thread() -> std::thread::ThreadId {
    std::thread::current().id()
}

/// A kernel as a dry run met it: what another device needs to compile it.
#[derive(Clone, Debug)]
pub struct KernelSource {
    pub key: String,
    pub wgsl: String,
    pub entry: String,
    /// The parameters of its first dispatch. lavapipe specialises a
    /// kernel to some of its uniform values when it compiles it, so a
    /// compile ahead of time must see the values the run will use.
    pub params: Vec<u32>,
}

struct DryKernel {
    source: KernelSource,
    pipeline: Arc<wgpu::ComputePipeline>,
    dispatched: bool,
}

fn backends() -> wgpu::Backends {
    if cfg!(target_arch = "wasm32") {
        wgpu::Backends::BROWSER_WEBGPU
    } else {
        wgpu::Backends::VULKAN | wgpu::Backends::METAL | wgpu::Backends::DX12
    }
}

/// The vec4 form of a shader written over `alias V = f32;` (see
/// `Gpu::dispatch_vec4`).
pub fn vec4_source(shader: &Shader) -> String {
    const SCALAR: &str = "alias V = f32;";
    assert!(
        shader.source.contains(SCALAR),
        "shader {} has no `{SCALAR}` line",
        shader.name
    );
    shader
        .source
        .replace(SCALAR, "alias V = vec4<f32>;")
        .replace("const LANES: u32 = 1u;", "const LANES: u32 = 4u;")
}

/// The shader's source with its line `const {name}: u32 = ...;` giving
/// `value` instead.
fn specialised_source(shader: &Shader, name: &str, value: u32) -> String {
    let prefix = format!("const {name}: u32 = ");
    let line = shader.source.lines().find(|l| l.starts_with(&prefix));
    let line = line.unwrap_or_else(|| panic!("shader {} has no `{prefix}` line", shader.name));
    shader
        .source
        .replacen(line, &format!("{prefix}{value}u;"), 1)
}

fn instance() -> wgpu::Instance {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
    desc.backends = wgpu::Backends::from_env().unwrap_or(backends());
    // A release build's flags in every build: wgpu's debug-build defaults
    // add debug information to each kernel's SPIR-V, so the tests would
    // run other SPIR-V than the binary ships, and Mesa would cache and
    // compile it apart (lavapipe: 0.1-60 s of LLVM per kernel).
    // WGPU_DEBUG=1 and WGPU_VALIDATION=1 still turn them on.
    desc.flags = wgpu::InstanceFlags::VALIDATION_INDIRECT_CALL.with_env();
    wgpu::Instance::new(desc)
}

#[cfg(not(target_arch = "wasm32"))]
fn rank(t: wgpu::DeviceType) -> u8 {
    match t {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 3,
        wgpu::DeviceType::Cpu => 4,
    }
}

#[cfg(not(target_arch = "wasm32"))]
fn sorted_adapters(instance: &wgpu::Instance) -> Vec<wgpu::Adapter> {
    let mut adapters = pollster::block_on(instance.enumerate_adapters(backends()));
    // Compute needs compute shaders; GL-only downlevel adapters are dropped.
    adapters.retain(|a| {
        a.get_downlevel_capabilities()
            .flags
            .contains(wgpu::DownlevelFlags::COMPUTE_SHADERS)
    });
    adapters.sort_by_key(|a| rank(a.get_info().device_type));
    adapters
}

/// Every adapter wgpu reaches, best first (discrete > integrated > CPU).
#[cfg(not(target_arch = "wasm32"))]
pub fn list_adapters() -> Vec<AdapterSummary> {
    sorted_adapters(&instance())
        .into_iter()
        .enumerate()
        .map(|(index, a)| AdapterSummary {
            index,
            info: a.get_info(),
            limits: a.limits(),
            timestamps: a.features().contains(wgpu::Features::TIMESTAMP_QUERY),
        })
        .collect()
}

/// Where the device's uncaptured errors and its loss go. Natively wgpu's
/// default for errors (a panic naming the error) stands; in a browser they
/// would only be logged, so they are kept for the next readback to report.
/// A lost device (a driver that cannot build a kernel loses it in wgpu)
/// turns every later call into a silent no-op, so its reason is kept too.
fn uncaptured_errors(device: &wgpu::Device) -> Arc<Mutex<Option<String>>> {
    let slot = Arc::new(Mutex::new(None));
    if cfg!(target_arch = "wasm32") {
        let keep = slot.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            keep.lock().unwrap().get_or_insert_with(|| e.to_string());
        }));
    }
    let keep = slot.clone();
    device.set_device_lost_callback(move |reason, message| {
        if reason != wgpu::DeviceLostReason::Destroyed {
            let lost = format!("the GPU device was lost: {message}");
            keep.lock().unwrap().get_or_insert(lost);
        }
    });
    slot
}

impl Gpu {
    /// Opens the best adapter, or the one named by `name` (a case-insensitive
    /// substring of its name, or its index in `engine devices`), or by the
    /// `ENGINE_ADAPTER` environment variable. Native only: it blocks.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn new(name: Option<&str>) -> Result<Gpu> {
        let instance = instance();
        let adapters = sorted_adapters(&instance);
        if adapters.is_empty() {
            return Err(EngineError::NoAdapter {
                hint: String::new(),
            });
        }
        let wanted = name
            .map(str::to_owned)
            .or_else(|| std::env::var(ADAPTER_ENV).ok().filter(|s| !s.is_empty()));
        let adapter = match wanted {
            None => adapters.into_iter().next().unwrap(),
            Some(w) => {
                let by_index = w.parse::<usize>().ok();
                let lw = w.to_lowercase();
                adapters
                    .into_iter()
                    .enumerate()
                    .find(|(i, a)| {
                        Some(*i) == by_index || a.get_info().name.to_lowercase().contains(&lw)
                    })
                    .map(|(_, a)| a)
                    .ok_or(EngineError::AdapterNotFound(w))?
            }
        };
        pollster::block_on(Self::open(adapter))
    }

    /// Opens the adapter the platform prefers for high performance: the
    /// only way in a browser, where adapters cannot be listed.
    pub async fn request() -> Result<Gpu> {
        let adapter = instance()
            .request_adapter(&wgpu::RequestAdapterOptions {
                power_preference: wgpu::PowerPreference::HighPerformance,
                ..Default::default()
            })
            .await
            .map_err(|e| EngineError::NoAdapter {
                hint: format!(" ({e})"),
            })?;
        Self::open(adapter).await
    }

    async fn open(adapter: wgpu::Adapter) -> Result<Gpu> {
        let info = adapter.get_info();
        // Ask for everything the adapter has, not wgpu's portable defaults:
        // the binding size and workgroup storage decide how work is split.
        let limits = adapter.limits();
        let mut features = wgpu::Features::empty();
        let timestamps = adapter.features().contains(wgpu::Features::TIMESTAMP_QUERY);
        if timestamps {
            features |= wgpu::Features::TIMESTAMP_QUERY;
        }
        // Browsers want `enable subgroups;`, which naga does not parse yet.
        let fixed = info.subgroup_min_size == info.subgroup_max_size;
        let native = cfg!(not(target_arch = "wasm32"));
        let subgroup = (native && fixed && adapter.features().contains(wgpu::Features::SUBGROUP))
            .then_some(info.subgroup_min_size as usize);
        if subgroup.is_some() {
            features |= wgpu::Features::SUBGROUP;
        }
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("engine"),
                required_features: features,
                required_limits: limits.clone(),
                experimental_features: wgpu::ExperimentalFeatures::disabled(),
                memory_hints: wgpu::MemoryHints::Performance,
                trace: wgpu::Trace::Off,
            })
            .await
            .map_err(|e| EngineError::Device {
                adapter: info.name.clone(),
                reason: e.to_string(),
            })?;
        let uncaptured = uncaptured_errors(&device);
        let params_buf = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("params arena"),
            size: PARAM_SLOT * PARAM_SLOTS,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let binding_limit = limits
            .max_storage_buffer_binding_size
            .min(limits.max_buffer_size);
        let mode = TuneMode::from_env(info.device_type == wgpu::DeviceType::Cpu)
            .map_err(EngineError::Gpu)?;
        let variants = Variants::new(mode, &info.name, &info.driver_info);
        let uniform_operands =
            info.device_type == wgpu::DeviceType::Cpu && uniform_operands_fit(&limits);
        let texel_operands =
            info.device_type == wgpu::DeviceType::Cpu && texels::texel_operands_fit(&limits);
        let lavapipe = [&info.name, &info.driver]
            .iter()
            .any(|s| s.to_lowercase().contains("llvmpipe"));
        Ok(Gpu {
            loop_budget: if lavapipe {
                LOOP_BUDGET
            } else {
                GPU_LOOP_BUDGET
            },
            variants,
            profiler: Mutex::new(None),
            scope: Mutex::new(None),
            dry_runs: Mutex::new(HashMap::new()),
            pool: BufferPool::new(device.clone()),
            device,
            queue,
            info,
            limits,
            timestamps,
            subgroup,
            subgroup_loads: true.into(),
            binding_limit: AtomicU64::new(binding_limit),
            uniform_operands: uniform_operands.into(),
            texel_operands: texel_operands.into(),
            texel_stores: Mutex::new(HashMap::new()),
            pipelines: Mutex::new(HashMap::new()),
            uncaptured,
            traced: std::env::var_os("ENGINE_TRACE_PIPELINES").map(|_| Mutex::new(None)),
            rec: Mutex::new(Recorder {
                encoder: None,
                params: Vec::new(),
                params_buf,
                slots_used: 0,
                dispatches: 0,
                submits: 0,
            }),
        })
    }

    /// Loop iterations one invocation may run: lavapipe's limiter makes this
    /// a property of the adapter (`LOOP_BUDGET` there).
    pub fn loop_budget(&self) -> usize {
        self.loop_budget
    }

    /// The largest storage binding (bytes) that ops plan for.
    pub fn binding_limit(&self) -> u64 {
        self.binding_limit.load(Ordering::Relaxed)
    }

    /// Lowers (or restores) the binding size the ops assume. Never above the
    /// adapter's own limit.
    pub fn set_binding_limit(&self, bytes: u64) {
        let hw = self
            .limits
            .max_storage_buffer_binding_size
            .min(self.limits.max_buffer_size);
        self.binding_limit.store(bytes.min(hw), Ordering::Relaxed);
    }

    /// Whether kernels read small read-only operands through a uniform
    /// binding of `UNIFORM_OPERAND_BYTES`. On by default on CPU adapters:
    /// lavapipe loads a storage value lane by lane, each lane behind a
    /// branch, even when every lane reads the same address; a uniform
    /// value at a run-time offset is gathered lane by lane too, but
    /// without the branches (Mesa 22.3's gallivm loads once only at
    /// constant offsets; see `subgroup_size`). Tests turn it off to cover
    /// the storage path.
    pub fn uniform_operands(&self) -> bool {
        self.uniform_operands.load(Ordering::Relaxed)
    }

    pub fn set_uniform_operands(&self, on: bool) {
        let on = on && uniform_operands_fit(&self.limits);
        self.uniform_operands.store(on, Ordering::Relaxed);
    }

    /// Whether storage windows keep 4-element alignment (offsets are
    /// multiples of 16 bytes), so kernels may read aligned rows as vec4s.
    pub fn vec4_windows(&self) -> bool {
        self.limits
            .min_storage_buffer_offset_alignment
            .is_multiple_of(16)
    }

    /// Workgroups one dispatch may have along each axis.
    pub fn max_groups(&self) -> usize {
        self.limits.max_compute_workgroups_per_dimension as usize
    }

    /// Elements of f32 that one window may hold at any start offset.
    pub fn window_elems(&self) -> usize {
        let align = self.limits.min_storage_buffer_offset_alignment as u64;
        (self.binding_limit().saturating_sub(align) / 4) as usize
    }

    pub fn pool(&self) -> &BufferPool {
        &self.pool
    }

    /// The kernel variant chosen per shape (rules, cache, autotuning).
    pub fn variants(&self) -> &Variants {
        &self.variants
    }

    /// Replaces the variant choices (e.g. another tuning file).
    pub fn set_variants(&mut self, v: Variants) {
        self.variants = v;
    }

    /// The subgroup size kernels may count on to share loads, or None.
    /// A value every lane needs (a convolution's weight, a weight
    /// gradient's g) is then loaded by the lanes of a subgroup together,
    /// each its share, and passed to all by `subgroupBroadcast`: lavapipe
    /// (Mesa 22.3) loads a value at a run-time offset lane by lane even
    /// when every lane reads the same address (gallivm takes the one-load
    /// path for constant offsets only), so this makes one load of eight.
    /// On where the device has subgroups of one size (native builds);
    /// tests turn it off to cover the lane-by-lane loads.
    pub fn subgroup_size(&self) -> Option<usize> {
        self.subgroup
            .filter(|_| self.subgroup_loads.load(Ordering::Relaxed))
    }

    pub fn set_subgroup_loads(&self, on: bool) {
        self.subgroup_loads.store(on, Ordering::Relaxed);
    }

    /// Whether this adapter runs on the CPU (lavapipe, WARP, ...).
    pub fn is_cpu(&self) -> bool {
        self.info.device_type == wgpu::DeviceType::Cpu
    }

    /// Workgroups a dispatch needs to keep a CPU adapter busy: lavapipe
    /// runs each workgroup on one of its threads, one per CPU (two where
    /// the count is unknown, as in a browser).
    pub fn cpu_threads(&self) -> usize {
        std::thread::available_parallelism().map_or(2, |n| n.get())
    }

    /// Seconds per run of `f` (recorded work), over `iters` runs after
    /// everything before has finished: GPU timestamps where the adapter has
    /// them, else the wall clock of submit-and-wait. Native only (benchmarks).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn time(&self, iters: usize, f: &dyn Fn() -> Result<()>) -> Result<f64> {
        self.flush();
        self.wait()?;
        let start = web_time::Instant::now();
        let timer = self.timestamps.then(|| {
            let set = self.device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("timer"),
                ty: wgpu::QueryType::Timestamp,
                count: 2,
            });
            let resolve = self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("timer resolve"),
                size: 16,
                usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            });
            self.timestamp(&set, 0, true);
            (set, resolve)
        });
        for _ in 0..iters {
            f()?;
        }
        let secs = if let Some((set, resolve)) = &timer {
            self.timestamp(set, 1, false);
            self.resolve_timestamps(set, 2, resolve);
            let raw = self.read_bytes(&[(resolve, 16)])?.remove(0);
            let ticks: &[u64] = bytemuck::cast_slice(&raw);
            ticks[1].saturating_sub(ticks[0]) as f64
                * self.queue.get_timestamp_period() as f64
                * 1e-9
        } else {
            self.flush();
            self.wait()?;
            start.elapsed().as_secs_f64()
        };
        Ok(secs / iters.max(1) as f64)
    }

    fn pipeline(&self, k: &Kernel) -> Arc<wgpu::ComputePipeline> {
        let key = format!("{}:{}", k.shader.name, k.entry);
        self.pipeline_for(key, || k.shader.source.to_owned(), k.entry)
    }

    /// The pipeline cached under `key`, compiled from `source()` on first
    /// use. Generated kernels bake their shape constants into the source,
    /// so the key names every constant (one pipeline per specialisation).
    pub fn pipeline_for(
        &self,
        key: String,
        source: impl FnOnce() -> String,
        entry: &str,
    ) -> Arc<wgpu::ComputePipeline> {
        let mut cache = self.pipelines.lock().unwrap();
        if let Some(p) = cache.get(&key) {
            return p.clone();
        }
        if self.traced.is_some() {
            // Earlier work must not count towards this pipeline's time.
            self.flush();
            let _ = self.wait();
        }
        let created = web_time::Instant::now();
        let wgsl = source();
        let module = self
            .device
            .create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(&key),
                source: wgpu::ShaderSource::Wgsl(wgsl.as_str().into()),
            });
        let pipeline = Arc::new(self.device.create_compute_pipeline(
            &wgpu::ComputePipelineDescriptor {
                label: Some(&key),
                layout: None,
                module: &module,
                entry_point: Some(entry),
                compilation_options: Default::default(),
                cache: None,
            },
        ));
        if let Some(t) = &self.traced {
            *t.lock().unwrap() = Some((key.clone(), created.elapsed().as_secs_f64()));
        }
        self.assert_not_lost(&format!("after building kernel `{key}`"));
        if let Some(dry) = self.dry_runs.lock().unwrap().get_mut(&this_thread()) {
            dry.push(DryKernel {
                source: KernelSource {
                    key: key.clone(),
                    wgsl,
                    entry: entry.to_owned(),
                    params: Vec::new(),
                },
                pipeline: pipeline.clone(),
                dispatched: false,
            });
        }
        cache.insert(key, pipeline.clone());
        pipeline
    }

    /// Runs `f` dry: ops plan, allocate and create their pipelines as
    /// usual, but no dispatch is recorded (tensors keep whatever they
    /// held). Returns `f`'s result and the kernels it created and
    /// dispatched, in order of creation (those created before are not
    /// listed): what a computation needs, found without running it, so
    /// that another device can compile them first (drivers such as
    /// lavapipe compile at the first dispatch).
    pub fn dry_run<T>(&self, f: impl FnOnce() -> T) -> (T, Vec<KernelSource>) {
        self.dry_runs
            .lock()
            .unwrap()
            .insert(this_thread(), Vec::new());
        let out = f();
        let kernels = self.dry_runs.lock().unwrap().remove(&this_thread());
        let kernels = kernels
            .unwrap_or_default()
            .into_iter()
            .filter(|k| k.dispatched)
            .map(|k| k.source)
            .collect();
        (out, kernels)
    }

    /// Whether a dry run is on (nothing is dispatched, so nothing may be
    /// timed or read).
    pub fn in_dry_run(&self) -> bool {
        self.dry_runs.lock().unwrap().contains_key(&this_thread())
    }

    /// Whether `ENGINE_TRACE_PIPELINES` times each kernel's first dispatch.
    pub fn traces_pipelines(&self) -> bool {
        self.traced.is_some()
    }

    /// Prints the pipeline created last with its creation time and the
    /// wall time of its first dispatch, run alone. Drivers that compile
    /// at first use (lavapipe's LLVM) spend their compile there, so this
    /// is how a first run's compile time is found kernel by kernel.
    fn trace_first_dispatch(&self) {
        let Some(t) = &self.traced else { return };
        let Some((key, create_s)) = t.lock().unwrap().take() else {
            return;
        };
        let started = web_time::Instant::now();
        self.flush();
        let _ = self.wait();
        eprintln!(
            "pipeline {key}: created in {:.0} ms, first dispatch {:.0} ms",
            create_s * 1e3,
            started.elapsed().as_secs_f64() * 1e3
        );
    }

    /// Allocates an uninitialised tensor from the pool.
    pub fn empty(&self, shape: &[usize]) -> Result<Tensor> {
        let numel: usize = shape.iter().product();
        let bytes = (numel.max(1) * 4) as u64;
        if bytes > self.limits.max_buffer_size {
            return Err(EngineError::TooLarge {
                op: "alloc",
                detail: format!(
                    "tensor {shape:?} needs {bytes} bytes, more than the adapter's max buffer size {}",
                    self.limits.max_buffer_size
                ),
            });
        }
        Ok(Tensor::new(Arc::new(self.pool.get(bytes)), shape.to_vec()))
    }

    /// A tensor filled with zeros (cleared inside the command stream).
    pub fn zeros(&self, shape: &[usize]) -> Result<Tensor> {
        let t = self.empty(shape)?;
        self.clear(&t);
        Ok(t)
    }

    /// Uploads host data into a new tensor. The copy is recorded in the
    /// command stream, so it is ordered after everything recorded before it.
    pub fn upload(&self, shape: &[usize], data: &[f32]) -> Result<Tensor> {
        let numel: usize = shape.iter().product();
        if numel != data.len() {
            return crate::error::shape_err(
                "upload",
                format!("shape {shape:?} holds {numel} values, got {}", data.len()),
            );
        }
        let t = self.empty(shape)?;
        if numel > 0 {
            self.write(&t, data);
        }
        Ok(t)
    }

    /// Natively only a lost device lands in `uncaptured`; every later call
    /// would then fail without saying why, so this says it, with `when`.
    fn assert_not_lost(&self, when: &str) {
        #[cfg(not(target_arch = "wasm32"))]
        if let Some(e) = self.uncaptured.lock().unwrap().as_ref() {
            panic!(
                "{e} ({when}, on {}). A driver that cannot build a kernel loses \
                 the device; ENGINE_TUNE=off keeps to the default kernels",
                self.info.name
            );
        }
        let _ = when;
    }

    /// Overwrites a tensor's contents from the host, in stream order.
    pub fn write(&self, t: &Tensor, data: &[f32]) {
        self.assert_not_lost("before an upload");
        assert_eq!(t.numel(), data.len(), "write: length mismatch");
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("upload"),
            size: t.bytes(),
            usage: wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: true,
        });
        staging
            .slice(..)
            .get_mapped_range_mut()
            .expect("a buffer mapped at creation has a mapped range")
            .copy_from_slice(bytemuck::cast_slice(data));
        staging.unmap();
        let mut rec = self.rec.lock().unwrap();
        let enc = self.encoder(&mut rec);
        enc.copy_buffer_to_buffer(&staging, 0, t.buffer(), 0, t.bytes());
    }

    /// Copies `src` into `dst` (same number of elements), in stream order.
    pub fn copy(&self, src: &Tensor, dst: &Tensor) {
        assert_eq!(src.numel(), dst.numel(), "copy: length mismatch");
        let mut rec = self.rec.lock().unwrap();
        let enc = self.encoder(&mut rec);
        enc.copy_buffer_to_buffer(src.buffer(), 0, dst.buffer(), 0, src.bytes());
    }

    /// Submits everything recorded and reads `t` back once the GPU is done.
    pub async fn read_async(&self, t: &Tensor) -> Result<Vec<f32>> {
        Ok(self
            .read_many_async(&[t])
            .await?
            .pop()
            .expect("one tensor read"))
    }

    /// Reads several tensors with one submit and one wait.
    pub async fn read_many_async(&self, ts: &[&Tensor]) -> Result<Vec<Vec<f32>>> {
        let srcs: Vec<_> = ts.iter().map(|t| (t.buffer(), t.bytes())).collect();
        Ok(self
            .read_bytes_async(&srcs)
            .await?
            .into_iter()
            .map(|b| bytemuck::pod_collect_to_vec::<u8, f32>(&b))
            .collect())
    }

    /// Copies the first `bytes` of each buffer into one staging buffer (in
    /// stream order), submits, and returns the bytes once they are mapped.
    /// On native adapters the map completes inside `wait`; in a browser the
    /// event loop completes it while the caller awaits.
    pub async fn read_bytes_async(&self, srcs: &[(&wgpu::Buffer, u64)]) -> Result<Vec<Vec<u8>>> {
        // Offsets into the staging buffer keep wgpu's map alignment.
        let mut offsets = Vec::with_capacity(srcs.len());
        let mut total = 0u64;
        for (_, bytes) in srcs {
            offsets.push(total);
            total += bytes.next_multiple_of(wgpu::MAP_ALIGNMENT);
        }
        if total == 0 {
            return Ok(srcs.iter().map(|_| Vec::new()).collect());
        }
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size: total,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        {
            let mut rec = self.rec.lock().unwrap();
            let enc = self.encoder(&mut rec);
            for ((src, bytes), off) in srcs.iter().zip(&offsets) {
                if *bytes > 0 {
                    enc.copy_buffer_to_buffer(src, 0, &staging, *off, *bytes);
                }
            }
        }
        self.flush();
        let (tx, rx) = futures_channel::oneshot::channel();
        staging.map_async(wgpu::MapMode::Read, .., move |r| {
            let _ = tx.send(r);
        });
        self.wait()?;
        rx.await
            .map_err(|_| EngineError::Gpu("readback dropped before it was mapped".into()))?
            .map_err(|e| EngineError::Gpu(format!("readback map failed: {e}")))?;
        if let Some(e) = self.uncaptured.lock().unwrap().clone() {
            return Err(EngineError::Gpu(e));
        }
        let out = {
            let view = staging
                .get_mapped_range(..)
                .map_err(|e| EngineError::Gpu(format!("readback view failed: {e}")))?;
            srcs.iter()
                .zip(&offsets)
                .map(|((_, bytes), off)| view[*off as usize..(off + bytes) as usize].to_vec())
                .collect()
        };
        staging.unmap();
        Ok(out)
    }

    /// [`Gpu::read_async`], waited on (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn read(&self, t: &Tensor) -> Result<Vec<f32>> {
        pollster::block_on(self.read_async(t))
    }

    /// [`Gpu::read_many_async`], waited on (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn read_many(&self, ts: &[&Tensor]) -> Result<Vec<Vec<f32>>> {
        pollster::block_on(self.read_many_async(ts))
    }

    /// [`Gpu::read_bytes_async`], waited on (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn read_bytes(&self, srcs: &[(&wgpu::Buffer, u64)]) -> Result<Vec<Vec<u8>>> {
        pollster::block_on(self.read_bytes_async(srcs))
    }

    /// Zeroes a tensor in stream order.
    pub fn clear(&self, t: &Tensor) {
        let mut rec = self.rec.lock().unwrap();
        let enc = self.encoder(&mut rec);
        enc.clear_buffer(t.buffer(), 0, Some(t.bytes()));
    }

    /// Blocks until the GPU is idle (in a browser: returns at once; work
    /// completes on the event loop).
    pub fn wait(&self) -> Result<()> {
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map(|_| ())
            .map_err(|e| EngineError::Gpu(format!("device poll failed: {e}")))
    }

    /// Submits what has been recorded (no wait).
    pub fn flush(&self) {
        let mut rec = self.rec.lock().unwrap();
        self.submit(&mut rec);
    }

    fn submit(&self, rec: &mut Recorder) {
        let mut prof = self.profiler.lock().unwrap();
        self.submit_profiled(rec, prof.as_mut());
    }

    fn submit_profiled(&self, rec: &mut Recorder, prof: Option<&mut profile::Profiler>) {
        if let Some(p) = prof
            && let Some(enc) = rec.encoder.as_mut()
        {
            p.resolve(&self.device, enc);
        }
        if let Some(enc) = rec.encoder.take() {
            if !rec.params.is_empty() {
                self.queue.write_buffer(&rec.params_buf, 0, &rec.params);
            }
            self.queue.submit([enc.finish()]);
            rec.submits += 1;
            rec.params.clear();
            rec.slots_used = 0;
        }
    }

    fn encoder<'r>(&self, rec: &'r mut Recorder) -> &'r mut wgpu::CommandEncoder {
        rec.encoder.get_or_insert_with(|| {
            self.device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None })
        })
    }

    /// Records one dispatch of `kernel` with `params` (the shader's uniform
    /// `Params` struct, as 32-bit words, bound at binding 0) and storage
    /// `windows` at the given binding numbers. `threads` invocations are launched in
    /// workgroups of `kernel.workgroup`, on a 2-D grid when one dimension is
    /// not enough; shaders index with `gid.x + gid.y * nwg.x * WG`.
    pub fn dispatch(
        &self,
        kernel: &Kernel,
        params: &[u32],
        windows: &[(u32, &Window)],
        threads: usize,
    ) {
        self.dispatch_on(&self.pipeline(kernel), kernel, params, windows, threads);
    }

    /// `dispatch` of the kernel's vec4 form: its shader with
    /// `alias V = f32;` (and `const LANES: u32 = 1u;`, where present) made
    /// vec4, so `threads` counts vec4 items and the caller gives lengths and
    /// offsets in vec4s. Callers check that every length and offset is a
    /// multiple of 4 elements and that `Gpu::vec4_windows` holds.
    pub fn dispatch_vec4(
        &self,
        kernel: &Kernel,
        params: &[u32],
        windows: &[(u32, &Window)],
        threads: usize,
    ) {
        self.dispatch_on(
            &self.vec4_pipeline(kernel),
            kernel,
            params,
            windows,
            threads,
        );
    }

    /// The pipeline of `kernel`'s vec4 form (see `dispatch_vec4`).
    fn vec4_pipeline(&self, kernel: &Kernel) -> Arc<wgpu::ComputePipeline> {
        let key = format!("{}:{}:vec4", kernel.shader.name, kernel.entry);
        self.pipeline_for(key, || vec4_source(kernel.shader), kernel.entry)
    }

    /// `dispatch` of the kernel with its shader's `const {name}: u32` set
    /// to `value` (one pipeline per value), so that loops over it unroll
    /// and indices derived from it are constants.
    pub fn dispatch_specialised(
        &self,
        kernel: &Kernel,
        (name, value): (&str, u32),
        params: &[u32],
        windows: &[(u32, &Window)],
        threads: usize,
    ) {
        let key = format!("{}:{}:{name}={value}", kernel.shader.name, kernel.entry);
        let source = || specialised_source(kernel.shader, name, value);
        let pipeline = self.pipeline_for(key, source, kernel.entry);
        self.dispatch_on(&pipeline, kernel, params, windows, threads);
    }

    /// Records `kernel` (its vec4 form with `vec4`) over `planes` planes
    /// of `items` items each: workgroups along x (and z) cover a plane's
    /// items, one row of them per plane along y, so that what depends on
    /// the plane (its channel) comes from the workgroup, without a
    /// division per lane. Shaders take the item as
    /// `(wid.x + wid.z * nwg.x) * WG + lid` and the plane as `wid.y`.
    pub fn dispatch_planes(
        &self,
        kernel: &Kernel,
        vec4: bool,
        params: &[u32],
        windows: &[(u32, &Window)],
        (items, planes): (usize, usize),
    ) {
        let pipeline = match vec4 {
            true => self.vec4_pipeline(kernel),
            false => self.pipeline(kernel),
        };
        let flat = items.div_ceil(kernel.workgroup as usize) as u64;
        let label = kernel.shader.name;
        let planes = u32::try_from(planes).expect("planes per dispatch exceed u32");
        self.record_grid(
            &pipeline,
            (label, kernel.entry),
            params,
            (windows, &[]),
            (flat, planes),
        );
    }

    fn dispatch_on(
        &self,
        pipeline: &wgpu::ComputePipeline,
        kernel: &Kernel,
        params: &[u32],
        windows: &[(u32, &Window)],
        threads: usize,
    ) {
        if threads == 0 {
            return;
        }
        let groups = threads.div_ceil(kernel.workgroup as usize) as u64;
        let max = self.limits.max_compute_workgroups_per_dimension as u64;
        let (gx, gy) = if groups <= max {
            (groups, 1)
        } else {
            (max, groups.div_ceil(max))
        };
        assert!(gy <= max, "dispatch of {threads} invocations is too large");
        self.record(
            pipeline,
            (kernel.shader.name, kernel.entry),
            params,
            (windows, &[]),
            [gx as u32, gy as u32, 1],
        );
    }

    /// Records one dispatch of a generated pipeline: `flat` workgroups along
    /// a flattened x axis (split into x and z when one dimension is not
    /// enough; shaders use `wid.x + wid.z * nwg.x`) times `y` workgroups
    /// along y (kept separate so that it is uniform within a workgroup).
    pub fn dispatch_grid(
        &self,
        pipeline: &wgpu::ComputePipeline,
        label: &str,
        params: &[u32],
        (windows, texels): Operands,
        flat: u64,
        y: u32,
    ) {
        self.record_grid(
            pipeline,
            (label, label),
            params,
            (windows, texels),
            (flat, y),
        );
    }

    /// `dispatch_grid` with the profile's two names given apart.
    fn record_grid(
        &self,
        pipeline: &wgpu::ComputePipeline,
        names: (&str, &str),
        params: &[u32],
        operands: Operands,
        (flat, y): (u64, u32),
    ) {
        if flat == 0 || y == 0 {
            return;
        }
        let max = self.limits.max_compute_workgroups_per_dimension as u64;
        let (gx, gz) = if flat <= max {
            (flat, 1)
        } else {
            (max, flat.div_ceil(max))
        };
        assert!(
            gz <= max && y as u64 <= max,
            "dispatch of {flat}x{y} workgroups is too large"
        );
        self.record(pipeline, names, params, operands, [gx as u32, y, gz as u32]);
    }

    /// `label`: (the op or shader, the kernel), kept as "op|kernel" in
    /// profiles, with an enclosing `scope` replacing the op.
    fn record(
        &self,
        pipeline: &wgpu::ComputePipeline,
        (op, kernel): (&str, &str),
        params: &[u32],
        (windows, texels): Operands,
        groups: [u32; 3],
    ) {
        assert!(params.len() * 4 <= PARAM_SLOT as usize);
        if let Some(dry) = self.dry_runs.lock().unwrap().get_mut(&this_thread()) {
            let first = dry
                .iter_mut()
                .find(|k| !k.dispatched && std::ptr::eq(Arc::as_ptr(&k.pipeline), pipeline));
            if let Some(k) = first {
                k.source.params = params.to_vec();
                k.dispatched = true;
            }
            return;
        }
        let mut rec = self.rec.lock().unwrap();
        if rec.slots_used == PARAM_SLOTS {
            self.submit(&mut rec);
        }
        let slot = rec.slots_used;
        rec.slots_used += 1;
        rec.dispatches += 1;
        rec.params.resize((slot * PARAM_SLOT) as usize, 0);
        rec.params.extend_from_slice(bytemuck::cast_slice(params));
        rec.params.resize(((slot + 1) * PARAM_SLOT) as usize, 0);

        let layout = pipeline.get_bind_group_layout(0);
        let mut entries = vec![wgpu::BindGroupEntry {
            binding: 0,
            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: &rec.params_buf,
                offset: slot * PARAM_SLOT,
                size: wgpu::BufferSize::new(PARAM_SLOT),
            }),
        }];
        for (binding, w) in windows {
            entries.push(wgpu::BindGroupEntry {
                binding: *binding,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: w.buffer,
                    offset: w.offset,
                    size: wgpu::BufferSize::new(w.size.max(4)),
                }),
            });
        }
        for (binding, view) in texels {
            entries.push(wgpu::BindGroupEntry {
                binding: *binding,
                resource: wgpu::BindingResource::TextureView(view),
            });
        }
        let bind_group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &layout,
            entries: &entries,
        });
        let op = self.scope.lock().unwrap().unwrap_or(op);
        let mut prof = self.profiler.lock().unwrap();
        if prof
            .as_ref()
            .is_some_and(|p| p.labels.len() as u32 * 2 + 2 > profile::QUERIES)
        {
            self.submit_profiled(&mut rec, prof.as_mut());
        }
        // The "op|kernel" label is built only while profiling.
        let writes = prof
            .as_mut()
            .and_then(|p| p.next_writes(&format!("{op}|{kernel}")));
        let enc = self.encoder(&mut rec);
        let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some(op),
            timestamp_writes: writes,
        });
        pass.set_pipeline(pipeline);
        pass.set_bind_group(0, &bind_group, &[]);
        pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
        drop(pass);
        drop(prof);
        drop(rec);
        self.trace_first_dispatch();
    }

    /// Starts timing every dispatch (see `profile_finish`).
    pub fn profile_start(&self) -> Result<()> {
        if !self.timestamps {
            return Err(EngineError::Gpu(format!(
                "{} has no timestamp queries; per-kernel times are not available",
                self.info.name
            )));
        }
        self.flush();
        *self.profiler.lock().unwrap() = Some(profile::Profiler::new(&self.device));
        Ok(())
    }

    /// Stops timing and returns the GPU seconds per label since
    /// `profile_start`: "op|kernel", the op being the enclosing scope (a
    /// convolution's name, for all its kernels) or the shader's name.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn profile_finish(&self) -> Result<std::collections::BTreeMap<String, f64>> {
        self.flush();
        let Some(p) = self.profiler.lock().unwrap().take() else {
            return Ok(Default::default());
        };
        profile::read(
            &self.device,
            self.queue.get_timestamp_period() as f64,
            p.pending,
        )
        .map_err(EngineError::Gpu)
    }

    /// Runs `f` with its dispatches labelled `op` (for profiles); an outer
    /// scope wins over an inner one.
    pub fn scope<T>(&self, op: &'static str, f: impl FnOnce() -> T) -> T {
        let outer = self.scope.lock().unwrap().replace(op);
        if let Some(o) = outer {
            *self.scope.lock().unwrap() = Some(o);
        }
        let out = f();
        *self.scope.lock().unwrap() = outer;
        out
    }

    /// Dispatches and submits recorded since the Gpu was made.
    pub fn counters(&self) -> (u64, u64) {
        let rec = self.rec.lock().unwrap();
        (rec.dispatches, rec.submits)
    }

    /// Records an empty pass that writes a timestamp (`begin` or end slot).
    pub fn timestamp(&self, set: &wgpu::QuerySet, index: u32, begin: bool) {
        let mut rec = self.rec.lock().unwrap();
        let enc = self.encoder(&mut rec);
        let writes = wgpu::ComputePassTimestampWrites {
            query_set: set,
            beginning_of_pass_write_index: begin.then_some(index),
            end_of_pass_write_index: (!begin).then_some(index),
        };
        let _pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("timestamp"),
            timestamp_writes: Some(writes),
        });
    }

    /// Records a query resolve into `dst` (QUERY_RESOLVE | COPY_SRC buffer).
    pub fn resolve_timestamps(&self, set: &wgpu::QuerySet, count: u32, dst: &wgpu::Buffer) {
        let mut rec = self.rec.lock().unwrap();
        let enc = self.encoder(&mut rec);
        enc.resolve_query_set(set, 0..count, dst, 0);
    }

    /// A binding window over elements `[start, start + len)` of `t`. The
    /// buffer offset is aligned down to the adapter's storage-offset
    /// alignment; the returned element base is where `start` lies inside the
    /// window, and goes to the shader in its params.
    pub fn window<'a>(&self, t: &'a Tensor, start: usize, len: usize) -> (Window<'a>, u32) {
        let align = self.limits.min_storage_buffer_offset_alignment as u64;
        let start_b = start as u64 * 4;
        let offset = start_b / align * align;
        let base = ((start_b - offset) / 4) as u32;
        let size = (start_b + len as u64 * 4 - offset).max(4);
        debug_assert!(offset + size <= t.buffer().size());
        (
            Window {
                buffer: t.buffer(),
                offset,
                size,
            },
            base,
        )
    }
}
