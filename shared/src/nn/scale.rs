use burn::module::{Module, Param};
use burn::prelude::*;

/// Multiplies every feature by a learned factor, initialised to **zero** so
/// that every coupling starts as the identity (the authors' `Scale`). The
/// coupling update applies it, fused with `tanh` and `exp`
/// ([`crate::kernels::coupling_update`]).
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
}
