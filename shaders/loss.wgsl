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

const WG: u32 = 64u;

// select, not max(u, 0.0): max may turn a NaN into 0 (lavapipe does).
fn softplus(u: f32) -> f32 {
    return select(u, 0.0, u < 0.0) + log(1.0 + exp(-abs(u)));
}

fn sigmoid(u: f32) -> f32 {
    let e = exp(-abs(u));
    return select(e / (1.0 + e), 1.0 / (1.0 + e), u >= 0.0);
}

@compute @workgroup_size(WG)
fn bce_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let e = gid.x + gid.y * nwg.x * WG;
    if (e < P.n) {
        let zv = z[P.z_base + e];
        let tv = t[P.t_base + e];
        y[P.y_base + e] = P.pos_weight * tv * softplus(-zv) + (1.0 - tv) * softplus(zv);
    }
}

// dl/dz = pos_weight * t * (sigmoid(z) - 1) + (1 - t) * sigmoid(z), times scale.
@compute @workgroup_size(WG)
fn bce_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let e = gid.x + gid.y * nwg.x * WG;
    if (e < P.n) {
        let zv = z[P.z_base + e];
        let tv = t[P.t_base + e];
        let s = sigmoid(zv);
        y[P.y_base + e] = P.scale * (P.pos_weight * tv * (s - 1.0) + (1.0 - tv) * s);
    }
}
