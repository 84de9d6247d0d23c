use burn::module::{Module, Param};
use burn::prelude::*;

/// Multiplies every feature by a learned factor, initialised to **zero** so
/// that every coupling starts as the identity (the authors' `Scale`).
#[derive(Module, Debug)]
pub struct Scale {
    /// Factor per feature, shape `[features]`.
    pub scale: Param<Tensor<1>>,
}

impl Scale {
    /// A zero-initialised scale over `features` features.
    pub fn new(features: usize, device: &Device) -> Self {
        Self { scale: Param::from_tensor(Tensor::zeros([features], device)) }
    }

    /// `[M, F] -> [M, F]`.
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        x * self.scale.val().unsqueeze::<2>()
    }
}
