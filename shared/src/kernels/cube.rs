//! [`FusedKernels`] on CubeCL devices (wgpu, WebGPU, CUDA): each fused op
//! and its backward as one or two kernels.
//!
//! Composed from burn's ops, a step of these ops is several kernels even
//! with burn's fusion — weight normalisation's backward alone is two
//! reductions and the element-wise work around them, nine dispatches — and
//! on a GPU this model's time goes to dispatches, not arithmetic (README,
//! "On a GPU"). Here each forward is one kernel and each backward with
//! per-feature gradients two: the element-wise work writes its outputs and
//! partial column sums over chunks of [`CHUNK_ROWS`] rows, and a second
//! kernel adds the chunks in order (no atomics: these sums are the same bits
//! on every run; burn's own reductions elsewhere in a step may still use
//! atomics when autotune picks them). Weight normalisation
//! works on one column per unit, its norm and product in one kernel.
//!
//! Launches are bounds-checked (CubeCL's `launch`): these kernels stream
//! memory once, so the checks cost little, and an index mistake cannot
//! write outside a buffer. Only f32 tensors take these kernels; others (f16 weights, say) take the
//! composition of burn's ops ([`super::reference`]).

use burn::backend::TensorMetadata;
use burn::backend::tensor::FloatTensor;
use burn::tensor::{DType, Shape};
use burn_cubecl::CubeBackend;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

use super::{AdamWStep, FusedKernels, reference};
use crate::flow::Direction;

/// Units per workgroup.
const UNITS: usize = 256;
/// Rows per chunk of a column sum's first pass: each unit adds this many
/// rows of one column.
const CHUNK_ROWS: usize = 64;
/// `1/√2` as the composed residual rounds it (`f64` to `f32`).
const FRAC_1_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;

/// `(x + bias) · σ(β (x + bias))`.
#[cube(launch)]
fn swish_kernel(x: &[f32], bias: &[f32], beta: &[f32], out: &mut [f32], features: usize, total: usize) {
    let i = ABSOLUTE_POS;
    if i < total {
        let f = i % features;
        let u = x[i] + bias[f];
        out[i] = u / (1.0f32 + f32::exp(-(u * beta[f])));
    }
}

/// Swish's backward over one chunk of rows of one column: `∂x` and the
/// chunk's sums of `∂x` (the bias's gradient) and of `g u² σ(1 − σ)` (β's).
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn swish_backward_kernel(
    x: &[f32],
    bias: &[f32],
    beta: &[f32],
    grad: &[f32],
    grad_x: &mut [f32],
    partials: &mut [f32],
    rows: usize,
    chunks: usize,
    features: usize,
) {
    let unit = ABSOLUTE_POS;
    if unit < chunks * features {
        let f = unit % features;
        let chunk = unit / features;
        let (b, s_beta) = (bias[f], beta[f]);
        let mut sum_x = 0.0f32;
        let mut sum_beta = 0.0f32;
        let end = usize::min(rows, (chunk + 1) * CHUNK_ROWS);
        for r in chunk * CHUNK_ROWS..end {
            let i = r * features + f;
            let u = x[i] + b;
            let bu = u * s_beta;
            let s = 1.0f32 / (1.0f32 + f32::exp(-bu));
            let ds = s * (1.0f32 - s);
            let g = grad[i];
            let gx = g * (s + bu * ds);
            grad_x[i] = gx;
            sum_x += gx;
            sum_beta += g * (u * u * ds);
        }
        partials[chunk * 2 * features + f] = sum_x;
        partials[chunk * 2 * features + features + f] = sum_beta;
    }
}

/// `(x + h + bias) / √2`.
#[cube(launch)]
fn residual_kernel(x: &[f32], h: &[f32], bias: &[f32], out: &mut [f32], features: usize, total: usize) {
    let i = ABSOLUTE_POS;
    if i < total {
        out[i] = (x[i] + h[i] + bias[i % features]) * FRAC_1_SQRT_2;
    }
}

/// The residual's backward over one chunk of one column: `g / √2` and the
/// chunk's sum of it.
#[cube(launch)]
fn residual_backward_kernel(
    grad: &[f32],
    scaled: &mut [f32],
    partials: &mut [f32],
    rows: usize,
    chunks: usize,
    features: usize,
) {
    let unit = ABSOLUTE_POS;
    if unit < chunks * features {
        let f = unit % features;
        let chunk = unit / features;
        let mut sum = 0.0f32;
        let end = usize::min(rows, (chunk + 1) * CHUNK_ROWS);
        for r in chunk * CHUNK_ROWS..end {
            let i = r * features + f;
            let g = grad[i] * FRAC_1_SQRT_2;
            scaled[i] = g;
            sum += g;
        }
        partials[chunk * features + f] = sum;
    }
}

/// `x e^s + t` (or `(x − t) e^{−s}` when `inverse`), `s = tanh(s_raw a) m`,
/// `t = t_raw b m`.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn coupling_update_kernel(
    x: &[f32],
    s_raw: &[f32],
    t_raw: &[f32],
    s_scale: &[f32],
    t_scale: &[f32],
    mask: &[f32],
    out: &mut [f32],
    features: usize,
    total: usize,
    #[comptime] inverse: bool,
) {
    let i = ABSOLUTE_POS;
    if i < total {
        let f = i % features;
        let m = mask[f];
        let s = f32::tanh(s_raw[i] * s_scale[f]) * m;
        let t = t_raw[i] * t_scale[f] * m;
        if inverse {
            out[i] = (x[i] - t) * f32::exp(-s);
        } else {
            out[i] = x[i] * f32::exp(s) + t;
        }
    }
}

/// The coupling update's backward over one chunk of one column: the
/// gradients of `x`, `s_raw`, `t_raw` and the chunk's sums for `s_scale`
/// and `t_scale`.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn coupling_update_backward_kernel(
    x: &[f32],
    s_raw: &[f32],
    t_raw: &[f32],
    s_scale: &[f32],
    t_scale: &[f32],
    mask: &[f32],
    grad: &[f32],
    grad_x: &mut [f32],
    grad_s_raw: &mut [f32],
    grad_t_raw: &mut [f32],
    partials: &mut [f32],
    rows: usize,
    chunks: usize,
    features: usize,
    #[comptime] inverse: bool,
) {
    let unit = ABSOLUTE_POS;
    if unit < chunks * features {
        let f = unit % features;
        let chunk = unit / features;
        let (a, b, m) = (s_scale[f], t_scale[f], mask[f]);
        let mut sum_s = 0.0f32;
        let mut sum_t = 0.0f32;
        let end = usize::min(rows, (chunk + 1) * CHUNK_ROWS);
        for r in chunk * CHUNK_ROWS..end {
            let i = r * features + f;
            let g = grad[i];
            let th = f32::tanh(s_raw[i] * a);
            let s = th * m;
            // Forward: `∂s = g x e^s`, `∂t = g`; inverse: `∂s = −g y`,
            // `∂t = −g e^{−s}` with `y = (x − t) e^{−s}`.
            let e = if inverse { f32::exp(-s) } else { f32::exp(s) };
            let g_s = if inverse { -(g * ((x[i] - t_raw[i] * b * m) * e)) } else { g * x[i] * e };
            let g_t = if inverse { -(g * e) } else { g };
            grad_x[i] = g * e;
            let du = g_s * (1.0f32 - th * th) * m;
            let g_tm = g_t * m;
            grad_s_raw[i] = du * a;
            grad_t_raw[i] = g_tm * b;
            sum_s += du * s_raw[i];
            sum_t += g_tm * t_raw[i];
        }
        partials[chunk * 2 * features + f] = sum_s;
        partials[chunk * 2 * features + features + f] = sum_t;
    }
}

/// `Σ_f tanh(s_raw a) m` per row, one unit per row.
#[cube(launch)]
fn log_scale_kernel(s_raw: &[f32], s_scale: &[f32], mask: &[f32], out: &mut [f32], rows: usize, features: usize) {
    let r = ABSOLUTE_POS;
    if r < rows {
        let mut sum = 0.0f32;
        for f in 0..features {
            sum += f32::tanh(s_raw[r * features + f] * s_scale[f]) * mask[f];
        }
        out[r] = sum;
    }
}

/// The log-determinant's backward over one chunk of one column: `∂s_raw`
/// and the chunk's sum for `s_scale`.
#[cube(launch)]
// Rows index both `grad` and the `[M, F]` tensors.
#[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
fn log_scale_backward_kernel(
    s_raw: &[f32],
    s_scale: &[f32],
    mask: &[f32],
    grad: &[f32],
    grad_s_raw: &mut [f32],
    partials: &mut [f32],
    rows: usize,
    chunks: usize,
    features: usize,
) {
    let unit = ABSOLUTE_POS;
    if unit < chunks * features {
        let f = unit % features;
        let chunk = unit / features;
        let (a, m) = (s_scale[f], mask[f]);
        let mut sum = 0.0f32;
        let end = usize::min(rows, (chunk + 1) * CHUNK_ROWS);
        for r in chunk * CHUNK_ROWS..end {
            let i = r * features + f;
            let th = f32::tanh(s_raw[i] * a);
            let du = grad[r] * (1.0f32 - th * th) * m;
            grad_s_raw[i] = du * a;
            sum += du * s_raw[i];
        }
        partials[chunk * features + f] = sum;
    }
}

/// The second pass of a column sum: `out[v] = Σ_chunk partials[chunk, v]`,
/// chunks in order.
#[cube(launch)]
fn column_sums_kernel(partials: &[f32], out: &mut [f32], chunks: usize, columns: usize) {
    let v = ABSOLUTE_POS;
    if v < columns {
        let mut sum = 0.0f32;
        for chunk in 0..chunks {
            sum += partials[chunk * columns + v];
        }
        out[v] = sum;
    }
}

/// [`column_sums_kernel`] for two vectors side by side, `partials:
/// [chunks, 2 width]`: the first `width` columns' sums into `first`, the
/// others' into `second`.
#[cube(launch)]
fn column_sums_pair_kernel(partials: &[f32], first: &mut [f32], second: &mut [f32], chunks: usize, width: usize) {
    let v = ABSOLUTE_POS;
    if v < width {
        let mut a = 0.0f32;
        let mut b = 0.0f32;
        for chunk in 0..chunks {
            a += partials[chunk * 2 * width + v];
            b += partials[chunk * 2 * width + width + v];
        }
        first[v] = a;
        second[v] = b;
    }
}

/// One AdamW update per element (see [`super::reference::adamw_update`]):
/// `β₁, 1 − β₁, β₂, 1 − β₂`, the bias corrections `c₁, c₂`, `ε`,
/// `keep = 1 − lr λ` and `lr` as launch arguments (no upload per step).
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn adamw_kernel(
    param: &[f32],
    grad: &[f32],
    moment_1: &[f32],
    moment_2: &[f32],
    grad_scale: &[f32],
    param_out: &mut [f32],
    moment_1_out: &mut [f32],
    moment_2_out: &mut [f32],
    total: usize,
    beta_1: f32,
    one_minus_beta_1: f32,
    beta_2: f32,
    one_minus_beta_2: f32,
    correction_1: f32,
    correction_2: f32,
    epsilon: f32,
    keep: f32,
    lr: f32,
) {
    let i = ABSOLUTE_POS;
    if i < total {
        let g = grad[i] * grad_scale[0];
        let m = moment_1[i] * beta_1 + g * one_minus_beta_1;
        let v = moment_2[i] * beta_2 + g * g * one_minus_beta_2;
        let delta = (m / correction_1) / (f32::sqrt(v / correction_2) + epsilon);
        param_out[i] = param[i] * keep - delta * lr;
        moment_1_out[i] = m;
        moment_2_out[i] = v;
    }
}

/// `g v / ‖v‖` per output column, one unit per column.
#[cube(launch)]
fn weight_norm_kernel(v: &[f32], g: &[f32], out: &mut [f32], inputs: usize, outputs: usize) {
    let o = ABSOLUTE_POS;
    if o < outputs {
        let mut squares = 0.0f32;
        for i in 0..inputs {
            let value = v[i * outputs + o];
            squares += value * value;
        }
        let scale = g[o] / f32::sqrt(squares);
        for i in 0..inputs {
            out[i * outputs + o] = v[i * outputs + o] * scale;
        }
    }
}

/// Weight normalisation's backward per output column: with `n = ‖v‖` and
/// `c = Σ_i grad · v`, `∂v = (g / n) grad − (g c / n³) v` and `∂g = c / n`.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn weight_norm_backward_kernel(
    v: &[f32],
    g: &[f32],
    grad: &[f32],
    grad_v: &mut [f32],
    grad_g: &mut [f32],
    inputs: usize,
    outputs: usize,
) {
    let o = ABSOLUTE_POS;
    if o < outputs {
        let mut squares = 0.0f32;
        let mut c = 0.0f32;
        for i in 0..inputs {
            let value = v[i * outputs + o];
            squares += value * value;
            c += grad[i * outputs + o] * value;
        }
        let n = f32::sqrt(squares);
        let a = g[o] / n;
        let b = g[o] * c / (n * n * n);
        for i in 0..inputs {
            let at = i * outputs + o;
            grad_v[at] = grad[at] * a - v[at] * b;
        }
        grad_g[o] = c / n;
    }
}

/// Workgroups of [`UNITS`] for `units` units.
fn cubes(units: usize) -> CubeCount {
    crate::decoder::gpu::cube_count(units.div_ceil(UNITS))
}

fn workgroup() -> CubeDim {
    CubeDim::new_1d(UNITS as u32)
}

/// Whether every tensor is f32 (the kernels' type).
fn all_f32(tensors: &[&CubeTensor]) -> bool {
    tensors.iter().all(|t| t.dtype == DType::F32)
}

/// A new, uninitialised f32 tensor on `like`'s device.
fn empty_like(like: &CubeTensor, shape: Shape) -> CubeTensor {
    empty_device::<f32>(like.client.clone(), like.device.clone(), shape)
}

/// The kernel argument of a tensor made contiguous beforehand.
fn arg(tensor: &CubeTensor) -> BufferArg {
    tensor.clone().into_buffer_arg()
}

/// `[M, F]` rows and features of a 2-D tensor.
fn rows_features(t: &CubeTensor) -> (usize, usize) {
    let shape = t.shape();
    (shape[0], shape[1])
}

/// Column sums of `partials: [chunks, columns]`.
fn column_sums(partials: &CubeTensor, chunks: usize, columns: usize) -> CubeTensor {
    let sums = empty_like(partials, Shape::new([columns]));
    column_sums_kernel::launch(
        &partials.client,
        cubes(columns),
        workgroup(),
        arg(partials),
        arg(&sums),
        chunks,
        columns,
    );
    sums
}

/// Column sums of `partials: [chunks, 2 width]`, as two vectors of `width`.
fn column_sums_pair(partials: &CubeTensor, chunks: usize, width: usize) -> (CubeTensor, CubeTensor) {
    let (first, second) = (empty_like(partials, Shape::new([width])), empty_like(partials, Shape::new([width])));
    column_sums_pair_kernel::launch(
        &partials.client,
        cubes(width),
        workgroup(),
        arg(partials),
        arg(&first),
        arg(&second),
        chunks,
        width,
    );
    (first, second)
}

impl FusedKernels for CubeBackend {
    fn adamw_update(
        param: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        moment_1: FloatTensor<Self>,
        moment_2: FloatTensor<Self>,
        grad_scale: FloatTensor<Self>,
        step: AdamWStep,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        if !all_f32(&[&param, &grad, &moment_1, &moment_2, &grad_scale]) {
            return reference::adamw_update::<Self>(param, grad, moment_1, moment_2, grad_scale, step);
        }
        let [param, grad, moment_1, moment_2, grad_scale] =
            [param, grad, moment_1, moment_2, grad_scale].map(into_contiguous);
        let s = step.scalars();
        let shape = param.shape();
        let total = shape.num_elements();
        let [p, m, v] = [(); 3].map(|_| empty_like(&param, shape.clone()));
        adamw_kernel::launch(
            &param.client,
            cubes(total),
            workgroup(),
            arg(&param),
            arg(&grad),
            arg(&moment_1),
            arg(&moment_2),
            arg(&grad_scale),
            arg(&p),
            arg(&m),
            arg(&v),
            total,
            s.beta_1,
            s.one_minus_beta_1,
            s.beta_2,
            s.one_minus_beta_2,
            s.correction_1,
            s.correction_2,
            s.epsilon,
            s.keep,
            s.lr,
        );
        (p, m, v)
    }

    fn swish(x: FloatTensor<Self>, bias: FloatTensor<Self>, beta: FloatTensor<Self>) -> FloatTensor<Self> {
        if !all_f32(&[&x, &bias, &beta]) {
            return reference::swish::<Self>(x, bias, beta);
        }
        let [x, bias, beta] = [x, bias, beta].map(into_contiguous);
        let (rows, features) = rows_features(&x);
        let out = empty_like(&x, x.shape());
        let total = rows * features;
        swish_kernel::launch(
            &x.client,
            cubes(total),
            workgroup(),
            arg(&x),
            arg(&bias),
            arg(&beta),
            arg(&out),
            features,
            total,
        );
        out
    }

    fn swish_backward(
        x: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        if !all_f32(&[&x, &bias, &beta, &grad]) {
            return reference::swish_backward::<Self>(x, bias, beta, grad);
        }
        let [x, bias, beta, grad] = [x, bias, beta, grad].map(into_contiguous);
        let (rows, features) = rows_features(&x);
        let chunks = rows.div_ceil(CHUNK_ROWS);
        let grad_x = empty_like(&x, x.shape());
        let partials = empty_like(&x, Shape::new([chunks, 2 * features]));
        swish_backward_kernel::launch(
            &x.client,
            cubes(chunks * features),
            workgroup(),
            arg(&x),
            arg(&bias),
            arg(&beta),
            arg(&grad),
            arg(&grad_x),
            arg(&partials),
            rows,
            chunks,
            features,
        );
        let (grad_bias, grad_beta) = column_sums_pair(&partials, chunks, features);
        (grad_x, grad_bias, grad_beta)
    }

    fn weight_norm(v: FloatTensor<Self>, g: FloatTensor<Self>) -> FloatTensor<Self> {
        if !all_f32(&[&v, &g]) {
            return reference::weight_norm::<Self>(v, g);
        }
        let [v, g] = [v, g].map(into_contiguous);
        let (inputs, outputs) = rows_features(&v);
        let out = empty_like(&v, v.shape());
        weight_norm_kernel::launch(
            &v.client,
            cubes(outputs),
            workgroup(),
            arg(&v),
            arg(&g),
            arg(&out),
            inputs,
            outputs,
        );
        out
    }

    fn weight_norm_backward(
        v: FloatTensor<Self>,
        g: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        if !all_f32(&[&v, &g, &grad]) {
            return reference::weight_norm_backward::<Self>(v, g, grad);
        }
        let [v, g, grad] = [v, g, grad].map(into_contiguous);
        let (inputs, outputs) = rows_features(&v);
        let grad_v = empty_like(&v, v.shape());
        let grad_g = empty_like(&v, Shape::new([outputs]));
        weight_norm_backward_kernel::launch(
            &v.client,
            cubes(outputs),
            workgroup(),
            arg(&v),
            arg(&g),
            arg(&grad),
            arg(&grad_v),
            arg(&grad_g),
            inputs,
            outputs,
        );
        (grad_v, grad_g)
    }

    fn residual(x: FloatTensor<Self>, h: FloatTensor<Self>, bias: FloatTensor<Self>) -> FloatTensor<Self> {
        if !all_f32(&[&x, &h, &bias]) {
            return reference::residual::<Self>(x, h, bias);
        }
        let [x, h, bias] = [x, h, bias].map(into_contiguous);
        let (rows, features) = rows_features(&x);
        let out = empty_like(&x, x.shape());
        let total = rows * features;
        residual_kernel::launch(
            &x.client,
            cubes(total),
            workgroup(),
            arg(&x),
            arg(&h),
            arg(&bias),
            arg(&out),
            features,
            total,
        );
        out
    }

    fn residual_backward(grad: FloatTensor<Self>) -> (FloatTensor<Self>, FloatTensor<Self>) {
        if !all_f32(&[&grad]) {
            return reference::residual_backward::<Self>(grad);
        }
        let grad = into_contiguous(grad);
        let (rows, features) = rows_features(&grad);
        let chunks = rows.div_ceil(CHUNK_ROWS);
        let scaled = empty_like(&grad, grad.shape());
        let partials = empty_like(&grad, Shape::new([chunks, features]));
        residual_backward_kernel::launch(
            &grad.client,
            cubes(chunks * features),
            workgroup(),
            arg(&grad),
            arg(&scaled),
            arg(&partials),
            rows,
            chunks,
            features,
        );
        let grad_bias = column_sums(&partials, chunks, features);
        (scaled, grad_bias)
    }

    fn coupling_update(
        x: FloatTensor<Self>,
        s_raw: FloatTensor<Self>,
        t_raw: FloatTensor<Self>,
        s_scale: FloatTensor<Self>,
        t_scale: FloatTensor<Self>,
        mask: FloatTensor<Self>,
        direction: Direction,
    ) -> FloatTensor<Self> {
        if !all_f32(&[&x, &s_raw, &t_raw, &s_scale, &t_scale, &mask]) {
            return reference::coupling_update::<Self>(x, s_raw, t_raw, s_scale, t_scale, mask, direction);
        }
        let [x, s_raw, t_raw, s_scale, t_scale, mask] = [x, s_raw, t_raw, s_scale, t_scale, mask].map(into_contiguous);
        let (rows, features) = rows_features(&x);
        let out = empty_like(&x, x.shape());
        let total = rows * features;
        coupling_update_kernel::launch(
            &x.client,
            cubes(total),
            workgroup(),
            arg(&x),
            arg(&s_raw),
            arg(&t_raw),
            arg(&s_scale),
            arg(&t_scale),
            arg(&mask),
            arg(&out),
            features,
            total,
            direction == Direction::Inverse,
        );
        out
    }

    fn coupling_update_backward(
        x: FloatTensor<Self>,
        s_raw: FloatTensor<Self>,
        t_raw: FloatTensor<Self>,
        s_scale: FloatTensor<Self>,
        t_scale: FloatTensor<Self>,
        mask: FloatTensor<Self>,
        direction: Direction,
        grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        if !all_f32(&[&x, &s_raw, &t_raw, &s_scale, &t_scale, &mask, &grad]) {
            let [x, s_raw, t_raw, s_scale, t_scale] =
                reference::coupling_update_backward::<Self>(x, s_raw, t_raw, s_scale, t_scale, mask, direction, grad);
            return (x, s_raw, t_raw, s_scale, t_scale);
        }
        let [x, s_raw, t_raw, s_scale, t_scale, mask, grad] =
            [x, s_raw, t_raw, s_scale, t_scale, mask, grad].map(into_contiguous);
        let (rows, features) = rows_features(&x);
        let chunks = rows.div_ceil(CHUNK_ROWS);
        let [grad_x, grad_s_raw, grad_t_raw] = [(); 3].map(|_| empty_like(&x, x.shape()));
        let partials = empty_like(&x, Shape::new([chunks, 2 * features]));
        coupling_update_backward_kernel::launch(
            &x.client,
            cubes(chunks * features),
            workgroup(),
            arg(&x),
            arg(&s_raw),
            arg(&t_raw),
            arg(&s_scale),
            arg(&t_scale),
            arg(&mask),
            arg(&grad),
            arg(&grad_x),
            arg(&grad_s_raw),
            arg(&grad_t_raw),
            arg(&partials),
            rows,
            chunks,
            features,
            direction == Direction::Inverse,
        );
        let (grad_s_scale, grad_t_scale) = column_sums_pair(&partials, chunks, features);
        (grad_x, grad_s_raw, grad_t_raw, grad_s_scale, grad_t_scale)
    }

    fn coupling_log_scale(
        s_raw: FloatTensor<Self>,
        s_scale: FloatTensor<Self>,
        mask: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        if !all_f32(&[&s_raw, &s_scale, &mask]) {
            return reference::coupling_log_scale::<Self>(s_raw, s_scale, mask);
        }
        let [s_raw, s_scale, mask] = [s_raw, s_scale, mask].map(into_contiguous);
        let (rows, features) = rows_features(&s_raw);
        let out = empty_like(&s_raw, Shape::new([rows]));
        log_scale_kernel::launch(
            &s_raw.client,
            cubes(rows),
            workgroup(),
            arg(&s_raw),
            arg(&s_scale),
            arg(&mask),
            arg(&out),
            rows,
            features,
        );
        out
    }

    fn coupling_log_scale_backward(
        s_raw: FloatTensor<Self>,
        s_scale: FloatTensor<Self>,
        mask: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        if !all_f32(&[&s_raw, &s_scale, &mask, &grad]) {
            return reference::coupling_log_scale_backward::<Self>(s_raw, s_scale, mask, grad);
        }
        let [s_raw, s_scale, mask, grad] = [s_raw, s_scale, mask, grad].map(into_contiguous);
        let (rows, features) = rows_features(&s_raw);
        let chunks = rows.div_ceil(CHUNK_ROWS);
        let grad_s_raw = empty_like(&s_raw, s_raw.shape());
        let partials = empty_like(&s_raw, Shape::new([chunks, features]));
        log_scale_backward_kernel::launch(
            &s_raw.client,
            cubes(chunks * features),
            workgroup(),
            arg(&s_raw),
            arg(&s_scale),
            arg(&mask),
            arg(&grad),
            arg(&grad_s_raw),
            arg(&partials),
            rows,
            chunks,
            features,
        );
        let grad_s_scale = column_sums(&partials, chunks, features);
        (grad_s_raw, grad_s_scale)
    }
}
