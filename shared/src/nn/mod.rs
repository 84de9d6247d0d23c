//! The small building blocks of the s/t networks, as in the authors' `layers/`.

mod resnet;
mod scale;
mod swish;
mod weight_norm;

pub use resnet::{MlpResNet, ResBlock};
pub use scale::Scale;
pub use swish::Swish;
pub use weight_norm::WeightNormLinear;
