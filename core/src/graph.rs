//! `graph`: a small autograd tape over GPU tensors.
//!
//! The forward pass records one node per op (when training) and returns a
//! `Var` per output. Values free themselves: each value counts the forward
//! reads still to come (one when it is made, one more per `Graph::share`)
//! and the recorded nodes whose backward reads it; an op that reads a value
//! uses one read up, and the tensor goes back to the pool as soon as both
//! counts are zero. So in inference a value lives until the op that reads it
//! last, and in training until the backward pass no longer needs it.
//! `backward` walks the nodes in reverse, adds gradients where a value feeds
//! two ops (the residual joins) and accumulates parameter gradients into the
//! model's gradient tensors. Nothing is read back to the host.
use crate::error::{EngineError, Result};
use crate::gpu::{Gpu, Tensor};
use crate::ops::batchnorm::{self, BnParams, Then};
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

impl BnRef<'_> {
    fn params(&self) -> BnParams<'_> {
        BnParams {
            gamma: self.gamma.value,
            beta: self.beta.value,
            running_mean: self.running_mean,
            running_var: self.running_var,
        }
    }

    fn grad(&self, stats: Tensor) -> BnGrad {
        BnGrad {
            gamma: self.gamma.value.clone(),
            dgamma: self.gamma.grad.clone(),
            dbeta: self.beta.grad.clone(),
            stats,
        }
    }
}

/// What a batch-norm node's backward pass needs besides its values.
struct BnGrad {
    gamma: Tensor,
    dgamma: Tensor,
    dbeta: Tensor,
    stats: Tensor,
}

impl BnGrad {
    /// dx from dy, adding into dgamma and dbeta; through the ReLU whose
    /// output is `relu_out` when given.
    fn backward(
        &self,
        gpu: &Gpu,
        x: &Tensor,
        dy: &Tensor,
        relu_out: Option<&Tensor>,
    ) -> Result<Tensor> {
        let BnGrad {
            gamma,
            dgamma,
            dbeta,
            stats,
        } = self;
        batchnorm::batchnorm_backward(gpu, x, dy, relu_out, gamma, stats, dgamma, dbeta, true)
    }
}

/// One value: its tensor while alive, and what keeps it alive.
struct Slot {
    tensor: Option<Tensor>,
    /// Forward reads still to come: 1 when made, +1 per `Graph::share`,
    /// -1 per op that reads it.
    reads: usize,
    /// Recorded nodes whose backward reads this value.
    saved_by: usize,
    /// Made by `Graph::input`: it gets no gradient unless `input_grad`.
    input: bool,
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
        bn: BnGrad,
    },
    /// y = relu(bn(x)) in one pass; the backward pass masks by y.
    BnRelu {
        x: Var,
        y: Var,
        bn: BnGrad,
    },
    /// y = relu(bn(x) + skip) in one pass.
    BnAddRelu {
        x: Var,
        skip: Var,
        y: Var,
        bn: BnGrad,
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
    /// Keeps each output's argmax from the forward pass, not x.
    MaxPool {
        x: Var,
        y: Var,
        arg: Tensor,
        x_shape: Vec<usize>,
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
    /// The values the backward pass of this node reads.
    fn saved(&self) -> Vec<Var> {
        match self {
            Node::Conv { x, .. } | Node::Tconv { x, .. } | Node::Bn { x, .. } => vec![*x],
            Node::BnRelu { x, y, .. } | Node::BnAddRelu { x, y, .. } => vec![*x, *y],
            Node::Relu { y, .. } | Node::AddRelu { y, .. } => vec![*y],
            Node::MaxPool { .. } | Node::Resize { .. } => Vec::new(),
        }
    }

    /// Whether this node is a training batch norm of `v`.
    fn batch_norms(&self, v: Var) -> bool {
        match self {
            Node::Bn { x, .. } | Node::BnRelu { x, .. } | Node::BnAddRelu { x, .. } => *x == v,
            _ => false,
        }
    }

    /// The value this node produces.
    fn output(&self) -> Var {
        match self {
            Node::Conv { y, .. }
            | Node::Tconv { y, .. }
            | Node::Bn { y, .. }
            | Node::BnRelu { y, .. }
            | Node::BnAddRelu { y, .. }
            | Node::Relu { y, .. }
            | Node::AddRelu { y, .. }
            | Node::MaxPool { y, .. }
            | Node::Resize { y, .. } => *y,
        }
    }
}

pub struct Graph<'g> {
    gpu: &'g Gpu,
    /// Record nodes for backward (training); else nothing is recorded and a
    /// value is freed right after its last forward read.
    train: bool,
    nodes: Vec<Node>,
    slots: Vec<Slot>,
    /// Compute the gradient of the input too (gradient checks).
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
            slots: Vec::new(),
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

    /// A network input: read once by the forward code, and given a
    /// gradient by `backward` only when `input_grad` is set.
    pub fn input(&mut self, t: Tensor) -> Var {
        self.push(Some(t), true)
    }

    /// A new value: read once by the forward code when it holds a tensor;
    /// without one it only links two nodes (`tconv_relu`).
    fn push(&mut self, t: Option<Tensor>, input: bool) -> Var {
        self.slots.push(Slot {
            reads: t.is_some() as usize,
            tensor: t,
            saved_by: 0,
            input,
        });
        Var(self.slots.len() - 1)
    }

    /// The tensor of a value that is still alive.
    pub fn try_value(&self, v: Var) -> Result<&Tensor> {
        self.slots
            .get(v.0)
            .and_then(|s| s.tensor.as_ref())
            .ok_or_else(|| EngineError::Graph(format!("value {} used after it was freed", v.0)))
    }

    /// The tensor of a value that is still alive (panics otherwise: for the
    /// network's output, which nothing frees; `try_value` for the rest).
    pub fn value(&self, v: Var) -> &Tensor {
        self.try_value(v).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Takes a value out of the graph (e.g. the network output).
    pub fn take(&mut self, v: Var) -> Tensor {
        self.slots[v.0].tensor.take().expect("value already taken")
    }

    /// `v` will be read by one more op than it was made for (a value that
    /// feeds two ops, such as a residual block's skip).
    pub fn share(&mut self, v: Var) -> Result<Var> {
        self.try_value(v)?;
        self.slots[v.0].reads += 1;
        Ok(v)
    }

    /// How many values still hold a tensor (tests: after an inference
    /// forward only the output does).
    pub fn live(&self) -> usize {
        self.slots.iter().filter(|s| s.tensor.is_some()).count()
    }

    /// The tensor an op is about to read: alive and with a read left.
    fn arg(&self, v: Var) -> Result<&Tensor> {
        let t = self.try_value(v)?;
        if self.slots[v.0].reads == 0 {
            return Err(EngineError::Graph(format!(
                "value {} read by more ops than announced (Graph::share)",
                v.0
            )));
        }
        Ok(t)
    }

    /// Frees a value that nothing will read any more.
    fn release_if_unused(&mut self, v: Var) {
        let s = &mut self.slots[v.0];
        if s.reads == 0 && s.saved_by == 0 {
            s.tensor = None;
        }
    }

    /// Records a node for the backward pass, keeping alive what it reads.
    fn record(&mut self, node: Node) {
        for v in node.saved() {
            self.slots[v.0].saved_by += 1;
        }
        self.nodes.push(node);
    }

    /// Pushes an op's output, records its node when training, then uses up
    /// one read of each input (after recording, so that what the node's
    /// backward needs stays alive).
    fn finish(&mut self, y: Tensor, inputs: &[Var], node: impl FnOnce(Var) -> Option<Node>) -> Var {
        let y = self.push(Some(y), false);
        if let Some(node) = self.train.then(|| node(y)).flatten() {
            self.record(node);
        }
        for &x in inputs {
            let s = &mut self.slots[x.0];
            s.reads = s.reads.saturating_sub(1);
            self.release_if_unused(x);
        }
        y
    }

    pub fn conv(
        &mut self,
        x: Var,
        w: &ParamRef,
        b: &ParamRef,
        stride: usize,
        dil: usize,
    ) -> Result<Var> {
        let y = conv::conv2d(self.gpu, self.arg(x)?, w.value, b.value, stride, dil)?;
        Ok(self.finish(y, &[x], |y| {
            Some(Node::Conv {
                x,
                y,
                w: w.value.clone(),
                dw: w.grad.clone(),
                db: b.grad.clone(),
                stride,
                dil,
            })
        }))
    }

    /// relu(tconv(x)) in one pass. Its nodes are a tconv's and a ReLU's
    /// around the pre-ReLU value, which is never stored: the tconv's
    /// backward reads x, the ReLU's y. (One node reading both would keep y
    /// alive through the tconv's backward passes: 3.2 MiB more at the peak
    /// of a width-0.25 step.)
    pub fn tconv_relu(&mut self, x: Var, w: &ParamRef, b: &ParamRef, stride: usize) -> Result<Var> {
        let xt = self.arg(x)?;
        let y = conv::tconv2d_with(self.gpu, xt, w.value, Some(b.value), stride, true, None)?;
        if !self.train {
            return Ok(self.finish(y, &[x], |_| None));
        }
        let pre = self.push(None, false);
        self.record(Node::Tconv {
            x,
            y: pre,
            w: w.value.clone(),
            dw: w.grad.clone(),
            db: b.grad.clone(),
            stride,
        });
        Ok(self.finish(y, &[x], |y| Some(Node::Relu { y, x: pre })))
    }

    /// Batch norm: batch statistics and a running-statistics update when
    /// training, running statistics otherwise.
    pub fn bn(&mut self, x: Var, p: &BnRef) -> Result<Var> {
        if !self.train {
            let y = batchnorm::batchnorm_infer(self.gpu, self.arg(x)?, &p.params())?;
            return Ok(self.finish(y, &[x], |_| None));
        }
        let out = self.bn_train(x, p, Then::Nothing)?;
        let bn = p.grad(out.stats);
        Ok(self.finish(out.y, &[x], |y| Some(Node::Bn { x, y, bn })))
    }

    /// relu(bn(x)): in training one pass, and one backward pass that masks
    /// by the output (no tensor between the two ops either way).
    pub fn bn_relu(&mut self, x: Var, p: &BnRef) -> Result<Var> {
        if !self.train {
            let b = self.bn(x, p)?;
            return self.relu(b);
        }
        let out = self.bn_train(x, p, Then::Relu)?;
        let bn = p.grad(out.stats);
        Ok(self.finish(out.y, &[x], |y| Some(Node::BnRelu { x, y, bn })))
    }

    /// relu(bn(x) + skip): the residual join, one pass in training.
    pub fn bn_add_relu(&mut self, x: Var, skip: Var, p: &BnRef) -> Result<Var> {
        if !self.train {
            let b = self.bn(x, p)?;
            return self.add_relu(b, skip);
        }
        let out = self.bn_train(x, p, Then::AddRelu(self.arg(skip)?))?;
        let bn = p.grad(out.stats);
        Ok(self.finish(out.y, &[x, skip], |y| {
            Some(Node::BnAddRelu { x, skip, y, bn })
        }))
    }

    /// (bn(x), relu(bn(x))) for a residual block's first layer, whose
    /// pre-ReLU value is the skip: one pass in training.
    pub fn bn_relu_keep(&mut self, x: Var, p: &BnRef) -> Result<(Var, Var)> {
        if !self.train {
            let b = self.bn(x, p)?;
            let skip = self.share(b)?;
            return Ok((skip, self.relu(b)?));
        }
        let out = self.bn_train(x, p, Then::ReluKeep)?;
        let pre = out.pre.expect("ReluKeep returns bn(x)");
        let bn = p.grad(out.stats);
        let pre = self.finish(pre, &[x], |y| Some(Node::Bn { x, y, bn }));
        self.share(pre)?;
        // The ReLU's node, over the value the pass already wrote.
        Ok((
            pre,
            self.finish(out.y, &[pre], |y| Some(Node::Relu { y, x: pre })),
        ))
    }

    fn bn_train(&self, x: Var, p: &BnRef, then: Then) -> Result<batchnorm::BnOut> {
        let params = p.params();
        batchnorm::batchnorm_train_then(
            self.gpu,
            self.arg(x)?,
            &params,
            Some(self.bn_momentum),
            then,
        )
    }

    pub fn relu(&mut self, x: Var) -> Result<Var> {
        let y = elementwise::relu(self.gpu, self.arg(x)?)?;
        Ok(self.finish(y, &[x], |y| Some(Node::Relu { y, x })))
    }

    /// relu(a + b).
    pub fn add_relu(&mut self, a: Var, b: Var) -> Result<Var> {
        let y = elementwise::add_relu(self.gpu, self.arg(a)?, self.arg(b)?)?;
        Ok(self.finish(y, &[a, b], |y| Some(Node::AddRelu { a, b, y })))
    }

    /// In training the pass also writes each output's argmax, which the
    /// backward pass reads instead of finding it again in x.
    pub fn maxpool(&mut self, x: Var, k: usize, s: usize) -> Result<Var> {
        let xt = self.arg(x)?;
        if !self.train {
            let y = pool::maxpool2d(self.gpu, xt, k, s)?;
            return Ok(self.finish(y, &[x], |_| None));
        }
        let x_shape = xt.shape().to_vec();
        let (y, arg) = pool::maxpool2d_with_argmax(self.gpu, xt, k, s)?;
        Ok(self.finish(y, &[x], |y| {
            Some(Node::MaxPool {
                x,
                y,
                arg,
                x_shape,
                k,
                s,
            })
        }))
    }

    pub fn resize(&mut self, x: Var, h: usize, w: usize, mode: Mode) -> Result<Var> {
        let xt = self.arg(x)?;
        let in_hw = (xt.shape()[2], xt.shape()[3]);
        let y = resize::resize(self.gpu, xt, h, w, mode)?;
        Ok(self.finish(y, &[x], |y| Some(Node::Resize { x, y, mode, in_hw })))
    }

    /// Whether `backward` computes the gradient of `v` (not of an input,
    /// unless `input_grad`).
    fn wants_grad(&self, v: Var) -> bool {
        !self.slots[v.0].input || self.input_grad
    }

    /// Backpropagates `dy` from `out`, adding parameter gradients into the
    /// gradient tensors given at record time. Returns the gradient of the
    /// graph's (first) input when `input_grad` is set and it was reached.
    pub fn backward(mut self, out: Var, dy: Tensor) -> Result<Option<Tensor>> {
        let mut grads: Vec<Option<Tensor>> = vec![None; self.slots.len()];
        // Values whose whole gradient came through one training batch norm.
        let mut normed_only = vec![false; self.slots.len()];
        grads[out.0] = Some(dy);
        let nodes = std::mem::take(&mut self.nodes);
        for node in nodes.into_iter().rev() {
            if let Some(g) = grads[node.output().0].take() {
                self.propagate(&node, &g, &mut grads, &mut normed_only)?;
            }
            for v in node.saved() {
                self.slots[v.0].saved_by -= 1;
                self.release_if_unused(v);
            }
        }
        let input = self.slots.iter().position(|s| s.input);
        Ok(input.and_then(|i| grads[i].take()))
    }

    /// Adds what `node` passes back from its output's gradient `g` into its
    /// inputs' gradients, and notes which of them took all of theirs
    /// through one training batch norm.
    fn propagate(
        &self,
        node: &Node,
        g: &Tensor,
        grads: &mut [Option<Tensor>],
        normed_only: &mut [bool],
    ) -> Result<()> {
        if let Some(x) = self.relu_into_existing(node, g, grads)? {
            normed_only[x.0] = false;
            return Ok(());
        }
        for (v, dx) in self.node_backward(node, g, normed_only[node.output().0])? {
            if self.wants_grad(v) {
                normed_only[v.0] = grads[v.0].is_none() && node.batch_norms(v);
                accumulate(self.gpu, grads, v, dx)?;
            }
        }
        Ok(())
    }

    /// A ReLU's backward pass added straight into its input's gradient,
    /// where part of it is already summed in a tensor of its own (a
    /// residual block's skip): `relu_backward_add`, one pass instead of a
    /// masked copy and an axpy, the same bits. The input, or None when the
    /// node is not such a ReLU.
    fn relu_into_existing(
        &self,
        node: &Node,
        g: &Tensor,
        grads: &[Option<Tensor>],
    ) -> Result<Option<Var>> {
        let Node::Relu { y, x } = node else {
            return Ok(None);
        };
        let acc = grads[x.0].as_ref().filter(|acc| !acc.is_shared());
        match acc {
            Some(acc) if self.wants_grad(*x) => {
                elementwise::relu_backward_add(self.gpu, self.try_value(*y)?, g, acc)?;
                Ok(Some(*x))
            }
            _ => Ok(None),
        }
    }

    /// One node's backward for the gradient `g` of its output: adds into
    /// its parameter gradients and returns the gradients of its inputs.
    /// `normed_only`: the output's only reader was a training batch norm.
    fn node_backward(
        &self,
        node: &Node,
        g: &Tensor,
        normed_only: bool,
    ) -> Result<Vec<(Var, Tensor)>> {
        let gpu = self.gpu;
        Ok(match node {
            Node::Conv {
                x,
                w,
                dw,
                db,
                stride,
                dil,
                ..
            } => {
                let xt = self.try_value(*x)?;
                let hw = (xt.shape()[2], xt.shape()[3]);
                conv::conv2d_backward_weight(gpu, g, xt, dw, *stride, *dil, true)?;
                // Batch norm over the batch subtracts each channel's mean,
                // so the loss does not depend on a bias added just before
                // it: that gradient is exactly 0 (a sum of g would be the
                // rounding of 0), and db is left as it is.
                if !normed_only {
                    reduce::channel_sum(gpu, g, db, true)?;
                }
                // The network input needs no gradient unless asked.
                if !self.wants_grad(*x) {
                    return Ok(Vec::new());
                }
                vec![(
                    *x,
                    conv::conv2d_backward_input(gpu, g, w, hw, *stride, *dil)?,
                )]
            }
            Node::Tconv {
                x,
                w,
                dw,
                db,
                stride,
                ..
            } => {
                let xt = self.try_value(*x)?;
                conv::tconv2d_backward_weight(gpu, g, xt, dw, *stride, true)?;
                reduce::channel_sum(gpu, g, db, true)?;
                if !self.wants_grad(*x) {
                    return Ok(Vec::new());
                }
                vec![(*x, conv::tconv2d_backward_input(gpu, g, w, *stride)?)]
            }
            Node::Bn { x, bn, .. } => {
                let xt = self.try_value(*x)?;
                vec![(*x, bn.backward(gpu, xt, g, None)?)]
            }
            Node::BnRelu { x, y, bn } => {
                let (xt, yt) = (self.try_value(*x)?, self.try_value(*y)?);
                vec![(*x, bn.backward(gpu, xt, g, Some(yt))?)]
            }
            Node::BnAddRelu { x, skip, y, bn } => {
                let d = elementwise::relu_backward(gpu, self.try_value(*y)?, g)?;
                let dx = bn.backward(gpu, self.try_value(*x)?, &d, None)?;
                vec![(*x, dx), (*skip, d)]
            }
            Node::Relu { y, x } => {
                vec![(*x, elementwise::relu_backward(gpu, self.try_value(*y)?, g)?)]
            }
            Node::AddRelu { a, b, y } => {
                let d = elementwise::relu_backward(gpu, self.try_value(*y)?, g)?;
                vec![(*a, d.clone()), (*b, d)]
            }
            Node::MaxPool {
                x,
                arg,
                x_shape,
                k,
                s,
                ..
            } => {
                let dx = pool::maxpool2d_backward_from(gpu, x_shape, (arg, g), *k, *s)?;
                vec![(*x, dx)]
            }
            Node::Resize { x, mode, in_hw, .. } => {
                vec![(
                    *x,
                    resize::resize_backward(gpu, g, in_hw.0, in_hw.1, *mode)?,
                )]
            }
        })
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
