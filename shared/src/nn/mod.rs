//! The small building blocks of the s/t networks, as in the authors' `layers/`.

mod resnet;
mod scale;
mod swish;
mod weight_norm;

pub use resnet::{MlpResNet, MlpResNetConfig, ResBlock, ResBlockConfig};
pub use scale::{Scale, ScaleConfig};
pub use swish::{Swish, SwishConfig};
pub use weight_norm::{WeightNormLinear, WeightNormLinearConfig};

use burn::module::{Param, ParamId};
use burn::prelude::*;

/// A parameter of `shape` whose value `init` makes on first use, as burn's
/// own `Initializer` does: a model built only to have weights loaded into it
/// (a weight file, a checkpoint) never draws or fills values it would then
/// overwrite. [`crate::RgFlowConfig::init`] materialises every parameter at
/// once, in the module's order, so a seed still gives one model.
fn lazy_param<const D: usize>(
    shape: [usize; D],
    device: &Device,
    init: impl FnOnce(&Device) -> Tensor<D> + Send + Sync + 'static,
) -> Param<Tensor<D>> {
    Param::uninitialized(
        ParamId::new(),
        move |device, require_grad| {
            let tensor = init(device);
            if require_grad { tensor.require_grad() } else { tensor }
        },
        device.clone(),
        true,
        shape.into(),
    )
}
