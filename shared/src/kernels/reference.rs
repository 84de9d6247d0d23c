//! The fused ops as compositions of burn's backend ops: the implementation on
//! backends without a hand-written kernel, and the fallback for dtypes the CPU
//! kernels do not cover.

use burn::backend::Backend;
use burn::backend::tensor::FloatTensor;
use burn::backend::TensorMetadata;
use burn::tensor::{Shape};

/// `beta: [F]` broadcast to `shape = [M, F]`.
fn per_feature<B: Backend>(beta: FloatTensor<B>, shape: &Shape) -> FloatTensor<B> {
    let features = shape[1];
    B::float_expand(B::float_reshape(beta, Shape::new([1, features])), shape.clone())
}

/// `x / (1 + e^{-βx})`.
pub fn swish<B: Backend>(x: FloatTensor<B>, beta: FloatTensor<B>) -> FloatTensor<B> {
    let beta = per_feature::<B>(beta, &x.shape());
    let e = B::float_exp(B::float_neg(B::float_mul(x.clone(), beta)));
    B::float_div(x, B::float_add_scalar(e, 1.0.into()))
}

/// `(g · (σ + βxσ(1−σ)), Σ_rows g · x²σ(1−σ))`.
pub fn swish_backward<B: Backend>(
    x: FloatTensor<B>,
    beta: FloatTensor<B>,
    grad: FloatTensor<B>,
) -> (FloatTensor<B>, FloatTensor<B>) {
    let shape = x.shape();
    let beta = per_feature::<B>(beta, &shape);
    let bx = B::float_mul(x.clone(), beta);
    let s = B::sigmoid(bx.clone());
    // σ(1 − σ)
    let ds = B::float_mul(s.clone(), B::float_add_scalar(B::float_neg(s.clone()), 1.0.into()));
    let dx = B::float_add(s, B::float_mul(bx, ds.clone()));
    let grad_x = B::float_mul(grad.clone(), dx);
    let per_elem = B::float_mul(grad, B::float_mul(B::float_mul(x.clone(), x), ds));
    let grad_beta = B::float_reshape(B::float_sum_dim(per_elem, 0), Shape::new([shape[1]]));
    (grad_x, grad_beta)
}
