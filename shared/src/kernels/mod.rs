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
