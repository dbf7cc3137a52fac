//! A GPU tensor: a shape and a pooled buffer. Cloning shares the buffer; the
//! buffer returns to the pool when the last clone is dropped.
use super::PooledBuffer;
use std::sync::Arc;

#[derive(Clone)]
pub struct Tensor {
    buf: Arc<PooledBuffer>,
    shape: Vec<usize>,
}

impl Tensor {
    pub(crate) fn new(buf: Arc<PooledBuffer>, shape: Vec<usize>) -> Self {
        Self { buf, shape }
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
        Tensor {
            buf: self.buf.clone(),
            shape: shape.to_vec(),
        }
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
