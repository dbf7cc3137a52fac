// Adam (PyTorch's form: eps added to sqrt(v_hat)) with an optional L2 term
// folded into the gradient: g = grad_scale * grad + l2 * p, which is the
// gradient of l2 * sum(p^2) / 2 (docs/MODEL.md: 0.0025 on fc_1 and logits).
// One invocation per element of type V: f32 here, vec4<f32> in the vec4 form
// the engine builds from this file where lengths and offsets are multiples
// of 4 (the same operations per component, so the same bits).

alias V = f32;

struct Params {
    n: u32,
    lr: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    bias_c1: f32,      // 1 - beta1^step
    bias_c2: f32,      // 1 - beta2^step
    l2: f32,
    grad_scale: f32,
    base: u32,         // offset (in V) of this run in every binding
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read_write> param: array<V>;
@group(0) @binding(2) var<storage, read> grad: array<V>;
@group(0) @binding(3) var<storage, read_write> m: array<V>;
@group(0) @binding(4) var<storage, read_write> v: array<V>;
// adam_step_sq only: each element's squared gradient (as accumulated,
// before scaling and L2), for the step's gradient norm in one reduction
// over every parameter instead of one per parameter.
@group(0) @binding(5) var<storage, read_write> sq: array<V>;

const WG: u32 = 64u;

// Updates element i (param, m, v) and returns its accumulated gradient.
fn update(i: u32) -> V {
    let p = param[i];
    let acc = grad[i];
    let g = P.grad_scale * acc + P.l2 * p;
    let m1 = P.beta1 * m[i] + (1.0 - P.beta1) * g;
    let v1 = P.beta2 * v[i] + (1.0 - P.beta2) * g * g;
    m[i] = m1;
    v[i] = v1;
    param[i] = p - P.lr * (m1 / P.bias_c1) / (sqrt(v1 / P.bias_c2) + P.eps);
    return acc;
}

@compute @workgroup_size(WG)
fn adam_step(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let e = gid.x + gid.y * nwg.x * WG;
    if (e >= P.n) {
        return;
    }
    _ = update(P.base + e);
}

@compute @workgroup_size(WG)
fn adam_step_sq(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let e = gid.x + gid.y * nwg.x * WG;
    if (e >= P.n) {
        return;
    }
    let acc = update(P.base + e);
    sq[P.base + e] = acc * acc;
}
