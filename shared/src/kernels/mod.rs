//! Fused operations for the model's hottest element-wise work.
//!
//! burn runs `x · σ(βx)` as several tensor ops (and about a dozen more in the
//! backward pass), each a full pass over memory with a scalar `exp` on the CPU
//! backends. [`FusedKernels`] is a burn backend extension: one pass forward and
//! one backward, with hand-written CPU kernels on burn-flex ([`cpu`]) and a
//! composition of burn's own ops everywhere else (the GPU backends fuse those
//! themselves). The autodiff backend gets a hand-written backward step.

// burn-ndarray is deprecated but still one of our CPU backends; the
// extension macro names it in code it generates outside the trait.
#![allow(deprecated)]

mod autodiff;
pub mod cpu;
mod flex;
mod reference;

use burn::backend::tensor::FloatTensor;
use burn::backend::{Dispatch, backend_extension};
use burn::prelude::*;

/// Fused operations with a custom implementation per backend.
#[backend_extension(
    Flex: cfg(feature = "flex"),
    NdArray: cfg(feature = "ndarray"),
    Cube: cfg(feature = "wgpu"),
    Autodiff: cfg(feature = "autodiff"),
)]
pub trait FusedKernels: burn::backend::Backend {
    /// Swish `x · σ(β x)`: `x: [M, F]`, `beta: [F]` -> `[M, F]`.
    fn swish(x: FloatTensor<Self>, beta: FloatTensor<Self>) -> FloatTensor<Self> {
        reference::swish::<Self>(x, beta)
    }

    /// Gradients of [`Self::swish`] given the output gradient `grad: [M, F]`:
    /// `(∂L/∂x: [M, F], ∂L/∂β: [F])`.
    fn swish_backward(
        x: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        reference::swish_backward::<Self>(x, beta, grad)
    }

    /// One affine coupling update of the `mask = 1` half of each block row:
    /// with `s = tanh(s_raw · s_scale) · mask` and `t = t_raw · t_scale · mask`,
    /// `x e^s + t`, or `(x − t) e^{−s}` when `inverse`. `x, s_raw, t_raw:
    /// [M, F]`; `s_scale, t_scale, mask: [F]` -> `[M, F]`.
    fn coupling_update(
        x: FloatTensor<Self>,
        s_raw: FloatTensor<Self>,
        t_raw: FloatTensor<Self>,
        s_scale: FloatTensor<Self>,
        t_scale: FloatTensor<Self>,
        mask: FloatTensor<Self>,
        inverse: bool,
    ) -> FloatTensor<Self> {
        reference::coupling_update::<Self>(x, s_raw, t_raw, s_scale, t_scale, mask, inverse)
    }

    /// Gradients of [`Self::coupling_update`] given `grad: [M, F]`: for `x`,
    /// `s_raw`, `t_raw` (`[M, F]`), `s_scale`, `t_scale` (`[F]`).
    #[allow(clippy::too_many_arguments)]
    fn coupling_update_backward(
        x: FloatTensor<Self>,
        s_raw: FloatTensor<Self>,
        t_raw: FloatTensor<Self>,
        s_scale: FloatTensor<Self>,
        t_scale: FloatTensor<Self>,
        mask: FloatTensor<Self>,
        inverse: bool,
        grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let [x, s_raw, t_raw, s_scale, t_scale] =
            reference::coupling_update_backward::<Self>(x, s_raw, t_raw, s_scale, t_scale, mask, inverse, grad);
        (x, s_raw, t_raw, s_scale, t_scale)
    }

    /// The log-determinant of a forward coupling update per row,
    /// `Σ_f tanh(s_raw · s_scale) · mask`: `s_raw: [M, F]`, `s_scale, mask:
    /// [F]` -> `[M]`.
    fn coupling_log_scale(s_raw: FloatTensor<Self>, s_scale: FloatTensor<Self>, mask: FloatTensor<Self>) -> FloatTensor<Self> {
        reference::coupling_log_scale::<Self>(s_raw, s_scale, mask)
    }

    /// Gradients of [`Self::coupling_log_scale`] given `grad: [M]`: for
    /// `s_raw` (`[M, F]`) and `s_scale` (`[F]`).
    fn coupling_log_scale_backward(
        s_raw: FloatTensor<Self>,
        s_scale: FloatTensor<Self>,
        mask: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        reference::coupling_log_scale_backward::<Self>(s_raw, s_scale, mask, grad)
    }
}

#[cfg(feature = "ndarray")]
impl FusedKernels for burn::backend::NdArray {}

#[cfg(feature = "wgpu")]
impl FusedKernels for burn::backend::Cube {}

/// Swish with a learnable slope per feature, `x · σ(β x)`:
/// `x: [M, F]`, `beta: [F]` -> `[M, F]`, differentiable in both.
pub fn swish(x: Tensor<2>, beta: Tensor<1>) -> Tensor<2> {
    Tensor::from_dispatch(<Dispatch as FusedKernels>::swish(x.into_dispatch(), beta.into_dispatch()))
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

/// One affine coupling update, `x e^s + t` (or `(x − t) e^{−s}` when
/// `inverse`) with `s = tanh(s_raw · s_scale) · mask`, `t = t_raw · t_scale ·
/// mask`: `x, s_raw, t_raw: [M, F]` -> `[M, F]`, differentiable in all but
/// the mask.
pub fn coupling_update(x: Tensor<2>, s_raw: Tensor<2>, t_raw: Tensor<2>, params: &CouplingParams, inverse: bool) -> Tensor<2> {
    Tensor::from_dispatch(<Dispatch as FusedKernels>::coupling_update(
        x.into_dispatch(),
        s_raw.into_dispatch(),
        t_raw.into_dispatch(),
        params.s_scale.clone().into_dispatch(),
        params.t_scale.clone().into_dispatch(),
        params.mask.clone().into_dispatch(),
        inverse,
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

#[cfg(test)]
mod tests {
    use burn::prelude::*;
    use burn::tensor::Distribution;

    /// Swish as plain tensor ops, the way the model computed it before.
    fn swish_composed(x: Tensor<2>, beta: Tensor<1>) -> Tensor<2> {
        x.clone() * burn::tensor::activation::sigmoid(x * beta.unsqueeze::<2>())
    }

    fn max_rel_diff(a: Tensor<2>, b: Tensor<2>) -> f32 {
        let scale = b.clone().abs().max().into_scalar::<f32>().max(1e-6);
        (a - b).abs().max().into_scalar::<f32>() / scale
    }

    /// Forward value and both gradients of the fused op against the composed
    /// one, on `device` (autodiff).
    fn check_against_composed(device: &Device) {
        device.seed(3);
        // Big enough to be split across threads on the CPU kernels.
        let x = Tensor::<2>::random([333, 40], Distribution::Normal(0.0, 3.0), device);
        let beta = Tensor::<1>::random([40], Distribution::Uniform(-1.5, 2.0), device);
        let weights = Tensor::<2>::random([333, 40], Distribution::Normal(0.0, 1.0), device);

        let run = |f: fn(Tensor<2>, Tensor<1>) -> Tensor<2>| {
            let (x, beta) = (x.clone().require_grad(), beta.clone().require_grad());
            let y = f(x.clone(), beta.clone());
            let grads = (y.clone() * weights.clone()).sum().backward();
            (y, x.grad(&grads).unwrap(), beta.grad(&grads).unwrap())
        };
        let (y, gx, gb) = run(super::swish);
        let (y_ref, gx_ref, gb_ref) = run(swish_composed);
        assert!(max_rel_diff(y, y_ref) < 1e-5);
        assert!(max_rel_diff(gx, gx_ref) < 1e-5);
        assert!(max_rel_diff(gb.unsqueeze(), gb_ref.unsqueeze()) < 1e-5);
    }

    #[test]
    fn fused_swish_matches_composed_ops_on_flex() {
        check_against_composed(&Device::flex().autodiff());
    }

    #[test]
    fn fused_swish_without_autodiff_matches_composed_ops() {
        let device = Device::flex();
        device.seed(4);
        let x = Tensor::<2>::random([70, 128], Distribution::Normal(0.0, 2.0), &device);
        let beta = Tensor::<1>::random([128], Distribution::Uniform(0.0, 2.0), &device);
        // A non-contiguous input takes the copy path.
        let xt = x.clone().transpose().transpose();
        assert!(max_rel_diff(super::swish(xt, beta.clone()), swish_composed(x, beta)) < 1e-5);
    }
}
