//! The small building blocks of the s/t networks, as in the authors' `layers/`.

mod resnet;
mod scale;
mod swish;
mod weight_norm;

pub use resnet::{MlpResNet, MlpResNetConfig, ResBlock, ResBlockConfig};
pub use scale::{Scale, ScaleConfig};
pub use swish::{Swish, SwishConfig};
pub use weight_norm::{WeightNormLinear, WeightNormLinearConfig};
