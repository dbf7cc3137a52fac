//! `graph`: a small autograd tape over GPU tensors.
//!
//! The forward pass records one node per op (when training) and returns a
//! `Var` per output. `backward` walks the nodes in reverse, adds gradients
//! where a value feeds two ops (the residual joins), accumulates parameter
//! gradients into the model's gradient tensors, and frees every saved
//! activation and gradient as soon as no remaining node needs it, so buffers
//! go back to the pool in lifetime order. Nothing is read back to the host.
use crate::error::Result;
use crate::gpu::{Gpu, Tensor};
use crate::ops::batchnorm::{self, BnParams};
use crate::ops::resize::Mode;
use crate::ops::{conv, elementwise, pool, reduce, resize};

/// A value in the graph.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Var(usize);

/// A trainable tensor and its gradient (owned by the model).
pub struct ParamRef<'a> {
    pub value: &'a Tensor,
    pub grad: &'a Tensor,
}

/// Batch-norm parameters and buffers of one layer.
pub struct BnRef<'a> {
    pub gamma: ParamRef<'a>,
    pub beta: ParamRef<'a>,
    pub running_mean: &'a Tensor,
    pub running_var: &'a Tensor,
}

enum Node {
    Conv {
        x: Var,
        y: Var,
        w: Tensor,
        dw: Tensor,
        db: Tensor,
        stride: usize,
        dil: usize,
    },
    Tconv {
        x: Var,
        y: Var,
        w: Tensor,
        dw: Tensor,
        db: Tensor,
        stride: usize,
    },
    Bn {
        x: Var,
        y: Var,
        gamma: Tensor,
        dgamma: Tensor,
        dbeta: Tensor,
        stats: Tensor,
    },
    Relu {
        y: Var,
        x: Var,
    },
    AddRelu {
        a: Var,
        b: Var,
        y: Var,
    },
    MaxPool {
        x: Var,
        y: Var,
        k: usize,
        s: usize,
    },
    Resize {
        x: Var,
        y: Var,
        mode: Mode,
        in_hw: (usize, usize),
    },
}

impl Node {
    /// The value the backward pass of this node reads, if any.
    fn saved(&self) -> Option<Var> {
        match self {
            Node::Conv { x, .. }
            | Node::Tconv { x, .. }
            | Node::Bn { x, .. }
            | Node::MaxPool { x, .. } => Some(*x),
            Node::Relu { y, .. } | Node::AddRelu { y, .. } => Some(*y),
            Node::Resize { .. } => None,
        }
    }

    /// The value this node produces.
    fn output(&self) -> Var {
        match self {
            Node::Conv { y, .. }
            | Node::Tconv { y, .. }
            | Node::Bn { y, .. }
            | Node::Relu { y, .. }
            | Node::AddRelu { y, .. }
            | Node::MaxPool { y, .. }
            | Node::Resize { y, .. } => *y,
        }
    }
}

pub struct Graph<'g> {
    gpu: &'g Gpu,
    /// Record nodes for backward (training); else values are freed as soon
    /// as the forward code says it is done with them.
    train: bool,
    nodes: Vec<Node>,
    vals: Vec<Option<Tensor>>,
    /// Per value, how many recorded nodes read it in backward.
    backward_reads: Vec<usize>,
    /// Compute the gradient of the first input too (gradient checks).
    pub input_grad: bool,
    /// Weight of the batch in the running batch-norm statistics when
    /// training (docs/MODEL.md: 0.01; `train::recompute_bn_stats` uses 1/k).
    pub bn_momentum: f32,
}

impl<'g> Graph<'g> {
    pub fn new(gpu: &'g Gpu, train: bool) -> Self {
        Graph {
            gpu,
            train,
            nodes: Vec::new(),
            vals: Vec::new(),
            backward_reads: Vec::new(),
            input_grad: false,
            bn_momentum: batchnorm::MOMENTUM,
        }
    }

    pub fn gpu(&self) -> &'g Gpu {
        self.gpu
    }

    pub fn training(&self) -> bool {
        self.train
    }

    pub fn input(&mut self, t: Tensor) -> Var {
        self.push(t)
    }

    fn push(&mut self, t: Tensor) -> Var {
        self.vals.push(Some(t));
        self.backward_reads.push(0);
        Var(self.vals.len() - 1)
    }

    fn record(&mut self, node: Node) {
        if let Some(v) = node.saved() {
            self.backward_reads[v.0] += 1;
        }
        self.nodes.push(node);
    }

    /// The tensor of a value that is still alive.
    pub fn value(&self, v: Var) -> &Tensor {
        self.vals[v.0]
            .as_ref()
            .expect("value used after it was freed")
    }

    /// Takes a value out of the graph (e.g. the network output).
    pub fn take(&mut self, v: Var) -> Tensor {
        self.vals[v.0].take().expect("value already taken")
    }

    /// The forward code will not read `v` again: free it unless a recorded
    /// node's backward needs it.
    pub fn done(&mut self, v: Var) {
        if self.backward_reads[v.0] == 0 {
            self.vals[v.0] = None;
        }
    }

    pub fn conv(
        &mut self,
        x: Var,
        w: &ParamRef,
        b: &ParamRef,
        stride: usize,
        dil: usize,
    ) -> Result<Var> {
        let y = conv::conv2d(self.gpu, self.value(x), w.value, b.value, stride, dil)?;
        let y = self.push(y);
        if self.train {
            self.record(Node::Conv {
                x,
                y,
                w: w.value.clone(),
                dw: w.grad.clone(),
                db: b.grad.clone(),
                stride,
                dil,
            });
        }
        Ok(y)
    }

    pub fn tconv(&mut self, x: Var, w: &ParamRef, b: &ParamRef, stride: usize) -> Result<Var> {
        let y = conv::tconv2d(self.gpu, self.value(x), w.value, b.value, stride)?;
        let y = self.push(y);
        if self.train {
            self.record(Node::Tconv {
                x,
                y,
                w: w.value.clone(),
                dw: w.grad.clone(),
                db: b.grad.clone(),
                stride,
            });
        }
        Ok(y)
    }

    /// Batch norm: batch statistics and a running-statistics update when
    /// training, running statistics otherwise.
    pub fn bn(&mut self, x: Var, p: &BnRef) -> Result<Var> {
        let params = BnParams {
            gamma: p.gamma.value,
            beta: p.beta.value,
            running_mean: p.running_mean,
            running_var: p.running_var,
        };
        if !self.train {
            let y = batchnorm::batchnorm_infer(self.gpu, self.value(x), &params)?;
            return Ok(self.push(y));
        }
        let (y, stats) =
            batchnorm::batchnorm_train(self.gpu, self.value(x), &params, Some(self.bn_momentum))?;
        let y = self.push(y);
        self.record(Node::Bn {
            x,
            y,
            gamma: p.gamma.value.clone(),
            dgamma: p.gamma.grad.clone(),
            dbeta: p.beta.grad.clone(),
            stats,
        });
        Ok(y)
    }

    pub fn relu(&mut self, x: Var) -> Result<Var> {
        let y = elementwise::relu(self.gpu, self.value(x))?;
        let y = self.push(y);
        if self.train {
            self.record(Node::Relu { y, x });
        }
        Ok(y)
    }

    /// relu(a + b).
    pub fn add_relu(&mut self, a: Var, b: Var) -> Result<Var> {
        let y = elementwise::add_relu(self.gpu, self.value(a), self.value(b))?;
        let y = self.push(y);
        if self.train {
            self.record(Node::AddRelu { a, b, y });
        }
        Ok(y)
    }

    pub fn maxpool(&mut self, x: Var, k: usize, s: usize) -> Result<Var> {
        let y = pool::maxpool2d(self.gpu, self.value(x), k, s)?;
        let y = self.push(y);
        if self.train {
            self.record(Node::MaxPool { x, y, k, s });
        }
        Ok(y)
    }

    pub fn resize(&mut self, x: Var, h: usize, w: usize, mode: Mode) -> Result<Var> {
        let xt = self.value(x);
        let in_hw = (xt.shape()[2], xt.shape()[3]);
        let y = resize::resize(self.gpu, xt, h, w, mode)?;
        let y = self.push(y);
        if self.train {
            self.record(Node::Resize { x, y, mode, in_hw });
        }
        Ok(y)
    }

    /// Backpropagates `dy` from `out`, adding parameter gradients into the
    /// gradient tensors given at record time. Returns the gradient of the
    /// graph's first input (for gradient checks), when it was reached.
    pub fn backward(mut self, out: Var, dy: Tensor) -> Result<Option<Tensor>> {
        let gpu = self.gpu;
        let mut grads: Vec<Option<Tensor>> = vec![None; self.vals.len()];
        grads[out.0] = Some(dy);
        let nodes = std::mem::take(&mut self.nodes);
        for node in nodes.into_iter().rev() {
            if let Some(g) = grads[node.output().0].take() {
                match &node {
                    Node::Conv {
                        x,
                        w,
                        dw,
                        db,
                        stride,
                        dil,
                        ..
                    } => {
                        let xt = self.value(*x);
                        let (h, wd) = (xt.shape()[2], xt.shape()[3]);
                        conv::conv2d_backward_weight(gpu, &g, xt, dw, *stride, *dil, true)?;
                        reduce::channel_sum(gpu, &g, db, true)?;
                        // The network input needs no gradient unless asked.
                        if x.0 != 0 || self.input_grad {
                            let dx =
                                conv::conv2d_backward_input(gpu, &g, w, (h, wd), *stride, *dil)?;
                            accumulate(gpu, &mut grads, *x, dx)?;
                        }
                    }
                    Node::Tconv {
                        x,
                        w,
                        dw,
                        db,
                        stride,
                        ..
                    } => {
                        let xt = self.value(*x);
                        conv::tconv2d_backward_weight(gpu, &g, xt, dw, *stride, true)?;
                        reduce::channel_sum(gpu, &g, db, true)?;
                        let dx = conv::tconv2d_backward_input(gpu, &g, w, *stride)?;
                        accumulate(gpu, &mut grads, *x, dx)?;
                    }
                    Node::Bn {
                        x,
                        gamma,
                        dgamma,
                        dbeta,
                        stats,
                        ..
                    } => {
                        let dx = batchnorm::batchnorm_backward(
                            gpu,
                            self.value(*x),
                            &g,
                            gamma,
                            stats,
                            dgamma,
                            dbeta,
                            true,
                        )?;
                        accumulate(gpu, &mut grads, *x, dx)?;
                    }
                    Node::Relu { y, x } => {
                        let dx = elementwise::relu_backward(gpu, self.value(*y), &g)?;
                        accumulate(gpu, &mut grads, *x, dx)?;
                    }
                    Node::AddRelu { a, b, y } => {
                        let d = elementwise::relu_backward(gpu, self.value(*y), &g)?;
                        accumulate(gpu, &mut grads, *a, d.clone())?;
                        accumulate(gpu, &mut grads, *b, d)?;
                    }
                    Node::MaxPool { x, k, s, .. } => {
                        let dx = pool::maxpool2d_backward(gpu, self.value(*x), &g, *k, *s)?;
                        accumulate(gpu, &mut grads, *x, dx)?;
                    }
                    Node::Resize { x, mode, in_hw, .. } => {
                        let dx = resize::resize_backward(gpu, &g, in_hw.0, in_hw.1, *mode)?;
                        accumulate(gpu, &mut grads, *x, dx)?;
                    }
                }
            }
            if let Some(v) = node.saved() {
                self.backward_reads[v.0] -= 1;
                if self.backward_reads[v.0] == 0 {
                    self.vals[v.0] = None;
                }
            }
        }
        Ok(grads[0].take())
    }
}

/// grads[v] += g. In place when the existing gradient's buffer is not
/// shared (AddRelu hands one tensor to both of its inputs), else into a new
/// tensor, so no other value's gradient changes under it.
fn accumulate(gpu: &Gpu, grads: &mut [Option<Tensor>], v: Var, g: Tensor) -> Result<()> {
    match grads[v.0].take() {
        None => grads[v.0] = Some(g),
        Some(existing) if existing.is_shared() => {
            grads[v.0] = Some(elementwise::add(gpu, &existing, &g)?)
        }
        Some(existing) => {
            elementwise::axpy(gpu, 1.0, &g, &existing)?;
            grads[v.0] = Some(existing);
        }
    }
    Ok(())
}
