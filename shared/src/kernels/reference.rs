//! The fused ops as compositions of burn's backend ops: the implementation on
//! backends without a hand-written kernel, and the fallback for dtypes the CPU
//! kernels do not cover.

use burn::backend::Backend;
use burn::backend::TensorMetadata;
use burn::backend::tensor::FloatTensor;
use burn::tensor::Shape;

use super::AdamWStep;
use crate::flow::Direction;

/// `beta: [F]` broadcast to `shape = [M, F]`.
fn per_feature<B: Backend>(beta: FloatTensor<B>, shape: &Shape) -> FloatTensor<B> {
    let features = shape[1];
    B::float_expand(B::float_reshape(beta, Shape::new([1, features])), shape.clone())
}

/// `u / (1 + e^{-βu})` with `u = x + bias`.
pub fn swish<B: Backend>(x: FloatTensor<B>, bias: FloatTensor<B>, beta: FloatTensor<B>) -> FloatTensor<B> {
    let shape = x.shape();
    let u = B::float_add(x, per_feature::<B>(bias, &shape));
    let e = B::float_exp(B::float_neg(B::float_mul(u.clone(), per_feature::<B>(beta, &shape))));
    B::float_div(u, B::float_add_scalar(e, 1.0.into()))
}

/// `(g (σ + βuσ(1−σ)), its row sums, Σ_rows g u²σ(1−σ))`.
pub fn swish_backward<B: Backend>(
    x: FloatTensor<B>,
    bias: FloatTensor<B>,
    beta: FloatTensor<B>,
    grad: FloatTensor<B>,
) -> (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>) {
    let shape = x.shape();
    let u = B::float_add(x, per_feature::<B>(bias, &shape));
    let bu = B::float_mul(u.clone(), per_feature::<B>(beta, &shape));
    let s = B::sigmoid(bu.clone());
    // σ(1 − σ)
    let ds = B::float_mul(s.clone(), B::float_add_scalar(B::float_neg(s.clone()), 1.0.into()));
    let du = B::float_add(s, B::float_mul(bu, ds.clone()));
    let grad_x = B::float_mul(grad.clone(), du);
    let per_elem = B::float_mul(grad, B::float_mul(B::float_mul(u.clone(), u), ds));
    let features = Shape::new([shape[1]]);
    let grad_bias = B::float_reshape(B::float_sum_dim(grad_x.clone(), 0), features.clone());
    let grad_beta = B::float_reshape(B::float_sum_dim(per_elem, 0), features);
    (grad_x, grad_bias, grad_beta)
}

/// `(x + h + bias) / √2`.
pub fn residual<B: Backend>(x: FloatTensor<B>, h: FloatTensor<B>, bias: FloatTensor<B>) -> FloatTensor<B> {
    let shape = x.shape();
    let sum = B::float_add(B::float_add(x, h), per_feature::<B>(bias, &shape));
    B::float_mul_scalar(sum, std::f64::consts::FRAC_1_SQRT_2.into())
}

/// `(g / √2, Σ_rows g / √2)`.
pub fn residual_backward<B: Backend>(grad: FloatTensor<B>) -> (FloatTensor<B>, FloatTensor<B>) {
    let features = grad.shape()[1];
    let scaled = B::float_mul_scalar(grad, std::f64::consts::FRAC_1_SQRT_2.into());
    let grad_bias = B::float_reshape(B::float_sum_dim(scaled.clone(), 0), Shape::new([features]));
    (scaled, grad_bias)
}

/// `[F]` per-feature vectors broadcast to `[M, F]`.
fn per_features<B: Backend, const N: usize>(vectors: [FloatTensor<B>; N], shape: &Shape) -> [FloatTensor<B>; N] {
    vectors.map(|v| per_feature::<B>(v, shape))
}

/// `(s, t)` of a coupling update, both `[M, F]` and zero where `mask = 0`,
/// with `tanh(s_raw · s_scale)`.
fn scale_shift<B: Backend>(
    s_raw: FloatTensor<B>,
    t_raw: FloatTensor<B>,
    [s_scale, t_scale, mask]: [FloatTensor<B>; 3],
) -> (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>) {
    let th = B::float_tanh(B::float_mul(s_raw, s_scale));
    let s = B::float_mul(th.clone(), mask.clone());
    let t = B::float_mul(B::float_mul(t_raw, t_scale), mask);
    (s, t, th)
}

/// `x e^s + t`, or `(x − t) e^{−s}` for the inverse.
pub fn coupling_update<B: Backend>(
    x: FloatTensor<B>,
    s_raw: FloatTensor<B>,
    t_raw: FloatTensor<B>,
    s_scale: FloatTensor<B>,
    t_scale: FloatTensor<B>,
    mask: FloatTensor<B>,
    direction: Direction,
) -> FloatTensor<B> {
    let shape = x.shape();
    let (s, t, _) = scale_shift::<B>(s_raw, t_raw, per_features::<B, 3>([s_scale, t_scale, mask], &shape));
    if direction == Direction::Inverse {
        B::float_mul(B::float_sub(x, t), B::float_exp(B::float_neg(s)))
    } else {
        B::float_add(B::float_mul(x, B::float_exp(s)), t)
    }
}

/// Gradients of [`coupling_update`]: `(x, s_raw, t_raw, s_scale, t_scale)`.
#[allow(clippy::too_many_arguments)]
pub fn coupling_update_backward<B: Backend>(
    x: FloatTensor<B>,
    s_raw: FloatTensor<B>,
    t_raw: FloatTensor<B>,
    s_scale: FloatTensor<B>,
    t_scale: FloatTensor<B>,
    mask: FloatTensor<B>,
    direction: Direction,
    grad: FloatTensor<B>,
) -> [FloatTensor<B>; 5] {
    let shape = x.shape();
    let [a, b, m] = per_features::<B, 3>([s_scale, t_scale, mask], &shape);
    let (s, t, th) = scale_shift::<B>(s_raw.clone(), t_raw.clone(), [a.clone(), b.clone(), m.clone()]);
    let (dx, g_s, g_t) = if direction == Direction::Inverse {
        let e = B::float_exp(B::float_neg(s));
        let y = B::float_mul(B::float_sub(x, t), e.clone());
        let g_s = B::float_neg(B::float_mul(grad.clone(), y));
        let g_t = B::float_neg(B::float_mul(grad.clone(), e.clone()));
        (e, g_s, g_t)
    } else {
        let e = B::float_exp(s);
        let g_s = B::float_mul(B::float_mul(grad.clone(), x), e.clone());
        (e, g_s, grad.clone())
    };
    let grad_x = B::float_mul(grad, dx);
    // s = tanh(s_raw a) m, t = t_raw b m.
    let one_minus_th2 = B::float_add_scalar(B::float_neg(B::float_mul(th.clone(), th)), 1.0.into());
    let du = B::float_mul(B::float_mul(g_s, one_minus_th2), m.clone());
    let g_tm = B::float_mul(g_t, m);
    let grad_s_raw = B::float_mul(du.clone(), a);
    let grad_t_raw = B::float_mul(g_tm.clone(), b);
    let features = Shape::new([shape[1]]);
    let grad_s_scale = B::float_reshape(B::float_sum_dim(B::float_mul(du, s_raw), 0), features.clone());
    let grad_t_scale = B::float_reshape(B::float_sum_dim(B::float_mul(g_tm, t_raw), 0), features);
    [grad_x, grad_s_raw, grad_t_raw, grad_s_scale, grad_t_scale]
}

/// `Σ_f tanh(s_raw · s_scale) · mask` per row: `[M]`.
pub fn coupling_log_scale<B: Backend>(
    s_raw: FloatTensor<B>,
    s_scale: FloatTensor<B>,
    mask: FloatTensor<B>,
) -> FloatTensor<B> {
    let shape = s_raw.shape();
    let [a, m] = per_features::<B, 2>([s_scale, mask], &shape);
    let s = B::float_mul(B::float_tanh(B::float_mul(s_raw, a)), m);
    B::float_reshape(B::float_sum_dim(s, 1), Shape::new([shape[0]]))
}

/// Gradients of [`coupling_log_scale`] given `grad: [M]`: `(s_raw, s_scale)`.
pub fn coupling_log_scale_backward<B: Backend>(
    s_raw: FloatTensor<B>,
    s_scale: FloatTensor<B>,
    mask: FloatTensor<B>,
    grad: FloatTensor<B>,
) -> (FloatTensor<B>, FloatTensor<B>) {
    let shape = s_raw.shape();
    let [a, m] = per_features::<B, 2>([s_scale, mask], &shape);
    let grad = B::float_expand(B::float_reshape(grad, Shape::new([shape[0], 1])), shape.clone());
    let th = B::float_tanh(B::float_mul(s_raw.clone(), a.clone()));
    let one_minus_th2 = B::float_add_scalar(B::float_neg(B::float_mul(th.clone(), th)), 1.0.into());
    let du = B::float_mul(B::float_mul(grad, one_minus_th2), m);
    let grad_scale = B::float_reshape(B::float_sum_dim(B::float_mul(du.clone(), s_raw), 0), Shape::new([shape[1]]));
    (B::float_mul(du, a), grad_scale)
}

/// `g · v / ‖v‖`, norms over rows (per output column): `v: [I, O]`, `g: [O]`.
pub fn weight_norm<B: Backend>(v: FloatTensor<B>, g: FloatTensor<B>) -> FloatTensor<B> {
    let shape = v.shape();
    let norm = B::float_sqrt(B::float_sum_dim(B::float_mul(v.clone(), v.clone()), 0));
    let scale = B::float_div(B::float_reshape(g, Shape::new([1, shape[1]])), norm);
    B::float_mul(v, B::float_expand(scale, shape))
}

/// `((g / n)(grad − v c / n²), c / n)` with `n = ‖v‖`, `c = Σ_rows grad · v`.
pub fn weight_norm_backward<B: Backend>(
    v: FloatTensor<B>,
    g: FloatTensor<B>,
    grad: FloatTensor<B>,
) -> (FloatTensor<B>, FloatTensor<B>) {
    let shape = v.shape();
    let columns = Shape::new([1, shape[1]]);
    let norm = B::float_sqrt(B::float_sum_dim(B::float_mul(v.clone(), v.clone()), 0));
    let c = B::float_sum_dim(B::float_mul(grad.clone(), v.clone()), 0);
    let g = B::float_reshape(g, columns);
    let grad_g = B::float_reshape(B::float_div(c.clone(), norm.clone()), Shape::new([shape[1]]));
    let a = B::float_div(g.clone(), norm.clone());
    let n3 = B::float_mul(B::float_mul(norm.clone(), norm.clone()), norm);
    let b = B::float_div(B::float_mul(g, c), n3);
    let grad_v =
        B::float_sub(B::float_mul(grad, B::float_expand(a, shape.clone())), B::float_mul(v, B::float_expand(b, shape)));
    (grad_v, grad_g)
}

/// One AdamW update, as burn's `AdamW` composes it: `g = grad · scale`,
/// `m = β₁ m + (1 − β₁) g`, `v = β₂ v + (1 − β₂) g²`, and the parameter
/// `p (1 − lr λ) − lr (m / c₁) / (√(v / c₂) + ε)` with the bias corrections
/// `cᵢ = 1 − βᵢᵗ`: `(param, m, v)`.
pub fn adamw_update<B: Backend>(
    param: FloatTensor<B>,
    grad: FloatTensor<B>,
    moment_1: FloatTensor<B>,
    moment_2: FloatTensor<B>,
    grad_scale: FloatTensor<B>,
    step: AdamWStep,
) -> (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>) {
    let s = step.scalars();
    let shape = param.shape();
    let mut ones = shape.clone();
    ones.iter_mut().for_each(|d| *d = 1);
    let scale = B::float_expand(B::float_reshape(grad_scale, ones), shape);
    let g = B::float_mul(grad, scale);
    let m = B::float_add(
        B::float_mul_scalar(moment_1, s.beta_1.into()),
        B::float_mul_scalar(g.clone(), s.one_minus_beta_1.into()),
    );
    let v = B::float_add(
        B::float_mul_scalar(moment_2, s.beta_2.into()),
        B::float_mul_scalar(B::float_mul(g.clone(), g), s.one_minus_beta_2.into()),
    );
    let m_hat = B::float_div_scalar(m.clone(), s.correction_1.into());
    let v_hat = B::float_div_scalar(v.clone(), s.correction_2.into());
    let delta = B::float_div(m_hat, B::float_add_scalar(B::float_sqrt(v_hat), s.epsilon.into()));
    let p = B::float_sub(B::float_mul_scalar(param, s.keep.into()), B::float_mul_scalar(delta, s.lr.into()));
    (p, m, v)
}
