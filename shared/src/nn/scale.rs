use burn::config::Config;
use burn::module::{Module, Param};
use burn::prelude::*;

/// A [`Scale`] over `features` features.
#[derive(Config, Debug)]
pub struct ScaleConfig {
    /// Width of its input and output.
    pub features: usize,
}

impl ScaleConfig {
    /// A zero-initialised scale (every coupling starts as the identity).
    pub fn init(&self, device: &Device) -> Scale {
        Scale { scale: Param::from_tensor(Tensor::zeros([self.features], device)) }
    }
}

/// Multiplies every feature by a learned factor, initialised to **zero** so
/// that every coupling starts as the identity (the authors' `Scale`). The
/// coupling update applies it, fused with `tanh` and `exp`
/// ([`crate::kernels::coupling_update`]).
#[derive(Module, Debug)]
pub struct Scale {
    /// Factor per feature, shape `[features]`.
    pub scale: Param<Tensor<1>>,
}
