// Batch norm folded into the preceding convolution for inference:
//   scale[o] = gamma[o] / sqrt(running_var[o] + eps)
//   w'[o, ...] = w[o, ...] * scale[o]
//   b'[o] = (b[o] - running_mean[o]) * scale[o] + beta[o]
// so conv -> bn becomes one conv. One invocation per output element.

struct Params {
    total: u32,     // elements to write
    per_o: u32,     // weight elements per output channel (1 for the bias)
    eps: f32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read> gamma: array<f32>;
@group(0) @binding(3) var<storage, read> beta: array<f32>;
@group(0) @binding(5) var<storage, read> mean: array<f32>;
@group(0) @binding(6) var<storage, read> var_: array<f32>;
@group(0) @binding(4) var<storage, read_write> dst: array<f32>;

const WG: u32 = 64u;

@compute @workgroup_size(WG)
fn fold_weight(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let e = gid.x + gid.y * nwg.x * WG;
    if (e >= P.total) {
        return;
    }
    let o = e / P.per_o;
    dst[e] = src[e] * (gamma[o] / sqrt(var_[o] + P.eps));
}

@compute @workgroup_size(WG)
fn fold_bias(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let o = gid.x + gid.y * nwg.x * WG;
    if (o >= P.total) {
        return;
    }
    dst[o] = (src[o] - mean[o]) * (gamma[o] / sqrt(var_[o] + P.eps)) + beta[o];
}
