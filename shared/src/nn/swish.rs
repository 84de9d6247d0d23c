use burn::config::Config;
use burn::module::{Module, Param};
use burn::prelude::*;

/// A [`Swish`] over `features` features.
#[derive(Config, Debug)]
pub struct SwishConfig {
    /// Width of its input and output.
    pub features: usize,
}

impl SwishConfig {
    /// A Swish with `β = 1` (the authors' initialisation).
    pub fn init(&self, device: &Device) -> Swish {
        let features = self.features;
        Swish { beta: super::lazy_param([features], device, move |device| Tensor::ones([features], device)) }
    }
}

/// Swish with a learnable slope per feature: `x · σ(β x)`, `β` initialised to 1.
#[derive(Module, Debug)]
pub struct Swish {
    /// `β`, shape `[features]`.
    pub beta: Param<Tensor<1>>,
}

impl Swish {
    /// `[M, F] -> [M, F]`.
    ///
    /// The model's hottest op, so it is one fused kernel
    /// ([`crate::kernels::swish`]) rather than a chain of tensor ops.
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        crate::kernels::swish(x, self.beta.val())
    }

    /// Swish of `x + bias`, one fused op: `x: [M, F]`, `bias: [F]` -> `[M, F]`.
    pub fn forward_with_bias(&self, x: Tensor<2>, bias: Tensor<1>) -> Tensor<2> {
        crate::kernels::bias_swish(x, bias, self.beta.val())
    }
}
