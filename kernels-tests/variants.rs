//! Every variant of every convolution pass against the CPU reference, on
//! odd shapes (channel counts that are not multiples of any tile, widths
//! that are not multiples of any pixel tile), with fused ReLU and bias, and
//! under a tiny binding limit that forces channel and image splits. The
//! default-path tests in conv.rs also check finite differences; here every
//! variant must give the reference's numbers, so any variant the tuner may
//! choose is proven.
use crate::common::*;
use engine::gpu::{TuneMode, UNIFORM_OPERAND_BYTES, Variants};
use engine::ops::conv::{self, ConvVariant, WgradVariant, conv_geom, cpu};
use engine::{Gpu, Tensor};

const ATOL: f64 = 1e-4;

/// (n, c, o, h, w, k, s, d)
type ConvShape = (usize, usize, usize, usize, usize, usize, usize, usize);

fn conv_all_variants(gpu: &Gpu, shape: ConvShape) {
    conv_variants(gpu, shape, &ConvVariant::candidates(gpu));
}

/// `conv_all_variants` with only the given direct variants (every weight
/// gradient variant still): where the others would only repeat kernels
/// another test proves, each a compile of up to ~15 s on lavapipe.
fn conv_variants(gpu: &Gpu, shape: ConvShape, variants: &[ConvVariant]) {
    conv_direct_passes(gpu, shape, variants);
    conv_weight_gradients(gpu, shape);
}

/// The forward (with and without ReLU) and input-gradient passes of each
/// direct variant against the reference; returns each variant's forward
/// and input gradient.
fn conv_direct_passes(
    gpu: &Gpu,
    (n, c, o, h, w, k, s, d): ConvShape,
    variants: &[ConvVariant],
) -> Vec<(Vec<f32>, Vec<f32>)> {
    let tag = format!("conv n{n} c{c} o{o} {h}x{w} k{k} s{s} d{d}");
    let (oh, ow, g) = conv_geom(h, w, k, s, d);
    let (x, wt, b) = (
        rand_vec(1, n * c * h * w),
        rand_vec(2, o * c * k * k),
        rand_vec(3, o),
    );
    let dy = rand_vec(4, n * o * oh * ow);
    let (x64, w64, b64, dy64) = (to64(&x), to64(&wt), to64(&b), to64(&dy));
    let (xt, wtt, bt, dyt) = (
        up(gpu, &[n, c, h, w], &x),
        up(gpu, &[o, c, k, k], &wt),
        up(gpu, &[o], &b),
        up(gpu, &[n, o, oh, ow], &dy),
    );
    let y_ref = cpu::conv2d(&x64, (n, c, h, w), &w64, &b64, o, g, (oh, ow));
    let relu_ref: Vec<f64> = y_ref.iter().map(|v| v.max(0.0)).collect();
    let dx_ref = cpu::conv2d_backward_input(&dy64, (n, o, oh, ow), &w64, c, g, (h, w));
    let mut outs = Vec::new();
    for &v in variants {
        let name = v.name();
        let y = conv::conv2d_with(gpu, &xt, &wtt, Some(&bt), s, d, false, Some(v)).unwrap();
        assert_close(
            &format!("{tag} {name} fwd"),
            &read(gpu, &y),
            &y_ref,
            ATOL,
            1e-4,
        );
        let y = conv::conv2d_with(gpu, &xt, &wtt, Some(&bt), s, d, true, Some(v)).unwrap();
        assert_close(
            &format!("{tag} {name} fwd+relu"),
            &read(gpu, &y),
            &relu_ref,
            ATOL,
            1e-4,
        );
        let fwd = read(gpu, &y);
        let dx = conv::conv2d_backward_input_with(gpu, &dyt, &wtt, (h, w), s, d, Some(v)).unwrap();
        let dx = read(gpu, &dx);
        assert_close(&format!("{tag} {name} dx"), &dx, &dx_ref, ATOL, 1e-4);
        outs.push((fwd, dx));
    }
    outs
}

/// Every weight-gradient variant against the reference, written and
/// accumulated.
fn conv_weight_gradients(gpu: &Gpu, (n, c, o, h, w, k, s, d): ConvShape) {
    let tag = format!("conv n{n} c{c} o{o} {h}x{w} k{k} s{s} d{d}");
    let (oh, ow, g) = conv_geom(h, w, k, s, d);
    let (x, dy) = (rand_vec(1, n * c * h * w), rand_vec(4, n * o * oh * ow));
    let (x64, dy64) = (to64(&x), to64(&dy));
    let (xt, dyt) = (up(gpu, &[n, c, h, w], &x), up(gpu, &[n, o, oh, ow], &dy));
    let dw_ref = cpu::conv2d_backward_weight(&dy64, (n, o, oh, ow), &x64, (c, h, w), g);
    for v in WgradVariant::candidates(gpu, k * k) {
        let dwt = stale(gpu, &[o, c, k, k]);
        conv::conv2d_backward_weight_with(gpu, &dyt, &xt, &dwt, s, d, false, Some(v)).unwrap();
        let tag = format!("{tag} {} dw", v.name());
        assert_close(&tag, &read(gpu, &dwt), &dw_ref, 5e-4, 1e-4);
        conv::conv2d_backward_weight_with(gpu, &dyt, &xt, &dwt, s, d, true, Some(v)).unwrap();
        let twice: Vec<f64> = dw_ref.iter().map(|v| 2.0 * v).collect();
        assert_close(
            &format!("{tag} accumulated"),
            &read(gpu, &dwt),
            &twice,
            1e-3,
            1e-4,
        );
    }
}

/// (n, c, o, h, w, s) of a 4x4 transposed convolution.
type TconvShape = (usize, usize, usize, usize, usize, usize);

fn tconv_all_variants(gpu: &Gpu, shape: TconvShape) {
    tconv_direct_passes(gpu, shape, &ConvVariant::candidates(gpu));
    let (n, c, o, h, w, s) = shape;
    let tag = format!("tconv n{n} c{c} o{o} {h}x{w} s{s}");
    let (x, wt, dy) = (
        rand_vec(5, n * c * h * w),
        rand_vec(6, c * o * 16),
        rand_vec(8, n * o * h * s * w * s),
    );
    let (xt, dyt) = (
        up(gpu, &[n, c, h, w], &x),
        up(gpu, &[n, o, h * s, w * s], &dy),
    );
    let (_, dw_ref) = cpu::tconv2d_backward(&to64(&dy), &to64(&x), (n, c, h, w), &to64(&wt), o, s);
    for v in WgradVariant::candidates(gpu, 16) {
        let dwt = stale(gpu, &[c, o, 4, 4]);
        conv::tconv2d_backward_weight_with(gpu, &dyt, &xt, &dwt, s, false, Some(v)).unwrap();
        let tag = format!("{tag} {} dw", v.name());
        assert_close(&tag, &read(gpu, &dwt), &dw_ref, 5e-4, 1e-4);
    }
}

/// `conv_direct_passes` of a transposed convolution.
fn tconv_direct_passes(
    gpu: &Gpu,
    (n, c, o, h, w, s): TconvShape,
    variants: &[ConvVariant],
) -> Vec<(Vec<f32>, Vec<f32>)> {
    let tag = format!("tconv n{n} c{c} o{o} {h}x{w} s{s}");
    let (x, wt, b) = (
        rand_vec(5, n * c * h * w),
        rand_vec(6, c * o * 16),
        rand_vec(7, o),
    );
    let dy = rand_vec(8, n * o * h * s * w * s);
    let (x64, w64, b64, dy64) = (to64(&x), to64(&wt), to64(&b), to64(&dy));
    let (xt, wtt, bt, dyt) = (
        up(gpu, &[n, c, h, w], &x),
        up(gpu, &[c, o, 4, 4], &wt),
        up(gpu, &[o], &b),
        up(gpu, &[n, o, h * s, w * s], &dy),
    );
    let y_ref = cpu::tconv2d(&x64, (n, c, h, w), &w64, &b64, o, s);
    let relu_ref: Vec<f64> = y_ref.iter().map(|v| v.max(0.0)).collect();
    let (dx_ref, _) = cpu::tconv2d_backward(&dy64, &x64, (n, c, h, w), &w64, o, s);
    let mut outs = Vec::new();
    for &v in variants {
        let name = v.name();
        let y = conv::tconv2d_with(gpu, &xt, &wtt, Some(&bt), s, false, Some(v)).unwrap();
        assert_close(
            &format!("{tag} {name} fwd"),
            &read(gpu, &y),
            &y_ref,
            ATOL,
            1e-4,
        );
        let y = conv::tconv2d_with(gpu, &xt, &wtt, Some(&bt), s, true, Some(v)).unwrap();
        assert_close(
            &format!("{tag} {name} fwd+relu"),
            &read(gpu, &y),
            &relu_ref,
            ATOL,
            1e-4,
        );
        let fwd = read(gpu, &y);
        let dx = conv::tconv2d_backward_input_with(gpu, &dyt, &wtt, s, Some(v)).unwrap();
        let dx = read(gpu, &dx);
        assert_close(&format!("{tag} {name} dx"), &dx, &dx_ref, ATOL, 1e-4);
        outs.push((fwd, dx));
    }
    outs
}

#[test]
fn every_conv_variant_matches_the_reference() {
    for shape in [
        (2, 5, 9, 11, 13, 3, 1, 1),
        (2, 3, 6, 9, 10, 3, 2, 1),
        (1, 4, 5, 8, 7, 3, 2, 1),
        (1, 6, 7, 10, 9, 3, 1, 2),
        (3, 7, 5, 6, 5, 1, 1, 1),
        // 1x1 on a width the 4- and 8-pixel tiles divide: read in place.
        (2, 5, 9, 6, 8, 1, 1, 1),
        (1, 1, 12, 9, 9, 3, 2, 1),
        // Rows of a multiple of 4 and 8: vec4 row loads in every pass,
        // dilation 2 with a shift-2 padded copy.
        (2, 5, 9, 7, 8, 3, 1, 1),
        (1, 6, 7, 10, 8, 3, 1, 2),
        // More input channels than a workgroup's 8 lanes: the weight
        // gradient's two-channel lanes, the second group partly past the end.
        (1, 19, 6, 7, 8, 3, 1, 1),
        // Stride 2 onto rows of whole vec4s: one kernel for every phase
        // (`BlockTile`), an odd row count dropping the last blocks' lower
        // rows, rows of 44 summed-grid columns in three groups, the last
        // one partly past the row; more summed channels than a pass's
        // two, an odd last one.
        (1, 5, 7, 7, 88, 3, 2, 1),
    ] {
        conv_all_variants(gpu(), shape);
    }
}

#[test]
fn every_variant_runs_narrow_rows_flat_in_a_long_run() {
    // Training runs rows narrower than 32 flat along the padded plane
    // (`direct::layout`) where that wastes fewer lanes, in workgroups of
    // as few as 8 invocations (`smaller_workgroups_...` checks that both
    // happen). Rows of 10 from 12 padded columns: every tile of 8 or more
    // pixels runs flat, 4-pixel ones by row; dilation 2 (rows of 16, as
    // many lanes either way for 8 and 16 pixels): the 40-pixel tiles; and
    // under the 4 KiB binding limit, with channel groups: the training
    // rule's tile for 64 or more channels on rows under 32 laid out as
    // rows, the 40-pixel tile and a narrow one.
    let open = |limit: Option<u64>| {
        let gpu = Gpu::new(None).expect("a GPU adapter");
        gpu.variants().set_long_run(true);
        gpu.set_texel_operands(false);
        if let Some(bytes) = limit {
            gpu.set_binding_limit(bytes);
        }
        gpu
    };
    let direct = |tiles: &[(usize, usize)]| -> Vec<ConvVariant> {
        let tile = |&(tp, to): &(usize, usize)| ConvVariant::Direct(conv::Tile::new(tp, to));
        tiles.iter().map(tile).collect()
    };
    let long_run = open(None);
    conv_all_variants(&long_run, (2, 5, 9, 11, 10, 3, 1, 1));
    let wide = direct(&[(40, 16), (40, 8)]);
    conv_variants(&long_run, (1, 6, 7, 10, 10, 3, 1, 2), &wide);
    let splits = direct(&[(8, 64), (40, 16), (8, 16)]);
    conv_variants(
        &open(Some(TINY_LIMIT)),
        (2, 12, 3, 10, 10, 3, 1, 1),
        &splits,
    );
}

#[test]
fn every_tconv_variant_matches_the_reference() {
    for shape in [
        (2, 5, 6, 5, 7, 2),
        (1, 3, 9, 6, 5, 1),
        (1, 3, 5, 4, 8, 2),
        (1, 17, 19, 4, 8, 2),
    ] {
        tconv_all_variants(gpu(), shape);
    }
}

#[test]
fn wide_two_d_tiles_match_the_reference_and_one_row_tiles_bit_for_bit() {
    // The 2-D tiles a long run on a CPU adapter times as rivals
    // (`Tile::two_d`, reading storage) are too wide for `candidates`,
    // whose every shape would compile each for ~10 s: here the forward,
    // ReLU, input-gradient and transposed passes on odd shapes (rows not a
    // multiple of the tile's, narrowed columns, dilation 2 on 10x10, a
    // stride-2 tconv's 2x2 phases), against the reference and bit for bit
    // against the one-row tile reading storage. (They are no rivals for
    // 4x4 kernels. Binding limits split their work as any tile's: the
    // small 2-D candidate runs `every_variant_splits_under_...`.)
    let long_run = Gpu::new(None).expect("a GPU adapter");
    long_run.variants().set_long_run(true);
    let two_d = [16, 8].map(|to| conv::Tile::two_d(to).expect("a 2-D tile"));
    let mut field = vec![ConvVariant::Direct(
        conv::Tile::new(40, 16).reading_storage(),
    )];
    field.extend(two_d.map(|t| ConvVariant::Direct(t.reading_storage())));
    let same_bits = |tag: &str, outs: &[(Vec<f32>, Vec<f32>)]| {
        for (v, (fwd, dx)) in field.iter().zip(outs).skip(1) {
            let name = v.name();
            assert!(bits_equal(fwd, &outs[0].0), "{tag}: {name} forward");
            assert!(bits_equal(dx, &outs[0].1), "{tag}: {name} input gradient");
        }
    };
    // (Stride 2 runs the same code as the small 2-D candidate's, which
    // `every_conv_variant_matches_the_reference` checks on stride-2 shapes;
    // each wide kernel here is a compile of ~10 s.)
    for shape in [(2, 9, 10, 13, 11, 3, 1, 1), (1, 6, 20, 10, 10, 3, 1, 2)] {
        same_bits(
            &format!("{shape:?}"),
            &conv_direct_passes(&long_run, shape, &field),
        );
    }
    // A stride-2 tconv's forward runs 2x2 phases (its input gradient, a
    // strided 4x4 kernel, has no 2-D rival).
    let (n, c, o, h, w, s) = (1, 5, 6, 6, 7, 2);
    let (x, wt, b) = (
        rand_vec(5, n * c * h * w),
        rand_vec(6, c * o * 16),
        rand_vec(7, o),
    );
    let y_ref = cpu::tconv2d(&to64(&x), (n, c, h, w), &to64(&wt), &to64(&b), o, s);
    let (xt, wtt, bt) = (
        up(&long_run, &[n, c, h, w], &x),
        up(&long_run, &[c, o, 4, 4], &wt),
        up(&long_run, &[o], &b),
    );
    let tconv = |v: ConvVariant| {
        let y = conv::tconv2d_with(&long_run, &xt, &wtt, Some(&bt), s, false, Some(v)).unwrap();
        read(&long_run, &y)
    };
    let first = tconv(field[0]);
    for &v in &field {
        let y = tconv(v);
        assert_close(&format!("tconv {} fwd", v.name()), &y, &y_ref, ATOL, 1e-4);
        assert!(bits_equal(&y, &first), "tconv: {} forward", v.name());
    }
}

#[test]
fn every_variant_splits_under_a_tiny_binding_limit() {
    // One 12x12 image of 12 channels and the 12x10x9 weights exceed a
    // 4 KiB window: channel, output-channel and image groups.
    let gpu = tiny_gpu();
    conv_all_variants(gpu, (3, 12, 10, 12, 12, 3, 1, 1));
    conv_all_variants(gpu, (2, 12, 20, 12, 11, 3, 2, 1));
    conv_all_variants(gpu, (3, 12, 10, 8, 16, 1, 1, 1));
    // Rows of 10: the weight gradient's widened copy of dy fits a window,
    // the padded input planes go in channel groups.
    conv_all_variants(gpu, (2, 12, 3, 10, 10, 3, 1, 1));
    tconv_all_variants(gpu, (2, 6, 5, 6, 6, 2));
}

/// A fresh device in a long run: texel operands or not, uniform weights
/// shared by the subgroup or storage weights loaded lane by lane, and an
/// optional binding limit.
fn long_run_gpu(texels: bool, shared: bool, limit: Option<u64>) -> Gpu {
    let gpu = Gpu::new(None).expect("a GPU adapter");
    gpu.variants().set_long_run(true);
    gpu.set_texel_operands(texels);
    gpu.set_uniform_operands(shared);
    gpu.set_subgroup_loads(shared);
    if let Some(bytes) = limit {
        gpu.set_binding_limit(bytes);
    }
    gpu
}

#[test]
fn pixel_quad_tiles_match_the_reference_and_plain_tiles_bit_for_bit() {
    // A long run's 1x1 passes take pixel quads (`Tile::quads`: vec4
    // accumulators of 4 pixels, two summed channels a pass). Planes of
    // 10x10 (100 pixels: the last 16-pixel tile runs past the plane), 9
    // summed channels (an odd last one), 37 produced (a partial group);
    // texels with uniform weights shared by the subgroup, storage with
    // weights loaded lane by lane, and the 4 KiB binding limit (channel
    // and image groups that accumulate). The same sums in the same order
    // as the plain tile of that size, forward and input gradient, where
    // both group the summed channels alike: under the limit the plain
    // tile's padded planes (rows of 16) take fewer channels per group.
    let (n, c, o, h, w) = (2, 9, 37, 10, 10);
    let tiles = [conv::Tile::quads(16, 32), conv::Tile::quads(16, 16)];
    let quads: Vec<ConvVariant> = tiles.iter().map(|&t| ConvVariant::Direct(t)).collect();
    let plain: Vec<ConvVariant> = tiles
        .iter()
        .map(|t| ConvVariant::Direct(t.without_quads()))
        .collect();
    for (gpu, whole_planes) in [
        (long_run_gpu(true, true, None), true),
        (long_run_gpu(false, false, None), true),
        (long_run_gpu(false, true, Some(TINY_LIMIT)), false),
    ] {
        // First, so that the kernels are new to this device and listed.
        let (xt, wt) = (
            up(&gpu, &[n, c, h, w], &rand_vec(1, n * c * h * w)),
            up(&gpu, &[o, c, 1, 1], &rand_vec(2, o * c)),
        );
        let (done, kernels) = gpu.dry_run(|| {
            conv::conv2d_with(&gpu, &xt, &wt, None, 1, 1, false, Some(quads[0])).map(drop)
        });
        done.unwrap();
        let keys = keys_of(kernels, "direct");
        let all_quads = keys.iter().all(|k| k.contains("-quads"));
        assert!(!keys.is_empty() && all_quads, "{keys:?}");
        let shape = (n, c, o, h, w, 1, 1, 1);
        let with = conv_direct_passes(&gpu, shape, &quads);
        let without = conv_direct_passes(&gpu, shape, &plain);
        for ((a, b), v) in with.iter().zip(&without).zip(&quads) {
            let name = v.name();
            if whole_planes {
                assert!(bits_equal(&a.0, &b.0), "{name}: forward differs");
                assert!(bits_equal(&a.1, &b.1), "{name}: input gradient differs");
            }
        }
    }
}

#[test]
fn phase_blocks_match_the_reference_and_phase_jobs_bit_for_bit() {
    // A long run's stride-2 transposed passes compute every phase in one
    // kernel (`BlockTile`): a stride-2 conv's input gradient onto 9x8
    // (an odd row count: the last blocks' lower rows dropped), 11 summed
    // channels (two a pass, an odd last one), 13 produced (a partial
    // group); a stride-2 transpose conv's forward (with bias and ReLU)
    // onto 10x12. Texels with subgroup-shared uniform weights, storage
    // with weights loaded lane by lane, and the 4 KiB binding limit. The
    // same sums in the same order as the phase jobs of the same channels,
    // where both group the summed channels alike (under the limit each
    // splits its own way: the reference only); the input gradient also
    // against finite differences.
    let blocks: Vec<ConvVariant> = conv::BlockTile::CANDIDATES
        .iter()
        .map(|&t| ConvVariant::Blocks(t))
        .collect();
    let phases: Vec<ConvVariant> = conv::BlockTile::CANDIDATES
        .iter()
        .map(|t| ConvVariant::Direct(t.plain()))
        .collect();
    for (gpu, same_groups) in [
        (long_run_gpu(true, true, None), true),
        (long_run_gpu(false, false, None), true),
        (long_run_gpu(false, true, Some(TINY_LIMIT)), false),
    ] {
        // First, so that the kernels are new to this device and listed.
        let (dyt, wt) = (
            up(&gpu, &[1, 11, 5, 4], &rand_vec(1, 11 * 20)),
            up(&gpu, &[11, 13, 3, 3], &rand_vec(2, 11 * 13 * 9)),
        );
        let (done, kernels) = gpu.dry_run(|| {
            conv::conv2d_backward_input_with(&gpu, &dyt, &wt, (9, 8), 2, 1, Some(blocks[0]))
                .map(drop)
        });
        done.unwrap();
        let keys = keys_of(kernels, "blocks");
        assert!(!keys.is_empty(), "no block kernel ran");
        // The input gradient is the gradient of sum(dy * conv(x)).
        let (n, c, o, h, w) = (2, 13, 11, 9, 8);
        let (oh, ow, g) = conv_geom(h, w, 3, 2, 1);
        let (x, wt, dy) = (
            rand_vec(31, n * c * h * w),
            rand_vec(32, o * c * 9),
            rand_vec(33, n * o * oh * ow),
        );
        let (dyt, wtt) = (up(&gpu, &[n, o, oh, ow], &dy), up(&gpu, &[o, c, 3, 3], &wt));
        let dx = conv::conv2d_backward_input_with(&gpu, &dyt, &wtt, (h, w), 2, 1, Some(blocks[0]));
        let (dy64, w64, zero) = (to64(&dy), to64(&wt), vec![0.0; o]);
        let loss = |x: &[f64]| {
            dot(
                &dy64,
                &cpu::conv2d(x, (n, c, h, w), &w64, &zero, o, g, (oh, ow)),
            )
        };
        let dx = read(&gpu, &dx.unwrap());
        assert_fd("blocks dx", loss, &to64(&x), &dx, 40, 1e-3);
        let conv_shape = (2, 13, 11, 9, 8, 3, 2, 1);
        let with = conv_direct_passes(&gpu, conv_shape, &blocks);
        let without = conv_direct_passes(&gpu, conv_shape, &phases);
        let tconv_shape = (1, 11, 13, 5, 6, 2);
        let t_with = tconv_direct_passes(&gpu, tconv_shape, &blocks);
        let t_without = tconv_direct_passes(&gpu, tconv_shape, &phases);
        for (i, v) in blocks.iter().enumerate() {
            let name = v.name();
            if same_groups {
                let dx = bits_equal(&with[i].1, &without[i].1);
                assert!(dx, "{name}: input gradient differs");
                let fwd = bits_equal(&t_with[i].0, &t_without[i].0);
                assert!(fwd, "{name}: transpose forward differs");
            }
        }
    }
}

#[test]
fn direct_variants_are_bit_identical() {
    // Every direct tile sums channels, then taps, in the same order, so
    // the tuner's choice never changes a result, for 3x3 and 1x1 kernels.
    let gpu = gpu();
    let (n, c, o, h, w) = (2, 9, 10, 13, 11);
    let xt = up(gpu, &[n, c, h, w], &rand_vec(11, n * c * h * w));
    let bt = up(gpu, &[o], &rand_vec(13, o));
    let tiles = conv::Tile::candidates(gpu);
    for k in [3, 1] {
        let wt = up(gpu, &[o, c, k, k], &rand_vec(12, o * c * k * k));
        let outs: Vec<Vec<f32>> = tiles
            .iter()
            .map(|&t| {
                let v = Some(ConvVariant::Direct(t));
                read(
                    gpu,
                    &conv::conv2d_with(gpu, &xt, &wt, Some(&bt), 1, 1, false, v).unwrap(),
                )
            })
            .collect();
        for (t, out) in tiles.iter().zip(&outs) {
            let (a, b) = (t.name(), tiles[0].name());
            assert!(bits_equal(out, &outs[0]), "{k}x{k}: {a} differs from {b}");
        }
    }
}

#[test]
fn uniform_and_storage_weights_are_bit_identical() {
    // Weights read through a uniform binding (CPU adapters) or a storage
    // one give the same sums in the same order: every tile, forward and
    // input gradient, with the produced channels split to fit the uniform
    // binding (64 input channels; 130 for 8-channel tiles, whose slice of
    // 130 summed channels still fits; 16-channel tiles split those, see
    // `summed_channel_groups_for_uniform_weights_match_the_reference`).
    let storage = Gpu::new(None).expect("a GPU adapter");
    storage.set_uniform_operands(false);
    let uniform = uniform_gpu();
    for (n, c, o, h, w) in [(2, 64, 40, 7, 9), (1, 130, 20, 5, 6)] {
        let x = rand_vec(21, n * c * h * w);
        let wt = rand_vec(22, o * c * 9);
        let b = rand_vec(23, o);
        let dy = rand_vec(24, n * o * h * w);
        let run = |gpu: &Gpu, t: conv::Tile| {
            let v = Some(ConvVariant::Direct(t));
            let (xt, wtt, bt) = (
                up(gpu, &[n, c, h, w], &x),
                up(gpu, &[o, c, 3, 3], &wt),
                up(gpu, &[o], &b),
            );
            let y = conv::conv2d_with(gpu, &xt, &wtt, Some(&bt), 1, 1, false, v).unwrap();
            let dyt = up(gpu, &[n, o, h, w], &dy);
            let dx = conv::conv2d_backward_input_with(gpu, &dyt, &wtt, (h, w), 1, 1, v).unwrap();
            (read(gpu, &y), read(gpu, &dx))
        };
        let whole = |t: &conv::Tile| c * 9 * t.to * 4 <= UNIFORM_OPERAND_BYTES as usize;
        for t in conv::Tile::candidates(&storage)
            .into_iter()
            .filter(|t| !t.shared && whole(t))
        {
            let (a, b) = (run(&uniform, t), run(&storage, t));
            let tag = format!("n{n} c{c} o{o} {h}x{w} {}", t.name());
            assert!(bits_equal(&a.0, &b.0), "{tag}: forward differs");
            assert!(bits_equal(&a.1, &b.1), "{tag}: input gradient differs");
        }
    }
}

/// One convolution's inputs, for runs on several devices that must agree.
struct ConvCase {
    /// (n, c, o, h, w, k, s)
    dims: (usize, usize, usize, usize, usize, usize, usize),
    out: (usize, usize),
    x: Vec<f32>,
    wt: Vec<f32>,
    dy: Vec<f32>,
}

impl ConvCase {
    fn new(dims: (usize, usize, usize, usize, usize, usize, usize), seed: u64) -> ConvCase {
        let (n, c, o, h, w, k, s) = dims;
        let (oh, ow, _) = conv_geom(h, w, k, s, 1);
        ConvCase {
            dims,
            out: (oh, ow),
            x: rand_vec(seed, n * c * h * w),
            wt: rand_vec(seed + 1, o * c * k * k),
            dy: rand_vec(seed + 2, n * o * oh * ow),
        }
    }

    fn tag(&self) -> String {
        let (n, c, o, h, w, k, s) = self.dims;
        format!("n{n} c{c} o{o} {h}x{w} k{k} s{s}")
    }

    /// The forward (with ReLU) and input gradient of direct tile `t`, and
    /// the keys of the direct kernels they created.
    fn direct(&self, gpu: &Gpu, t: conv::Tile) -> (Vec<f32>, Vec<f32>, Vec<String>) {
        let (n, c, o, h, w, k, s) = self.dims;
        let v = Some(ConvVariant::Direct(t));
        let (xt, wtt) = (
            up(gpu, &[n, c, h, w], &self.x),
            up(gpu, &[o, c, k, k], &self.wt),
        );
        let dyt = up(gpu, &[n, o, self.out.0, self.out.1], &self.dy);
        let forward = || conv::conv2d_with(gpu, &xt, &wtt, None, s, 1, true, v);
        let backward = || conv::conv2d_backward_input_with(gpu, &dyt, &wtt, (h, w), s, 1, v);
        let (done, kernels) = gpu.dry_run(|| forward().and_then(|_| backward()));
        done.unwrap();
        let (y, dx) = (forward().unwrap(), backward().unwrap());
        (read(gpu, &y), read(gpu, &dx), keys_of(kernels, "direct"))
    }

    /// The weight gradient of tile `t`, and the keys of the kernels it
    /// created.
    fn wgrad(&self, gpu: &Gpu, t: conv::GemmTile) -> (Vec<f32>, Vec<String>) {
        let (n, c, o, h, w, k, s) = self.dims;
        let (xt, dyt) = (
            up(gpu, &[n, c, h, w], &self.x),
            up(gpu, &[n, o, self.out.0, self.out.1], &self.dy),
        );
        let dwt = stale(gpu, &[o, c, k, k]);
        let v = Some(WgradVariant::Gemm(t));
        let run = || conv::conv2d_backward_weight_with(gpu, &dyt, &xt, &dwt, s, 1, false, v);
        let (done, kernels) = gpu.dry_run(run);
        done.unwrap();
        run().unwrap();
        (read(gpu, &dwt), keys_of(kernels, "wgrad"))
    }
}

fn keys_of(kernels: Vec<engine::gpu::KernelSource>, prefix: &str) -> Vec<String> {
    kernels
        .into_iter()
        .map(|k| k.key)
        .filter(|k| k.starts_with(prefix))
        .collect()
}

#[test]
fn subgroup_shared_and_lane_by_lane_loads_are_bit_identical() {
    // With subgroups of one size (lavapipe: 8) a direct kernel's weights
    // and a weight gradient's g are loaded by a subgroup's lanes together
    // and broadcast: the same values summed in the same order, so the same
    // bits as each lane's own loads. Direct tiles of 4 to 64 produced
    // channels (one row and two), every weight-gradient tile with g from
    // uniform slabs and from storage; odd shapes leave lanes past the last
    // image, pixel or channel, which load and store nothing.
    let open = |subgroups: bool, uniform: bool| {
        let gpu = Gpu::new(None).expect("a GPU adapter");
        gpu.set_subgroup_loads(subgroups);
        gpu.set_uniform_operands(uniform);
        gpu
    };
    let probe = open(true, true);
    let Some(sg) = probe.subgroup_size() else {
        assert!(
            !probe.is_cpu(),
            "{}: no subgroups of one size",
            probe.info.name
        );
        eprintln!(
            "{}: subgroups of several sizes; nothing shared",
            probe.info.name
        );
        return;
    };
    // A dry run lists the kernels it creates: those of a tile whose
    // kernel an earlier tile made (the same fitted shape) list none.
    let listed = std::cell::Cell::new(0);
    let all_say = |keys: &[String], w: &str| {
        listed.set(listed.get() + keys.len());
        keys.iter().all(|k| k.split(' ').any(|p| p == w))
    };
    let shared_word = format!("sg{sg}");
    for uniform in [true, false] {
        let (lanes, shared) = (open(false, uniform), open(true, uniform));
        for dims in [(3, 13, 20, 7, 9, 3, 1), (1, 12, 10, 9, 15, 3, 2)] {
            let case = ConvCase::new(dims, 51);
            let small_2d = conv::Tile::rows(8, 2, 8);
            for t in [conv::Tile::new(8, 64), conv::Tile::new(40, 4), small_2d] {
                let tag = format!("{} uniform {uniform} {}", case.tag(), t.name());
                let ((ya, dxa, ka), (yb, dxb, kb)) =
                    (case.direct(&shared, t), case.direct(&lanes, t));
                assert!(all_say(&ka, &shared_word), "{tag}: not shared: {ka:?}");
                assert!(all_say(&kb, "sg0"), "{tag}: shared: {kb:?}");
                assert!(bits_equal(&ya, &yb), "{tag}: forward differs");
                assert!(bits_equal(&dxa, &dxb), "{tag}: input gradient differs");
            }
            for t in conv::GemmTile::candidates(&lanes, 9) {
                let tag = format!("{} uniform {uniform} {}", case.tag(), t.name());
                let ((a, ka), (b, kb)) = (case.wgrad(&shared, t), case.wgrad(&lanes, t));
                assert!(all_say(&ka, &shared_word), "{tag}: not shared: {ka:?}");
                assert!(all_say(&kb, "sg0"), "{tag}: shared: {kb:?}");
                assert!(bits_equal(&a, &b), "{tag}: weight gradient differs");
            }
        }
    }
    assert!(listed.get() > 0, "no kernel was checked for its loads");
}

#[test]
fn summed_channel_groups_for_uniform_weights_match_the_reference() {
    // 130 summed channels of a 3x3 kernel (and 70 of a 4x4) are more than
    // a 16-channel tile's uniform weight slice holds: they are summed in
    // equal groups that accumulate in the output, under every variant,
    // with bias and ReLU applied once. (The dry run comes first: it lists
    // only the kernels it creates.)
    let gpu = uniform_gpu();
    let (n, c, o, h, w) = (1, 130, 20, 5, 6);
    let xt = up(&gpu, &[n, c, h, w], &rand_vec(41, n * c * h * w));
    let wt = up(&gpu, &[o, c, 3, 3], &rand_vec(42, o * c * 9));
    let v = Some(ConvVariant::Direct(conv::Tile::new(8, 16)));
    let (done, kernels) = gpu.dry_run(|| conv::conv2d_with(&gpu, &xt, &wt, None, 1, 1, true, v));
    done.unwrap();
    let keys: Vec<&String> = kernels.iter().map(|k| &k.key).collect();
    let uniform = |acc: &str| {
        keys.iter()
            .any(|k| k.starts_with("direct") && k.contains(" u1 ") && k.contains(acc))
    };
    assert!(
        uniform(" a0 ") && uniform(" a1 "),
        "no first and accumulating uniform-weight kernels among {keys:?}"
    );
    conv_all_variants(&gpu, (2, 130, 20, 5, 6, 3, 1, 1));
    conv_all_variants(&gpu, (1, 70, 17, 7, 9, 4, 2, 1));
}

#[test]
fn uniform_gradient_slabs_match_the_reference() {
    // On CPU adapters the weight gradient reads g through 64 KiB uniform
    // slabs of whole rows: here 16-channel rows of 64 columns, 16 to a
    // slab, over 120 rows (the last slab half full, so its last row chunks
    // store zeros), a second block of 4 channels, and a 256 KiB storage
    // window that holds three slabs at a time (partial sums added in
    // batches).
    let gpu = uniform_gpu();
    gpu.set_binding_limit(256 << 10);
    let (n, c, o, h, w) = (3, 12, 20, 40, 64);
    let (_, _, g) = conv_geom(h, w, 3, 1, 1);
    let (x, dy) = (rand_vec(31, n * c * h * w), rand_vec(32, n * o * h * w));
    let dw_ref = cpu::conv2d_backward_weight(&to64(&dy), (n, o, h, w), &to64(&x), (c, h, w), g);
    let (xt, dyt) = (up(&gpu, &[n, c, h, w], &x), up(&gpu, &[n, o, h, w], &dy));
    let v = Some(WgradVariant::Gemm(conv::GemmTile::new(16, 8, 8).with_ct(2)));
    let dwt = stale(&gpu, &[o, c, 3, 3]);
    let run = |acc| conv::conv2d_backward_weight_with(&gpu, &dyt, &xt, &dwt, 1, 1, acc, v);
    let (done, kernels) = gpu.dry_run(|| run(false));
    done.unwrap();
    assert!(
        kernels
            .iter()
            .any(|k| k.key.starts_with("wgrad") && k.key.contains(" u1 ")),
        "no uniform-slab kernel among {:?}",
        kernels.iter().map(|k| &k.key).collect::<Vec<_>>()
    );
    run(false).unwrap();
    assert_close("slabs dw", &read(&gpu, &dwt), &dw_ref, 5e-4, 1e-4);
    run(true).unwrap();
    let twice: Vec<f64> = dw_ref.iter().map(|v| 2.0 * v).collect();
    assert_close(
        "slabs dw accumulated",
        &read(&gpu, &dwt),
        &twice,
        1e-3,
        1e-4,
    );
}

#[test]
fn texel_and_storage_inputs_give_bit_identical_weight_gradients() {
    // On CPU adapters the weight gradient reads its padded input as texels
    // of a texture (`Gpu::texel_operands`); the storage path sums the same
    // values in the same order. Every tile, 3x3 (stride 1 and 2) and 1x1,
    // with g from uniform slabs and from storage; more than one texture
    // row of texels (4096) in the first shape. Devices of their own per
    // shape: a dry run lists new kernels only.
    let open = |texels: bool, uniform: bool| {
        let gpu = Gpu::new(None).expect("a GPU adapter");
        gpu.set_texel_operands(texels);
        gpu.set_uniform_operands(uniform);
        assert_eq!(
            gpu.texel_operands(),
            texels,
            "{} has no 4096-texel rows",
            gpu.info.name
        );
        gpu
    };
    for uniform in [true, false] {
        // The second shape's rows of 15 are padded from scalar loads; the
        // storage device reads the last two's sources with borders (no
        // padded copy).
        for (n, c, o, h, w, k, s) in [
            (2, 19, 20, 20, 24, 3, 1),
            (1, 12, 10, 9, 15, 3, 2),
            (2, 9, 6, 5, 8, 1, 1),
            (1, 17, 6, 5, 32, 3, 1),
        ] {
            let (storage, texels) = (open(false, uniform), open(true, uniform));
            let x = rand_vec(41, n * c * h * w);
            let (oh, ow, _) = conv_geom(h, w, k, s, 1);
            let dy = rand_vec(42, n * o * oh * ow);
            let run = |gpu: &Gpu, t: conv::GemmTile| {
                let (xt, dyt) = (up(gpu, &[n, c, h, w], &x), up(gpu, &[n, o, oh, ow], &dy));
                let dwt = stale(gpu, &[o, c, k, k]);
                let v = Some(WgradVariant::Gemm(t));
                let (done, kernels) = gpu.dry_run(|| {
                    conv::conv2d_backward_weight_with(gpu, &dyt, &xt, &dwt, s, 1, false, v)
                });
                done.unwrap();
                conv::conv2d_backward_weight_with(gpu, &dyt, &xt, &dwt, s, 1, false, v).unwrap();
                let wgrad = kernels.iter().find(|k| k.key.starts_with("wgrad")).unwrap();
                (read(gpu, &dwt), wgrad.key.clone())
            };
            let mut first = None;
            for t in conv::GemmTile::candidates(&storage, k * k) {
                let tag = format!(
                    "n{n} c{c} o{o} {h}x{w} k{k} s{s} {} uniform {uniform}",
                    t.name()
                );
                let ((a, ka), (b, kb)) = (run(&texels, t), run(&storage, t));
                let word = |key: &str, w: &str| key.split(' ').any(|k| k == w);
                assert!(
                    word(&ka, "t1") && word(&kb, "t0"),
                    "{tag}: kernels {ka} / {kb}"
                );
                let borders = match w {
                    32 => Some("e-1,-1"),
                    8 => Some("e0,0"),
                    _ => None,
                };
                assert_eq!(
                    borders.is_some_and(|e| word(&kb, e)),
                    borders.is_some(),
                    "{tag}: {kb}"
                );
                assert!(bits_equal(&a, &b), "{tag}: texel and storage inputs differ");
                first.get_or_insert((t, a));
            }
            // A tile reading storage (a long run's rival) does so on a
            // texel device too (one of its own: a dry run lists new
            // kernels only), g included: without slabs, the same bits;
            // g's row chunks from storage sum in another order than the
            // slabs', so those are checked against the reference.
            let (t, a) = first.unwrap();
            let fresh = Gpu::new(None).expect("a GPU adapter");
            fresh.set_uniform_operands(uniform);
            let (r, kr) = run(&fresh, t.reading_storage());
            let word = |w: &str| kr.split(' ').any(|k| k == w);
            assert!(word("t0") && word("u0"), "{}: kernel {kr}", t.name());
            match uniform && fresh.uniform_operands() {
                false => assert!(bits_equal(&a, &r), "{}: storage reads differ", t.name()),
                true => {
                    let (_, _, g) = conv_geom(h, w, k, s, 1);
                    let dy = to64(&dy);
                    let want =
                        cpu::conv2d_backward_weight(&dy, (n, o, oh, ow), &to64(&x), (c, h, w), g);
                    let tag = format!("{} g from storage", t.name());
                    assert_close(&tag, &r, &want, 5e-4, 1e-4);
                }
            }
        }
    }
}

#[test]
fn texel_and_storage_inputs_give_bit_identical_direct_passes() {
    // In long runs (training) on CPU adapters the direct kernels read their
    // input as texels too, padded copies and inputs read as they are; the
    // storage path sums the same values in the same order. Every tile for
    // the 3x3 forward and input gradient; the training tile for stride 2,
    // 1x1 (a source read as is) and the stride-2 transposed convolution.
    let open = |texels: bool| {
        let gpu = Gpu::new(None).expect("a GPU adapter");
        gpu.set_texel_operands(texels);
        gpu.variants().set_long_run(true);
        gpu
    };
    let (storage, texels) = (open(false), open(true));
    assert!(
        texels.texel_operands(),
        "{} has no 4096-texel rows",
        texels.info.name
    );
    let training = |k, s, o, ow| conv::Tile::rule(true, true, (k, s), o, ow);
    // The second shape's rows of 14 are padded from scalar loads.
    for (n, c, o, h, w, k, s) in [
        (2, 19, 20, 20, 24, 3, 1),
        (1, 12, 10, 9, 14, 3, 2),
        (2, 9, 6, 5, 8, 1, 1),
    ] {
        let (oh, ow, _) = conv_geom(h, w, k, s, 1);
        let (x, wt, b) = (
            rand_vec(51, n * c * h * w),
            rand_vec(52, o * c * k * k),
            rand_vec(53, o),
        );
        let dy = rand_vec(54, n * o * oh * ow);
        let run = |gpu: &Gpu, t: conv::Tile| {
            let v = Some(ConvVariant::Direct(t));
            let (xt, wtt, bt) = (
                up(gpu, &[n, c, h, w], &x),
                up(gpu, &[o, c, k, k], &wt),
                up(gpu, &[o], &b),
            );
            let dyt = up(gpu, &[n, o, oh, ow], &dy);
            recorded_pair(gpu, || {
                let y = conv::conv2d_with(gpu, &xt, &wtt, Some(&bt), s, 1, true, v)?;
                let dx = conv::conv2d_backward_input_with(gpu, &dyt, &wtt, (h, w), s, 1, v)?;
                Ok((y, dx))
            })
        };
        // Pixel-quad tiles run a 3x3 as their plain tile, already listed
        // (a dry run lists new kernels only).
        let tiles = match (k, s) {
            (3, 1) => conv::Tile::candidates(&storage)
                .into_iter()
                .filter(|t| !t.quads)
                .collect(),
            _ => vec![training(k, s, o, ow)],
        };
        for t in tiles {
            let tag = format!("n{n} c{c} o{o} {h}x{w} k{k} s{s} {}", t.name());
            assert_texels_match_storage(&tag, run(&texels, t), run(&storage, t));
        }
        // A tile reading storage (a long run's rival) does so on a texel
        // device too (one of its own: a dry run lists new kernels only),
        // weights included where they would go through a uniform binding
        // (these few summed channels are not split into groups, so the
        // bits stay).
        let fresh = open(true);
        let t = training(k, s, o, ow);
        let tag = format!("n{n} c{c} o{o} {h}x{w} k{k} s{s} {} storage", t.name());
        let (a, b) = (run(&fresh, t), run(&fresh, t.reading_storage()));
        let uniform_w = |keys: &[String]| keys.iter().any(|k| k.contains(" u1 "));
        assert_eq!(
            uniform_w(&a.1),
            fresh.uniform_operands(),
            "{tag}: {:?}",
            a.1
        );
        assert!(
            !uniform_w(&b.1),
            "{tag}: storage read uniform weights {:?}",
            b.1
        );
        assert_texels_match_storage(&tag, a, b);
    }
    let (n, c, o, h, w) = (2, 10, 12, 6, 7);
    let (x, wt) = (rand_vec(55, n * c * h * w), rand_vec(56, c * o * 16));
    let dy = rand_vec(57, n * o * h * 2 * w * 2);
    let run = |gpu: &Gpu| {
        let v = Some(ConvVariant::Direct(training(4, 1, o, 2 * w)));
        let (xt, wtt) = (up(gpu, &[n, c, h, w], &x), up(gpu, &[c, o, 4, 4], &wt));
        let dyt = up(gpu, &[n, o, h * 2, w * 2], &dy);
        recorded_pair(gpu, || {
            let y = conv::tconv2d_with(gpu, &xt, &wtt, None, 2, false, v)?;
            let dx = conv::tconv2d_backward_input_with(gpu, &dyt, &wtt, 2, v)?;
            Ok((y, dx))
        })
    };
    assert_texels_match_storage("tconv4x4 s2", run(&texels), run(&storage));
}

#[test]
fn smaller_workgroups_give_bit_identical_direct_passes() {
    // A long run on a CPU adapter runs narrow rows flat and shrinks the
    // workgroups of dispatches with few invocations (two images of 10x10
    // flat: 16 invocations of 16 pixels) so that every CPU thread gets
    // some; a first scan keeps rows and workgroups of 64.
    // Devices of their own: a dry run lists only kernels not yet made.
    let open = |long: bool| {
        let gpu = Gpu::new(None).expect("a GPU adapter");
        gpu.variants().set_long_run(long);
        gpu.set_texel_operands(false);
        gpu
    };
    let (long_run, plain) = (open(true), open(false));
    let (n, c, o, h, w) = (2, 9, 10, 10, 10);
    let (x, wt, b) = (
        rand_vec(61, n * c * h * w),
        rand_vec(62, o * c * 9),
        rand_vec(63, o),
    );
    let dy = rand_vec(64, n * o * h * w);
    let v = Some(ConvVariant::Direct(conv::Tile::new(16, 16)));
    let run = |gpu: &Gpu| {
        let (xt, wtt, bt) = (
            up(gpu, &[n, c, h, w], &x),
            up(gpu, &[o, c, 3, 3], &wt),
            up(gpu, &[o], &b),
        );
        let dyt = up(gpu, &[n, o, h, w], &dy);
        recorded_pair(gpu, || {
            let y = conv::conv2d_with(gpu, &xt, &wtt, Some(&bt), 1, 1, true, v)?;
            let dx = conv::conv2d_backward_input_with(gpu, &dyt, &wtt, (h, w), 1, 1, v)?;
            Ok((y, dx))
        })
    };
    let ((small, small_keys), (wide, wide_keys)) = (run(&long_run), run(&plain));
    let direct = |keys: &[String], wg: &str, flat: &str| {
        let d: Vec<&String> = keys.iter().filter(|k| k.starts_with("direct")).collect();
        !d.is_empty() && d.iter().all(|k| k.contains(wg) && k.contains(flat))
    };
    assert!(
        direct(&small_keys, "-wg8 ", " f1") && direct(&wide_keys, "-wg64 ", " f0"),
        "kernels {small_keys:?} / {wide_keys:?}"
    );
    assert!(bits_equal(&small.0, &wide.0), "forward differs");
    assert!(bits_equal(&small.1, &wide.1), "input gradient differs");
}

/// A forward and input-gradient pass's outputs, with the kernels a dry
/// run of it lists.
type Recorded = ((Vec<f32>, Vec<f32>), Vec<String>);

fn recorded_pair(gpu: &Gpu, pass: impl Fn() -> engine::Result<(Tensor, Tensor)>) -> Recorded {
    let (done, kernels) = gpu.dry_run(|| pass().map(drop));
    done.unwrap();
    let (y, dx) = pass().unwrap();
    let keys = kernels.into_iter().map(|k| k.key).collect();
    ((read(gpu, &y), read(gpu, &dx)), keys)
}

/// Bit-identical outputs, with every direct kernel of the texel device
/// reading texels and none of the storage device's.
fn assert_texels_match_storage(tag: &str, (a, ka): Recorded, (b, kb): Recorded) {
    assert_direct_keys(tag, &ka, &kb);
    assert!(bits_equal(&a.0, &b.0), "{tag}: forward differs");
    assert!(bits_equal(&a.1, &b.1), "{tag}: input gradient differs");
}

/// Every direct kernel of the texel device read texels, none of the
/// storage device's did, and there was at least one.
fn assert_direct_keys(tag: &str, texels: &[String], storage: &[String]) {
    let direct = |keys: &[String], t: &str| {
        let d: Vec<&String> = keys.iter().filter(|k| k.starts_with("direct")).collect();
        !d.is_empty() && d.iter().all(|k| k.split(' ').any(|w| w == t))
    };
    assert!(
        direct(texels, "t1") && direct(storage, "t0"),
        "{tag}: kernels {texels:?} / {storage:?}"
    );
}

/// A device of its own that reads small operands through uniform bindings.
fn uniform_gpu() -> Gpu {
    let gpu = Gpu::new(None).expect("a GPU adapter");
    gpu.set_uniform_operands(true);
    assert!(
        gpu.uniform_operands(),
        "{} has no 64 KiB uniform binding",
        gpu.info.name
    );
    gpu
}

fn bits_equal(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(p, q)| p.to_bits() == q.to_bits())
}

#[test]
fn generated_kernels_validate_in_naga() {
    // What the GPU compiles at first use, checked ahead of time for every
    // variant and geometry the network uses, and kept small enough for the
    // WGSL front end.
    for source in conv::generated_sources() {
        let module = naga::front::wgsl::parse_str(&source.1)
            .unwrap_or_else(|e| panic!("{}: {}", source.0, e.emit_to_string(&source.1)));
        naga::valid::Validator::new(
            naga::valid::ValidationFlags::all(),
            naga::valid::Capabilities::all(),
        )
        .validate(&module)
        .unwrap_or_else(|e| panic!("{}: {e:?}", source.0));
        let largest = module
            .entry_points
            .iter()
            .map(|e| &e.function)
            .chain(module.functions.iter().map(|(_, f)| f))
            .map(|f| f.expressions.len())
            .max()
            .unwrap_or(0);
        // naga's WGSL front end takes time quadratic in a function's
        // expressions, at every process start (before any shader cache):
        // a 16x64 tile's 53688 took 0.5 s; 25000 take about 0.1 s.
        assert!(
            largest <= 25_000,
            "{}: a function of {largest} expressions",
            source.0
        );
    }
}

/// A fresh device whose choices live in `path`, in `mode`.
fn gpu_with_file(mode: TuneMode, path: &std::path::Path) -> Gpu {
    let mut g = Gpu::new(None).expect("a GPU adapter");
    let v = Variants::with_file(
        mode,
        &g.info.name,
        &g.info.driver_info,
        Some(path.to_path_buf()),
    );
    g.set_variants(v);
    g
}

fn tune_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("engine-tune-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// One conv forward and weight gradient on fixed data.
fn conv_pair(gpu: &Gpu) -> (Vec<f32>, Vec<f32>) {
    let (n, c, o, h, w) = (2, 6, 8, 12, 12);
    let x = up(gpu, &[n, c, h, w], &rand_vec(21, n * c * h * w));
    let wt = up(gpu, &[o, c, 3, 3], &rand_vec(22, o * c * 9));
    let b = up(gpu, &[o], &rand_vec(23, o));
    let dy = up(gpu, &[n, o, h, w], &rand_vec(24, n * o * h * w));
    let y = read(gpu, &conv::conv2d(gpu, &x, &wt, &b, 1, 1).unwrap());
    let dw = stale(gpu, &[o, c, 3, 3]);
    conv::conv2d_backward_weight(gpu, &dy, &x, &dw, 1, 1, false).unwrap();
    (y, read(gpu, &dw))
}

#[test]
fn tuning_writes_winners_that_later_runs_reuse_bit_for_bit() {
    let path = tune_dir("reuse").join("tune.json");
    let tuned = gpu_with_file(TuneMode::On, &path);
    let first = conv_pair(&tuned);
    let table = tuned.variants().table();
    assert_eq!(table.len(), 2, "one winner per tuned shape: {table:?}");
    let text = std::fs::read_to_string(&path).expect("the tuning file is written");
    for (key, winner) in &table {
        assert!(
            text.contains(key.as_str()) && text.contains(winner.as_str()),
            "{key} -> {winner} in {text}"
        );
    }
    // Two later runs that read the file choose the same and agree exactly.
    let a = conv_pair(&gpu_with_file(TuneMode::Cache, &path));
    let b = conv_pair(&gpu_with_file(TuneMode::Cache, &path));
    assert_eq!(a, b, "same tuning file, same bits");
    assert_eq!(a, first, "the tuned run itself used the winners");
}

#[test]
fn corrupt_or_foreign_tuning_files_are_ignored_and_rebuilt() {
    let dir = tune_dir("corrupt");
    for (name, content) in [
        ("garbage.json", "{ this is not json".to_owned()),
        (
            "foreign.json",
            r#"{"adapter":"Some Other GPU","driver":"9.9","winners":{"conv2d n2 c6 o8 12x12 k3 s1 d1":"no-such-variant"}}"#.to_owned(),
        ),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, &content).unwrap();
        let g = gpu_with_file(TuneMode::Cache, &path);
        assert!(g.variants().table().is_empty(), "{name}: nothing loaded");
        // Rules still give the reference numbers.
        let (y, _) = conv_pair(&g);
        assert!(y.iter().all(|v| v.is_finite()), "{name}");
        // Tuning rewrites the file as a valid one for this adapter.
        let t = gpu_with_file(TuneMode::On, &path);
        conv_pair(&t);
        let again = gpu_with_file(TuneMode::Cache, &path);
        assert_eq!(again.variants().table().len(), 2, "{name}: rebuilt and readable");
    }
}

#[test]
fn a_long_run_times_the_rule_against_its_rival_once_and_reuses_the_winner() {
    // Training on a CPU adapter without a tuned choice: each wide-tile
    // shape (stride 2 on rows of 32 or more) times the rule against the
    // 40-pixel tile once, remembers the faster under its own key, and
    // later runs take it without timing; without timing the 40-pixel
    // tile runs.
    let path = tune_dir("rivals").join("tune.json");
    let open = |mode, long_run| {
        let g = gpu_with_file(mode, &path);
        g.variants().set_long_run(long_run);
        g
    };
    // 64 summed channels: the wide tile splits them into uniform groups,
    // so its bits differ from the 40-pixel tile's.
    let (o, w) = (64, 40);
    let forward = seeded_conv((1, 64, o, 10, 2 * w), (2, 1), 61);
    let first = open(TuneMode::Cache, true);
    if !first.is_cpu() {
        eprintln!("{}: not a CPU adapter, no long-run rivals", first.info.name);
        return;
    }
    let rule = ConvVariant::rule(&first, (3, 2), o, w);
    assert_eq!(rule, ConvVariant::Direct(conv::Tile::new(8, 64)));
    let tile40 = conv::Tile::new(40, 16);
    let (lead, rivals) = ConvVariant::long_run_rivals(&first, rule, (3, 2, w));
    // With texel operands (on by default on CPU adapters) the rule
    // reading storage leads at stride 2 (the texel tile's copy of the
    // input is four times the output), the 40-pixel tile reading storage
    // and its texel tile its rivals; the 2-D tile is a rival too.
    // Without, the 40-pixel tile leads and the rule is its rival.
    let reads_other = first.texel_operands() || first.uniform_operands();
    let (tile40, storage40) = (
        ConvVariant::Direct(tile40),
        ConvVariant::Direct(tile40.reading_storage()),
    );
    let storage_rule = ConvVariant::Direct(conv::Tile::new(8, 64).reading_storage());
    let two_d = ConvVariant::Direct(conv::Tile::rows(16, 4, 16).reading_storage());
    let (want_lead, want) = match reads_other {
        true => (storage_rule, vec![storage40, tile40, two_d]),
        false => (tile40, vec![rule, two_d]),
    };
    assert_eq!((lead, &rivals), (want_lead, &want));
    let short_row = ConvVariant::rule(&first, (3, 1), o, 20);
    let (short_lead, short_rivals) = ConvVariant::long_run_rivals(&first, short_row, (3, 1, 20));
    assert_eq!(short_lead, short_row, "a short row leads with the rule");
    assert_eq!(short_rivals.len(), usize::from(reads_other) + 1);
    assert_eq!(short_rivals.last(), Some(&two_d));
    // A 1x1 kernel has no rows to share: no 2-D rival; and it keeps its
    // texel lead, as does a 4x4 stride-2 pass.
    let (one_lead, one_by_one) = ConvVariant::long_run_rivals(&first, short_row, (1, 1, 20));
    assert!(!one_by_one.contains(&two_d));
    assert_eq!(one_lead, short_row);
    let (four_lead, _) = ConvVariant::long_run_rivals(&first, rule, (4, 2, w));
    assert_eq!(four_lead, tile40);
    let y = forward(&first, None);
    let table = first.variants().table();
    assert_eq!(table.len(), 1, "one timed shape: {table:?}");
    let (key, winner) = table.iter().next().unwrap();
    assert!(
        key.ends_with(
            "(long-run rivals, slabs, texels or storage, 2-D tiles, pixel quads, blocks, wide storage)"
        ),
        "{key}"
    );
    let field: Vec<ConvVariant> = std::iter::once(lead).chain(rivals).collect();
    let chosen = field.iter().find(|v| &v.name() == winner);
    let chosen = chosen.unwrap_or_else(|| panic!("{winner} is not one of {field:?}"));
    assert!(
        bits_equal(&y, &forward(&first, Some(*chosen))),
        "ran the winner"
    );
    // A later long run reads the file: the same bits, nothing timed anew.
    let again = open(TuneMode::Cache, true);
    assert!(bits_equal(&y, &forward(&again, None)), "reused the winner");
    assert_eq!(again.variants().table(), table);
    // A short run keeps to the rule and times nothing; so does `off`.
    let short = open(TuneMode::Cache, false);
    assert!(bits_equal(
        &forward(&short, None),
        &forward(&short, Some(ConvVariant::rule(&short, (3, 2), o, w)))
    ));
    assert_eq!(short.variants().table(), table);
    let off = open(TuneMode::Off, true);
    let y = forward(&off, None);
    assert!(bits_equal(&y, &forward(&off, Some(lead))), "off: the lead");
    assert!(
        !bits_equal(&y, &forward(&off, Some(rule))),
        "the pair differs"
    );
}

#[test]
fn narrow_rows_of_a_long_run_run_the_40_pixel_tile_and_time_its_rivals() {
    // A stride-1 3x3 pass with rows under 32 (flat class) in training: the
    // rule is the 40-pixel, 16-channel tile (a 16 x 64 tile won almost
    // nowhere), run as is without timing, and timed once against its
    // rivals with timing allowed. Rows under 32 laid out as rows take the
    // 8 x 64 tile, which is no rival here.
    let path = tune_dir("narrow-rivals").join("tune.json");
    let open = |mode| {
        let g = gpu_with_file(mode, &path);
        g.variants().set_long_run(true);
        g
    };
    let o = 64;
    let forward = seeded_conv((2, 64, o, 10, 10), (1, 2), 71);
    let off = open(TuneMode::Off);
    if !off.is_cpu() {
        eprintln!("{}: not a CPU adapter, no long-run rivals", off.info.name);
        return;
    }
    let tile40 = ConvVariant::Direct(conv::Tile::new(40, 16));
    let rule = ConvVariant::rule(&off, (3, 1), o, 32);
    assert_eq!(rule, tile40, "the flat class's rule");
    let by_rows = ConvVariant::Direct(conv::Tile::new(8, 64));
    assert_eq!(
        ConvVariant::rule(&off, (3, 1), o, 10),
        by_rows,
        "rows of 10"
    );
    let y = forward(&off, None);
    assert!(
        bits_equal(&y, &forward(&off, Some(tile40))),
        "off: the 40-pixel tile"
    );
    assert!(off.variants().table().is_empty(), "off: nothing timed");
    let cache = open(TuneMode::Cache);
    forward(&cache, None);
    let table = cache.variants().table();
    assert_eq!(table.len(), 1, "one timed shape: {table:?}");
    let winner = table.values().next().unwrap();
    // The winner is the lead or one of its rivals: on some CPUs the
    // 2-D tile wins, on others a one-row tile.
    let (lead, rivals) = ConvVariant::long_run_rivals(&off, rule, (3, 1, 32));
    assert_eq!(lead, tile40, "the 40-pixel tile leads");
    assert!(
        !rivals.is_empty() && !rivals.contains(&by_rows),
        "{rivals:?}"
    );
    assert!(
        std::iter::once(lead)
            .chain(rivals)
            .any(|v| &v.name() == winner),
        "{winner} is one of the rivals"
    );
}

/// A 3x3 forward with bias of `(n, c, o, h, w)`, stride and dilation
/// `(stride, dil)`, on data seeded from `seed`, run with the given
/// variant or, with `None`, the one the device chooses.
fn seeded_conv(
    (n, c, o, h, w): (usize, usize, usize, usize, usize),
    (stride, dil): (usize, usize),
    seed: u64,
) -> impl Fn(&Gpu, Option<ConvVariant>) -> Vec<f32> {
    let (x, wt, b) = (
        rand_vec(seed, n * c * h * w),
        rand_vec(seed + 1, o * c * 9),
        rand_vec(seed + 2, o),
    );
    move |gpu: &Gpu, v: Option<ConvVariant>| {
        let (xt, wtt, bt) = (
            up(gpu, &[n, c, h, w], &x),
            up(gpu, &[o, c, 3, 3], &wt),
            up(gpu, &[o], &b),
        );
        read(
            gpu,
            &conv::conv2d_with(gpu, &xt, &wtt, Some(&bt), stride, dil, false, v).unwrap(),
        )
    }
}
