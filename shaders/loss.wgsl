// Weighted sigmoid cross-entropy on logits z with targets t in [0, 1]:
//   l = pos_weight * t * softplus(-z) + (1 - t) * softplus(z)
// with softplus(u) = max(u, 0) + log(1 + exp(-|u|)), stable for any |z|.
// The mean over pixels is taken by reduce.wgsl.

struct Params {
    n: u32,
    z_base: u32,
    t_base: u32,
    y_base: u32,
    pos_weight: f32,
    scale: f32,        // backward: d(loss)/d(mean), i.e. 1 / pixels
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> z: array<f32>;
@group(0) @binding(2) var<storage, read> t: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
@group(0) @binding(4) var<storage, read_write> dz: array<f32>;

const WG: u32 = 64u;

// select, not max(u, 0.0): max may turn a NaN into 0 (lavapipe does).
fn softplus(u: f32) -> f32 {
    return select(u, 0.0, u < 0.0) + log(1.0 + exp(-abs(u)));
}

fn sigmoid(u: f32) -> f32 {
    let e = exp(-abs(u));
    return select(e / (1.0 + e), 1.0 / (1.0 + e), u >= 0.0);
}

fn bce(zv: f32, tv: f32) -> f32 {
    return P.pos_weight * tv * softplus(-zv) + (1.0 - tv) * softplus(zv);
}

// dl/dz = pos_weight * t * (sigmoid(z) - 1) + (1 - t) * sigmoid(z), times scale.
fn bce_grad(zv: f32, tv: f32) -> f32 {
    let s = sigmoid(zv);
    return P.scale * (P.pos_weight * tv * (s - 1.0) + (1.0 - tv) * s);
}

@compute @workgroup_size(WG)
fn bce_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let e = gid.x + gid.y * nwg.x * WG;
    if (e < P.n) {
        let zv = z[P.z_base + e];
        let tv = t[P.t_base + e];
        y[P.y_base + e] = bce(zv, tv);
    }
}

@compute @workgroup_size(WG)
fn bce_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let e = gid.x + gid.y * nwg.x * WG;
    if (e < P.n) {
        y[P.y_base + e] = bce_grad(z[P.z_base + e], t[P.t_base + e]);
    }
}

// Both in one pass (a training step needs both): z and t read once, and
// the exponentials they share computed once; the same expressions, so the
// same bits.
@compute @workgroup_size(WG)
fn bce_forward_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let e = gid.x + gid.y * nwg.x * WG;
    if (e < P.n) {
        let zv = z[P.z_base + e];
        let tv = t[P.t_base + e];
        y[P.y_base + e] = bce(zv, tv);
        dz[P.y_base + e] = bce_grad(zv, tv);
    }
}
