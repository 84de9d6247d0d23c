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
        let features = self.features;
        Scale { scale: super::lazy_param([features], device, move |device| Tensor::zeros([features], device)) }
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
