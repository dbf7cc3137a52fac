//! A GPU tensor: a shape and a pooled buffer. Cloning shares the buffer; the
//! buffer returns to the pool when the last clone is dropped.
use super::PooledBuffer;
use crate::error::Result;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Tensors computed from a frozen tensor, by what they are (see
/// `Tensor::derived`).
type Derived = Arc<Mutex<HashMap<String, Tensor>>>;

#[derive(Clone)]
pub struct Tensor {
    buf: Arc<PooledBuffer>,
    shape: Vec<usize>,
    /// Present on a frozen tensor (`frozen`), shared by its clones.
    derived: Option<Derived>,
}

impl Tensor {
    pub(crate) fn new(buf: Arc<PooledBuffer>, shape: Vec<usize>) -> Self {
        Self {
            buf,
            shape,
            derived: None,
        }
    }

    /// The same tensor, promised never to be written again (an inference
    /// model's weights): ops may then keep what they compute from it and
    /// reuse it (`derived`), such as a convolution's re-laid weights, which
    /// otherwise cost a dispatch per layer and run.
    pub fn frozen(&self) -> Tensor {
        Tensor {
            derived: Some(self.derived.clone().unwrap_or_default()),
            ..self.clone()
        }
    }

    /// `make()`, computed once per `key` for a frozen tensor and kept as
    /// long as it lives; for any other tensor, and inside a dry run (which
    /// records nothing, so its result holds no data), computed every time.
    pub(crate) fn derived(
        &self,
        dry_run: bool,
        key: impl FnOnce() -> String,
        make: impl FnOnce() -> Result<Tensor>,
    ) -> Result<Tensor> {
        let Some(cache) = self.derived.as_ref().filter(|_| !dry_run) else {
            return make();
        };
        let key = key();
        if let Some(t) = cache.lock().unwrap().get(&key) {
            return Ok(t.clone());
        }
        // Not under the lock: `make` records GPU work.
        let t = make()?;
        cache.lock().unwrap().insert(key, t.clone());
        Ok(t)
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Bytes of data (not of the pooled buffer, which may be larger).
    pub fn bytes(&self) -> u64 {
        (self.numel() * 4) as u64
    }

    pub fn buffer(&self) -> &wgpu::Buffer {
        self.buf.buffer()
    }

    /// The same buffer seen with another shape of equal size.
    pub fn reshape(&self, shape: &[usize]) -> Tensor {
        assert_eq!(shape.iter().product::<usize>(), self.numel(), "reshape");
        // What was derived from the old shape may not fit the new one.
        Tensor::new(self.buf.clone(), shape.to_vec())
    }

    /// Whether another tensor shares this buffer.
    pub fn is_shared(&self) -> bool {
        Arc::strong_count(&self.buf) > 1
    }

    /// Whether two tensors share a buffer.
    pub fn same_buffer(&self, other: &Tensor) -> bool {
        Arc::ptr_eq(&self.buf, &other.buf)
    }

    /// (N, C, H, W) of a 4-D tensor.
    pub fn nchw(&self) -> (usize, usize, usize, usize) {
        assert_eq!(self.shape.len(), 4, "expected NCHW, got {:?}", self.shape);
        (self.shape[0], self.shape[1], self.shape[2], self.shape[3])
    }
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tensor{:?}", self.shape)
    }
}
