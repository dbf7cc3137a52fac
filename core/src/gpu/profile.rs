//! Per-dispatch GPU time, for `engine bench --model`: while profiling is on,
//! every compute pass writes a timestamp at its start and end; each submit
//! resolves its queries into a staging buffer, and `finish` adds the
//! durations up per label.

/// Queries per set: wgpu's maximum, two per dispatch, so one set covers a
/// full recorder (2048 dispatches).
pub(super) const QUERIES: u32 = 4096;

pub(super) struct Profiler {
    pub set: wgpu::QuerySet,
    /// Labels of the dispatches recorded into `set` since the last submit.
    pub labels: Vec<String>,
    /// Resolved submits waiting to be read: (staging buffer, labels).
    pub pending: Vec<(wgpu::Buffer, Vec<String>)>,
}

impl Profiler {
    pub fn new(device: &wgpu::Device) -> Self {
        Profiler {
            set: device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("profile"),
                ty: wgpu::QueryType::Timestamp,
                count: QUERIES,
            }),
            labels: Vec::new(),
            pending: Vec::new(),
        }
    }

    /// The timestamp writes of the next dispatch, or `None` when the set is
    /// full (the caller submits first).
    pub fn next_writes(&mut self, label: &str) -> Option<wgpu::ComputePassTimestampWrites<'_>> {
        let i = self.labels.len() as u32 * 2;
        if i + 2 > QUERIES {
            return None;
        }
        self.labels.push(label.to_owned());
        Some(wgpu::ComputePassTimestampWrites {
            query_set: &self.set,
            beginning_of_pass_write_index: Some(i),
            end_of_pass_write_index: Some(i + 1),
        })
    }

    /// Records the resolve of this submit's queries into a new staging
    /// buffer.
    pub fn resolve(&mut self, device: &wgpu::Device, enc: &mut wgpu::CommandEncoder) {
        if self.labels.is_empty() {
            return;
        }
        let n = self.labels.len() as u32 * 2;
        let bytes = n as u64 * 8;
        let resolve = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("profile resolve"),
            size: bytes,
            usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        let staging = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("profile staging"),
            size: bytes,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        enc.resolve_query_set(&self.set, 0..n, &resolve, 0);
        enc.copy_buffer_to_buffer(&resolve, 0, &staging, 0, bytes);
        self.pending
            .push((staging, std::mem::take(&mut self.labels)));
    }
}

/// Seconds per label, summed over every profiled dispatch (blocks: native
/// only).
#[cfg(not(target_arch = "wasm32"))]
pub(super) fn read(
    device: &wgpu::Device,
    period_ns: f64,
    pending: Vec<(wgpu::Buffer, Vec<String>)>,
) -> Result<std::collections::BTreeMap<String, f64>, String> {
    let mut out = std::collections::BTreeMap::new();
    for (staging, labels) in pending {
        let (tx, rx) = std::sync::mpsc::channel();
        staging.map_async(wgpu::MapMode::Read, .., move |r| {
            let _ = tx.send(r);
        });
        device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| e.to_string())?;
        rx.recv()
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        {
            let view = staging.get_mapped_range(..).map_err(|e| e.to_string())?;
            let ticks: &[u64] = bytemuck::cast_slice(&view);
            for (i, label) in labels.iter().enumerate() {
                let dt = ticks[2 * i + 1].saturating_sub(ticks[2 * i]) as f64 * period_ns * 1e-9;
                *out.entry(label.clone()).or_insert(0.0) += dt;
            }
        }
        staging.unmap();
    }
    Ok(out)
}
