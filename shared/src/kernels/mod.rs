//! Fused operations for the work of the s/t networks and couplings.
//!
//! burn runs `x · σ(βx)` as several tensor ops (and about a dozen more in the
//! backward pass), each a full pass over memory with a scalar `exp` on the CPU
//! backends. [`FusedKernels`] is a burn backend extension with one op per
//! step of the model that is not a matrix product: Swish with the previous
//! layer's bias, the residual sum, the affine coupling update and its
//! log-determinant, weight normalisation, and a matmul that skips burn-flex's
//! zero-fill. Each has hand-written CPU kernels on burn-flex (`kernels/cpu/`),
//! CubeCL kernels on the GPU backends (`cube`: one launch forward, at most
//! two backward, also under burn's fusion), a composition of burn's own ops
//! elsewhere (burn-ndarray), and a hand-written backward step under autodiff.
//!
//! On burn-flex a sub-layer's whole coupling stack is also one op
//! ([`coupling_stack`], kernels in `kernels/cpu/stack.rs`): tiles of block rows run
//! every coupling in cache and keep a tape for a hand-written backward.
//! Other backends answer `None` for it, and the model composes the stack
//! from the ops above instead.

// burn-ndarray is deprecated but still one of our CPU backends; the
// extension macro names it in code it generates outside the trait.
#![allow(deprecated)]

#[cfg(feature = "autodiff")]
mod autodiff;
pub(crate) mod cpu;
#[cfg(feature = "wgpu")]
mod cube;
#[cfg(feature = "flex")]
mod flex;
mod reference;
pub mod stack;

use burn::backend::tensor::FloatTensor;
use burn::backend::{Dispatch, backend_extension};
use burn::prelude::*;

pub use stack::StackLayout;

use crate::decoder::ProductPrecision;
use crate::flow::Direction;

/// Fused operations with a custom implementation per backend.
#[backend_extension(
    Flex: cfg(feature = "flex"),
    NdArray: cfg(feature = "ndarray"),
    Cube: cfg(feature = "wgpu"),
    Autodiff: cfg(feature = "autodiff"),
    Fusion: cfg(feature = "fusion"),
)]
pub trait FusedKernels: burn::backend::Backend {
    /// Swish of a biased input, `u · σ(β u)` with `u = x + bias`:
    /// `x: [M, F]`, `bias, beta: [F]` -> `[M, F]`.
    #[fusion(dtype = x, shape = x)]
    fn swish(x: FloatTensor<Self>, bias: FloatTensor<Self>, beta: FloatTensor<Self>) -> FloatTensor<Self> {
        reference::swish::<Self>(x, bias, beta)
    }

    /// Gradients of [`Self::swish`] given the output gradient `grad: [M, F]`:
    /// `(∂L/∂x: [M, F], ∂L/∂bias: [F], ∂L/∂β: [F])`.
    #[fusion(meta = |x, bias, beta, _grad| (x.clone(), bias.clone(), beta.clone()))]
    fn swish_backward(
        x: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        reference::swish_backward::<Self>(x, bias, beta, grad)
    }

    /// `lhs · rhs` for 2-D tensors: `[M, K] × [K, N] -> [M, N]` (the same as
    /// burn's matmul; the CPU kernel writes its output without zero-filling
    /// it first).
    #[fusion(default)]
    fn matmul(lhs: FloatTensor<Self>, rhs: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::float_matmul(lhs, rhs)
    }

    /// Weight normalisation, `g · v / ‖v‖` with norms over rows (one per
    /// output column): `v: [I, O]`, `g: [O]` -> `[I, O]`.
    #[fusion(dtype = v, shape = v)]
    fn weight_norm(v: FloatTensor<Self>, g: FloatTensor<Self>) -> FloatTensor<Self> {
        reference::weight_norm::<Self>(v, g)
    }

    /// Gradients of [`Self::weight_norm`] given `grad: [I, O]`: for `v`
    /// (`[I, O]`) and `g` (`[O]`).
    #[fusion(meta = |v, g, _grad| (v.clone(), g.clone()))]
    fn weight_norm_backward(
        v: FloatTensor<Self>,
        g: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        reference::weight_norm_backward::<Self>(v, g, grad)
    }

    /// The residual connection with the branch's last bias,
    /// `(x + h + bias) / √2`: `x, h: [M, F]`, `bias: [F]` -> `[M, F]`.
    #[fusion(dtype = x, shape = x)]
    fn residual(x: FloatTensor<Self>, h: FloatTensor<Self>, bias: FloatTensor<Self>) -> FloatTensor<Self> {
        reference::residual::<Self>(x, h, bias)
    }

    /// Gradients of [`Self::residual`] given `grad: [M, F]`: `grad / √2`
    /// (the gradient of both `x` and `h`) and its row sums (of the bias, `[F]`).
    #[fusion(meta = |grad| (grad.clone(), fusion_vector(grad, 1)))]
    fn residual_backward(grad: FloatTensor<Self>) -> (FloatTensor<Self>, FloatTensor<Self>) {
        reference::residual_backward::<Self>(grad)
    }

    /// One affine coupling update of the `mask = 1` half of each block row:
    /// with `s = tanh(s_raw · s_scale) · mask` and `t = t_raw · t_scale · mask`,
    /// `x e^s + t` forward, or `(x − t) e^{−s}` inverse. `x, s_raw, t_raw:
    /// [M, F]`; `s_scale, t_scale, mask: [F]` -> `[M, F]`.
    #[fusion(dtype = x, shape = x)]
    fn coupling_update(
        x: FloatTensor<Self>,
        s_raw: FloatTensor<Self>,
        t_raw: FloatTensor<Self>,
        s_scale: FloatTensor<Self>,
        t_scale: FloatTensor<Self>,
        mask: FloatTensor<Self>,
        direction: Direction,
    ) -> FloatTensor<Self> {
        reference::coupling_update::<Self>(x, s_raw, t_raw, s_scale, t_scale, mask, direction)
    }

    /// Gradients of [`Self::coupling_update`] given `grad: [M, F]`: for `x`,
    /// `s_raw`, `t_raw` (`[M, F]`), `s_scale`, `t_scale` (`[F]`).
    #[allow(clippy::too_many_arguments, clippy::type_complexity)]
    #[fusion(meta = |x, s_raw, t_raw, s_scale, t_scale, _mask, _direction, _grad| (x.clone(), s_raw.clone(), t_raw.clone(), s_scale.clone(), t_scale.clone()))]
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
        let [x, s_raw, t_raw, s_scale, t_scale] =
            reference::coupling_update_backward::<Self>(x, s_raw, t_raw, s_scale, t_scale, mask, direction, grad);
        (x, s_raw, t_raw, s_scale, t_scale)
    }

    /// The log-determinant of a forward coupling update per row,
    /// `Σ_f tanh(s_raw · s_scale) · mask`: `s_raw: [M, F]`, `s_scale, mask:
    /// [F]` -> `[M]`.
    #[fusion(meta = |s_raw, _s_scale, _mask| fusion_vector(s_raw, 0))]
    fn coupling_log_scale(
        s_raw: FloatTensor<Self>,
        s_scale: FloatTensor<Self>,
        mask: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        reference::coupling_log_scale::<Self>(s_raw, s_scale, mask)
    }

    /// Gradients of [`Self::coupling_log_scale`] given `grad: [M]`: for
    /// `s_raw` (`[M, F]`) and `s_scale` (`[F]`).
    #[fusion(meta = |s_raw, s_scale, _mask, _grad| (s_raw.clone(), s_scale.clone()))]
    fn coupling_log_scale_backward(
        s_raw: FloatTensor<Self>,
        s_scale: FloatTensor<Self>,
        mask: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        reference::coupling_log_scale_backward::<Self>(s_raw, s_scale, mask, grad)
    }

    /// One AdamW update of a parameter tensor from its gradient times
    /// `grad_scale` (`[1]`, the global-norm clip's factor), in one pass over
    /// memory: `param, grad, moment_1, moment_2` of one shape -> the new
    /// `(param, moment_1, moment_2)`. Not differentiable (optimisers work on
    /// the inner backend's tensors).
    #[fusion(meta = |param, _grad, moment_1, moment_2, _grad_scale, _step| (param.clone(), moment_1.clone(), moment_2.clone()))]
    fn adamw_update(
        param: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        moment_1: FloatTensor<Self>,
        moment_2: FloatTensor<Self>,
        grad_scale: FloatTensor<Self>,
        step: AdamWStep,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        reference::adamw_update::<Self>(param, grad, moment_1, moment_2, grad_scale, step)
    }

    /// A sub-layer's whole coupling stack, forward, as one op where the
    /// backend has a kernel for it (see `kernels/cpu/stack.rs`): `x: [M, D]` (one
    /// row per block), `params: [P]` (the stack's parameters, flattened as
    /// `layout` says) -> `[M, D + 1]`, each row's output followed by its
    /// log-determinant. `None` where the backend has no such kernel: the
    /// model then composes the stack from the ops above (the GPU does).
    /// `precision` is that of the matrix products (bf16: operands rounded,
    /// f32 accumulation, on CPUs with AVX512-BF16; f32 elsewhere).
    #[fusion(default)]
    fn coupling_stack(
        x: FloatTensor<Self>,
        params: FloatTensor<Self>,
        layout: StackLayout,
        precision: ProductPrecision,
    ) -> Option<FloatTensor<Self>> {
        let _ = (x, params, layout, precision);
        None
    }

    /// [`Self::coupling_stack`], also returning the *tape* its backward
    /// reads (saved activations, `[T]`): `(output: [M, D + 1], tape)`.
    #[fusion(default)]
    fn coupling_stack_taped(
        x: FloatTensor<Self>,
        params: FloatTensor<Self>,
        layout: StackLayout,
        precision: ProductPrecision,
    ) -> Option<(FloatTensor<Self>, FloatTensor<Self>)> {
        let _ = (x, params, layout, precision);
        None
    }

    /// Gradients of [`Self::coupling_stack_taped`] given the output's,
    /// `grad: [M, D + 1]`: for `x` (`[M, D]`) and `params` (`[P]`). Only
    /// ever called with a tape this backend made.
    #[fusion(default)]
    fn coupling_stack_backward(
        params: FloatTensor<Self>,
        tape: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        layout: StackLayout,
        precision: ProductPrecision,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let _ = (params, tape, grad, layout, precision);
        unreachable!("a coupling stack's backward without its backend's tape")
    }
}

#[cfg(feature = "ndarray")]
impl FusedKernels for burn::backend::NdArray {}

/// The `[n]` vector of a 2-D tensor's dimension `dim` (a fused op's output
/// under burn's fusion, described before the op runs).
#[cfg(feature = "fusion")]
fn fusion_vector(
    tensor: &burn::backend::fusion::custom::TensorSpec,
    dim: usize,
) -> burn::backend::fusion::custom::TensorSpec {
    burn::backend::fusion::custom::TensorSpec::new(Shape::new([tensor.shape[dim]]), tensor.dtype)
}

/// Swish with a learnable slope per feature, `x · σ(β x)`:
/// `x: [M, F]`, `beta: [F]` -> `[M, F]`, differentiable in both.
pub fn swish(x: Tensor<2>, beta: Tensor<1>) -> Tensor<2> {
    let [features] = beta.dims();
    bias_swish(x, zero_bias(features, &beta.device()), beta)
}

/// Zeros of `[features]` on `device`: the bias of a Swish that has none,
/// made once per thread, device and width and then reused (tensors are
/// values). On a GPU each `Tensor::zeros` is a fill kernel, and the first
/// Swish of every residual block has no bias: ~180 launches a training
/// step at the bench config.
fn zero_bias(features: usize, device: &Device) -> Tensor<1> {
    use std::cell::RefCell;
    thread_local! {
        static ZEROS: RefCell<Vec<(Device, bool, Tensor<1>)>> = const { RefCell::new(Vec::new()) };
    }
    ZEROS.with_borrow_mut(|zeros| {
        // Device equality ignores autodiff: tell the two apart, so that an
        // autodiff pass gets autodiff zeros and an inference pass plain ones.
        let autodiff = device.is_autodiff();
        let same = |(d, a, z): &&(Device, bool, Tensor<1>)| d == device && *a == autodiff && z.dims() == [features];
        if let Some((_, _, z)) = zeros.iter().find(same) {
            return z.clone();
        }
        let z = Tensor::zeros([features], device);
        zeros.push((device.clone(), autodiff, z.clone()));
        z
    })
}

/// Swish of `x + bias` (a linear layer's bias folded into the activation
/// that follows it): `x: [M, F]`, `bias, beta: [F]` -> `[M, F]`.
pub fn bias_swish(x: Tensor<2>, bias: Tensor<1>, beta: Tensor<1>) -> Tensor<2> {
    Tensor::from_dispatch(<Dispatch as FusedKernels>::swish(
        x.into_dispatch(),
        bias.into_dispatch(),
        beta.into_dispatch(),
    ))
}

/// Weight normalisation `g · v / ‖v‖` (norms per output column):
/// `v: [I, O]`, `g: [O]` -> `[I, O]`, differentiable in both.
pub fn weight_norm(v: Tensor<2>, g: Tensor<1>) -> Tensor<2> {
    Tensor::from_dispatch(<Dispatch as FusedKernels>::weight_norm(v.into_dispatch(), g.into_dispatch()))
}

/// `lhs · rhs`: `[M, K] × [K, N] -> [M, N]`, differentiable in both.
pub fn matmul(lhs: Tensor<2>, rhs: Tensor<2>) -> Tensor<2> {
    Tensor::from_dispatch(<Dispatch as FusedKernels>::matmul(lhs.into_dispatch(), rhs.into_dispatch()))
}

/// The residual connection `(x + h + bias) / √2`, with the branch's last
/// bias folded in: `x, h: [M, F]`, `bias: [F]` -> `[M, F]`.
pub fn residual(x: Tensor<2>, h: Tensor<2>, bias: Tensor<1>) -> Tensor<2> {
    Tensor::from_dispatch(<Dispatch as FusedKernels>::residual(
        x.into_dispatch(),
        h.into_dispatch(),
        bias.into_dispatch(),
    ))
}

/// The per-feature parameters of a coupling update (see
/// [`coupling_update`]), each `[F]`.
pub struct CouplingParams {
    /// Scale of `s` before its `tanh`.
    pub s_scale: Tensor<1>,
    /// Scale of `t`.
    pub t_scale: Tensor<1>,
    /// 1 on the half being updated, 0 on the conditioning half.
    pub mask: Tensor<1>,
}

/// One affine coupling update, `x e^s + t` (or `(x − t) e^{−s}` in the
/// inverse direction) with `s = tanh(s_raw · s_scale) · mask`, `t = t_raw · t_scale ·
/// mask`: `x, s_raw, t_raw: [M, F]` -> `[M, F]`, differentiable in all but
/// the mask.
pub fn coupling_update(
    x: Tensor<2>,
    s_raw: Tensor<2>,
    t_raw: Tensor<2>,
    params: &CouplingParams,
    direction: Direction,
) -> Tensor<2> {
    Tensor::from_dispatch(<Dispatch as FusedKernels>::coupling_update(
        x.into_dispatch(),
        s_raw.into_dispatch(),
        t_raw.into_dispatch(),
        params.s_scale.clone().into_dispatch(),
        params.t_scale.clone().into_dispatch(),
        params.mask.clone().into_dispatch(),
        direction,
    ))
}

/// The log-determinant of a forward [`coupling_update`] per row,
/// `Σ_f s`: `s_raw: [M, F]` -> `[M]`.
pub fn coupling_log_scale(s_raw: Tensor<2>, params: &CouplingParams) -> Tensor<1> {
    Tensor::from_dispatch(<Dispatch as FusedKernels>::coupling_log_scale(
        s_raw.into_dispatch(),
        params.s_scale.clone().into_dispatch(),
        params.mask.clone().into_dispatch(),
    ))
}

/// One AdamW step's settings, as PyTorch's `AdamW` (and burn's) define
/// them: decoupled weight decay, bias-corrected moments.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWStep {
    /// Learning rate.
    pub lr: f64,
    /// Decay of the first moment.
    pub beta_1: f32,
    /// Decay of the second moment.
    pub beta_2: f32,
    /// Added to the second moment's square root.
    pub epsilon: f32,
    /// Decoupled weight decay (the parameter shrinks by `lr · weight_decay`).
    pub weight_decay: f32,
    /// This update's number, from 1 (for the bias correction).
    pub time: usize,
}

/// [`AdamWStep`]'s scalars as the element-wise update uses them, rounded to
/// f32 where burn's `AdamW` rounds them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AdamWScalars {
    pub beta_1: f32,
    pub one_minus_beta_1: f32,
    pub beta_2: f32,
    pub one_minus_beta_2: f32,
    pub correction_1: f32,
    pub correction_2: f32,
    pub epsilon: f32,
    /// `1 − lr · weight_decay`.
    pub keep: f32,
    pub lr: f32,
}

impl AdamWStep {
    pub(crate) fn scalars(&self) -> AdamWScalars {
        let time = i32::try_from(self.time).expect("an AdamW step count that fits an i32");
        AdamWScalars {
            beta_1: self.beta_1,
            one_minus_beta_1: 1.0 - self.beta_1,
            beta_2: self.beta_2,
            one_minus_beta_2: 1.0 - self.beta_2,
            correction_1: 1.0 - self.beta_1.powi(time),
            correction_2: 1.0 - self.beta_2.powi(time),
            epsilon: self.epsilon,
            keep: (1.0 - self.lr * f64::from(self.weight_decay)) as f32,
            lr: self.lr as f32,
        }
    }
}

/// One AdamW update (see [`AdamWStep`]) of `param` from `grad · grad_scale`
/// (`grad_scale: [1]`) and the moments: the new `(param, moment_1,
/// moment_2)`, all of `param`'s shape. One pass over memory on the CPU, one
/// kernel on a GPU, where burn's ops take a dozen passes.
pub fn adamw_update<const D: usize>(
    param: Tensor<D>,
    grad: Tensor<D>,
    moment_1: Tensor<D>,
    moment_2: Tensor<D>,
    grad_scale: Tensor<1>,
    step: AdamWStep,
) -> (Tensor<D>, Tensor<D>, Tensor<D>) {
    let (p, m, v) = <Dispatch as FusedKernels>::adamw_update(
        param.into_dispatch(),
        grad.into_dispatch(),
        moment_1.into_dispatch(),
        moment_2.into_dispatch(),
        grad_scale.into_dispatch(),
        step,
    );
    (Tensor::from_dispatch(p), Tensor::from_dispatch(m), Tensor::from_dispatch(v))
}

/// Whether `device`'s backend runs [`coupling_stack`] as one op (burn-flex,
/// with or without autodiff), so that flattening the parameters for it is
/// worth doing.
pub fn has_fused_stack(device: &Device) -> bool {
    use burn::backend::DispatchDevice;
    match device.as_dispatch() {
        #[cfg(feature = "flex")]
        DispatchDevice::Flex(_) => true,
        #[cfg(all(feature = "flex", feature = "autodiff"))]
        DispatchDevice::Autodiff(inner) => matches!(inner.clone().inner(), DispatchDevice::Flex(_)),
        // Unreachable when flex is the only backend compiled in (the web page).
        #[allow(unreachable_patterns)]
        _ => false,
    }
}

/// A whole coupling stack forward as one op, where the backend has one:
/// `x: [M, D]`, `params: [P]` -> `Some((y: [M, D], log|det J|: [M]))`,
/// differentiable in both; `None` elsewhere (see
/// [`FusedKernels::coupling_stack`]).
pub fn coupling_stack(
    x: Tensor<2>,
    params: Tensor<1>,
    layout: StackLayout,
    precision: ProductPrecision,
) -> Option<(Tensor<2>, Tensor<1>)> {
    let [m, d] = x.dims();
    assert_eq!(d, layout.dim(), "blocks are not [M, {}]", layout.dim());
    let out = <Dispatch as FusedKernels>::coupling_stack(x.into_dispatch(), params.into_dispatch(), layout, precision)?;
    let out = Tensor::<2>::from_dispatch(out);
    Some((out.clone().slice([0..m, 0..d]), out.slice([0..m, d..d + 1]).squeeze_dim(1)))
}

#[cfg(test)]
mod tests {
    use burn::prelude::*;
    use burn::tensor::Distribution;

    use super::CouplingParams;
    use crate::flow::Direction;

    /// Swish as plain tensor ops, the way the model computed it before.
    fn swish_composed(x: Tensor<2>, beta: Tensor<1>) -> Tensor<2> {
        x.clone() * burn::tensor::activation::sigmoid(x * beta.unsqueeze::<2>())
    }

    fn residual_composed(x: Tensor<2>, h: Tensor<2>, bias: Tensor<1>) -> Tensor<2> {
        (x + h + bias.unsqueeze()).mul_scalar(std::f64::consts::FRAC_1_SQRT_2)
    }

    fn coupling_composed(
        x: Tensor<2>,
        s_raw: Tensor<2>,
        t_raw: Tensor<2>,
        p: &CouplingParams,
        direction: Direction,
    ) -> Tensor<2> {
        let m = p.mask.clone().unsqueeze::<2>();
        let s = (s_raw * p.s_scale.clone().unsqueeze::<2>()).tanh() * m.clone();
        let t = t_raw * p.t_scale.clone().unsqueeze::<2>() * m;
        if direction == Direction::Inverse { (x - t) * s.neg().exp() } else { x * s.exp() + t }
    }

    fn log_scale_composed(s_raw: Tensor<2>, p: &CouplingParams) -> Tensor<1> {
        let s = (s_raw * p.s_scale.clone().unsqueeze::<2>()).tanh() * p.mask.clone().unsqueeze::<2>();
        s.sum_dim(1).squeeze_dim(1)
    }

    fn max_rel_diff<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> f32 {
        let scale = b.clone().abs().max().into_scalar::<f32>().max(1e-6);
        (a - b).abs().max().into_scalar::<f32>() / scale
    }

    /// Forward values and every gradient of the fused ops against the
    /// composed ones, on an autodiff `device`. The rows are enough to be
    /// split across threads by the CPU kernels.
    fn check_against_composed(device: &Device) {
        device.seed(3);
        // 6 chunks of 64 rows × 48 features: the CubeCL backward kernels
        // span two workgroups, the last chunk partial.
        let (rows, features) = (333, 48);
        let normal = |shape: [usize; 2], std| Tensor::<2>::random(shape, Distribution::Normal(0.0, std), device);
        let vector = |lo, hi| Tensor::<1>::random([features], Distribution::Uniform(lo, hi), device);

        // Swish of a biased input, and the residual sum.
        let (x, h, w) = (normal([rows, features], 3.0), normal([rows, features], 1.0), normal([rows, features], 1.0));
        let (bias, beta) = (vector(-1.0, 1.0), vector(-1.5, 2.0));
        let run = |fused: bool| {
            let [x, h] = [x.clone(), h.clone()].map(Tensor::require_grad);
            let [bias, beta] = [bias.clone(), beta.clone()].map(Tensor::require_grad);
            let (y, r) = if fused {
                (
                    super::bias_swish(x.clone(), bias.clone(), beta.clone()),
                    super::residual(x.clone(), h.clone(), bias.clone()),
                )
            } else {
                (
                    swish_composed(x.clone() + bias.clone().unsqueeze(), beta.clone()),
                    residual_composed(x.clone(), h.clone(), bias.clone()),
                )
            };
            let grads = ((y.clone() + r.clone().mul_scalar(0.7)) * w.clone()).sum().backward();
            (
                y,
                r,
                [x.grad(&grads).unwrap(), h.grad(&grads).unwrap()],
                [bias.grad(&grads).unwrap(), beta.grad(&grads).unwrap()],
            )
        };
        let (y, r, g_rows, g_features) = run(true);
        let (y_ref, r_ref, g_rows_ref, g_features_ref) = run(false);
        assert!(max_rel_diff(y, y_ref) < 1e-5, "swish");
        assert!(max_rel_diff(r, r_ref) < 1e-6, "residual");
        for (i, (g, r)) in g_rows.into_iter().zip(g_rows_ref).enumerate() {
            assert!(max_rel_diff(g, r) < 1e-5, "swish/residual ∂(x, h)[{i}]");
        }
        for (i, (g, r)) in g_features.into_iter().zip(g_features_ref).enumerate() {
            assert!(max_rel_diff(g, r) < 1e-5, "swish/residual ∂(bias, β)[{i}]");
        }

        // Matrix product, including a transposed (strided) operand.
        let (a, b) = (normal([rows, features], 1.0), normal([30, features], 1.0));
        let w = normal([rows, 30], 1.0);
        let run = |fused: bool| {
            let (a, b) = (a.clone().require_grad(), b.clone().require_grad());
            let y = if fused {
                super::matmul(a.clone(), b.clone().transpose())
            } else {
                a.clone().matmul(b.clone().transpose())
            };
            let grads = (y.clone() * w.clone()).sum().backward();
            (y, a.grad(&grads).unwrap(), b.grad(&grads).unwrap())
        };
        let ((y, ga, gb), (y_ref, ga_ref, gb_ref)) = (run(true), run(false));
        assert!(max_rel_diff(y, y_ref) < 1e-5, "matmul");
        assert!(max_rel_diff(ga, ga_ref) < 1e-5, "matmul ∂lhs");
        assert!(max_rel_diff(gb, gb_ref) < 1e-5, "matmul ∂rhs");

        // Weight normalisation.
        let (v, g, w) = (normal([30, features], 1.0), vector(0.5, 2.0), normal([30, features], 1.0));
        let run = |fused: bool| {
            let (v, g) = (v.clone().require_grad(), g.clone().require_grad());
            let y = if fused {
                super::weight_norm(v.clone(), g.clone())
            } else {
                v.clone() * (g.clone().unsqueeze::<2>() / v.clone().square().sum_dim(0).sqrt())
            };
            let grads = (y.clone() * w.clone()).sum().backward();
            (y, v.grad(&grads).unwrap(), g.grad(&grads).unwrap())
        };
        let ((y, gv, gg), (y_ref, gv_ref, gg_ref)) = (run(true), run(false));
        assert!(max_rel_diff(y, y_ref) < 1e-5, "weight norm");
        assert!(max_rel_diff(gv, gv_ref) < 1e-5, "weight norm ∂v");
        assert!(max_rel_diff(gg, gg_ref) < 1e-5, "weight norm ∂g");

        // Coupling update and log-scale, both directions.
        let mask: Vec<f32> = (0..features).map(|i| (i % 2) as f32).collect();
        let mask = Tensor::<1>::from_floats(mask.as_slice(), device);
        let inputs = [normal([rows, features], 2.0), normal([rows, features], 2.0), normal([rows, features], 1.0)];
        let (s_scale, t_scale) = (vector(-1.0, 1.0), vector(-1.0, 1.0));
        let (w_y, w_l) =
            (normal([rows, features], 1.0), Tensor::<1>::random([rows], Distribution::Normal(0.0, 1.0), device));
        for direction in [Direction::Forward, Direction::Inverse] {
            let run = |fused: bool| {
                let [x, s_raw, t_raw] = inputs.clone().map(Tensor::require_grad);
                let p = CouplingParams {
                    s_scale: s_scale.clone().require_grad(),
                    t_scale: t_scale.clone().require_grad(),
                    mask: mask.clone(),
                };
                let (y, log_scale) = if fused {
                    (
                        super::coupling_update(x.clone(), s_raw.clone(), t_raw.clone(), &p, direction),
                        super::coupling_log_scale(s_raw.clone(), &p),
                    )
                } else {
                    (
                        coupling_composed(x.clone(), s_raw.clone(), t_raw.clone(), &p, direction),
                        log_scale_composed(s_raw.clone(), &p),
                    )
                };
                let grads = ((y.clone() * w_y.clone()).sum() + (log_scale.clone() * w_l.clone()).sum()).backward();
                let g2 = |t: &Tensor<2>| t.grad(&grads).unwrap();
                let g1 = |t: &Tensor<1>| t.grad(&grads).unwrap();
                (y, log_scale, [g2(&x), g2(&s_raw), g2(&t_raw)], [g1(&p.s_scale), g1(&p.t_scale)])
            };
            let (y, ls, g_rows, g_features) = run(true);
            let (y_ref, ls_ref, g_rows_ref, g_features_ref) = run(false);
            assert!(max_rel_diff(y, y_ref) < 1e-5, "coupling y, {direction:?}");
            assert!(max_rel_diff(ls, ls_ref) < 1e-5, "log-scale");
            for (i, (g, r)) in g_rows.into_iter().zip(g_rows_ref).enumerate() {
                assert!(max_rel_diff(g, r) < 1e-5, "coupling ∂(x, s_raw, t_raw)[{i}], {direction:?}");
            }
            for (i, (g, r)) in g_features.into_iter().zip(g_features_ref).enumerate() {
                assert!(max_rel_diff(g, r) < 1e-4, "coupling ∂(s_scale, t_scale)[{i}], {direction:?}");
            }
        }
    }

    /// The fused AdamW update on `device` against its composition from
    /// burn's ops (on the same device), over a few steps with a clip factor.
    fn check_adamw(device: &Device) {
        device.seed(5);
        let normal = |std| Tensor::<2>::random([37, 29], Distribution::Normal(0.0, std), device);
        let (mut p_fused, mut m_fused, mut v_fused) = (normal(1.0), normal(0.0), normal(0.0));
        let (mut p_ref, mut m_ref, mut v_ref) = (p_fused.clone(), m_fused.clone(), v_fused.clone());
        // The first update finds its buffers shared (with the clones above):
        // it must not write through them.
        let (shared, before) = (p_fused.clone(), p_fused.clone().into_data());
        for time in 1..=3 {
            let grad = normal(0.1 * time as f64);
            let scale = Tensor::<1>::from_floats([0.37], device);
            let step =
                super::AdamWStep { lr: 1e-2, beta_1: 0.9, beta_2: 0.999, epsilon: 1e-8, weight_decay: 0.05, time };
            (p_fused, m_fused, v_fused) =
                super::adamw_update(p_fused, grad.clone(), m_fused, v_fused, scale.clone(), step);
            let [p, m, v] = [p_ref, m_ref, v_ref].map(Tensor::into_dispatch);
            let (p, m, v) = super::reference::adamw_update::<burn::backend::Dispatch>(
                p,
                grad.into_dispatch(),
                m,
                v,
                scale.into_dispatch(),
                step,
            );
            (p_ref, m_ref, v_ref) = (Tensor::from_dispatch(p), Tensor::from_dispatch(m), Tensor::from_dispatch(v));
        }
        assert_eq!(shared.into_data(), before, "AdamW wrote into a shared buffer");
        assert!(max_rel_diff(p_fused, p_ref) < 1e-6, "AdamW parameters");
        assert!(max_rel_diff(m_fused, m_ref) < 1e-6, "AdamW first moment");
        assert!(max_rel_diff(v_fused, v_ref) < 1e-6, "AdamW second moment");
    }

    #[test]
    fn adamw_update_matches_its_composition() {
        check_adamw(&Device::flex());
        #[cfg(feature = "wgpu")]
        check_adamw(&Device::wgpu(Default::default()));
    }

    #[test]
    fn fused_ops_match_composed_ops_on_flex() {
        check_against_composed(&Device::flex().autodiff());
    }

    /// The reference implementation (every backend without a CPU kernel,
    /// the GPU included) and its backward steps.
    #[cfg(feature = "ndarray")]
    #[test]
    fn fused_ops_match_composed_ops_on_ndarray() {
        check_against_composed(&Device::ndarray().autodiff());
    }

    /// The CubeCL kernels (`cube`), under burn's fusion when it is on.
    #[cfg(feature = "wgpu")]
    #[test]
    fn fused_ops_match_composed_ops_on_wgpu() {
        check_against_composed(&Device::wgpu(Default::default()).autodiff());
    }

    #[test]
    fn fused_swish_without_autodiff_matches_composed_ops() {
        let device = Device::flex();
        device.seed(4);
        // A transposed (non-contiguous) input takes the copy path.
        let x = Tensor::<2>::random([128, 70], Distribution::Normal(0.0, 2.0), &device).transpose();
        let beta = Tensor::<1>::random([128], Distribution::Uniform(0.0, 2.0), &device);
        assert!(max_rel_diff(super::swish(x.clone(), beta.clone()), swish_composed(x, beta)) < 1e-5);
    }

    /// Strided inputs on the CubeCL kernels are made contiguous first.
    #[cfg(feature = "wgpu")]
    #[test]
    fn fused_ops_take_transposed_inputs_on_wgpu() {
        let device = Device::wgpu(Default::default());
        device.seed(4);
        // 300 columns: weight normalisation's one unit per column spans two workgroups.
        let x = Tensor::<2>::random([300, 70], Distribution::Normal(0.0, 2.0), &device).transpose();
        let beta = Tensor::<1>::random([300], Distribution::Uniform(0.0, 2.0), &device);
        assert!(max_rel_diff(super::swish(x.clone(), beta.clone()), swish_composed(x.clone(), beta)) < 1e-5);
        let g = Tensor::<1>::random([300], Distribution::Uniform(0.5, 2.0), &device);
        let reference = x.clone() * (g.clone().unsqueeze::<2>() / x.clone().square().sum_dim(0).sqrt());
        assert!(max_rel_diff(super::weight_norm(x, g), reference) < 1e-5);
    }
}
