use burn::config::Config;
use burn::module::Module;
use burn::prelude::*;

use super::{Scale, ScaleConfig, Swish, SwishConfig, WeightNormLinear, WeightNormLinearConfig};
use crate::kernels;

/// A [`ResBlock`] whose activations pass through `widths`, `[D, H, …, H, D]`
/// (see [`StackLayout::layer_widths`](crate::kernels::StackLayout::layer_widths)).
#[derive(Config, Debug)]
pub struct ResBlockConfig {
    /// Widths from the block's input to its output (equal ends).
    pub widths: Vec<usize>,
}

impl ResBlockConfig {
    /// A Swish before every linear layer, the linear layers between
    /// consecutive widths.
    pub fn init(&self, device: &Device) -> ResBlock {
        let widths = &self.widths;
        assert!(
            widths.len() >= 2 && widths.first() == widths.last(),
            "a residual block maps [D, …, D], got {widths:?}"
        );
        ResBlock {
            activations: widths[..widths.len() - 1].iter().map(|&w| SwishConfig::new(w).init(device)).collect(),
            linears: widths.windows(2).map(|w| WeightNormLinearConfig::new(w[0], w[1]).init(device)).collect(),
        }
    }
}

/// An [`MlpResNet`]: `num_res_blocks` residual blocks over `widths`, a
/// scale, and `tanh` when `final_tanh` (the `s` networks).
#[derive(Config, Debug)]
pub struct MlpResNetConfig {
    /// Residual blocks.
    pub num_res_blocks: usize,
    /// Each block's widths, `[D, H, …, H, D]`.
    pub widths: Vec<usize>,
    /// Whether `tanh` follows the scale (true for `s`, false for `t`).
    pub final_tanh: bool,
}

impl MlpResNetConfig {
    /// The network at the authors' initialisation (its scale zero).
    pub fn init(&self, device: &Device) -> MlpResNet {
        let block = ResBlockConfig::new(self.widths.clone());
        MlpResNet {
            res_blocks: (0..self.num_res_blocks).map(|_| block.init(device)).collect(),
            scale: ScaleConfig::new(self.widths[0]).init(device),
            final_tanh: self.final_tanh,
        }
    }
}

/// One residual branch: `Swish → Linear → Swish → Linear …` over the widths
/// `[D, H, …, H, D]` (the authors' `build_res_block`).
#[derive(Module, Debug)]
pub struct ResBlock {
    /// One Swish before every linear layer.
    pub activations: Vec<Swish>,
    /// The weight-normalised linear layers.
    pub linears: Vec<WeightNormLinear>,
}

impl ResBlock {
    /// The effective (weight-normalised) matrix of each linear layer.
    pub fn weights(&self) -> Vec<Tensor<2>> {
        self.linears.iter().map(WeightNormLinear::weight).collect()
    }

    /// `[M, D] -> [M, D]`: the block with its skip connection,
    /// `(x + branch(x)) / √2`, given its [`Self::weights`] (the caller may
    /// reuse them across several inputs).
    ///
    /// Each linear layer's bias is folded into the fused op after it (the
    /// next Swish, or the residual sum), which saves a pass over the
    /// activations each way.
    pub fn forward(&self, x: Tensor<2>, weights: &[Tensor<2>]) -> Tensor<2> {
        let mut h = x.clone();
        let mut bias: Option<Tensor<1>> = None;
        for ((act, linear), weight) in self.activations.iter().zip(&self.linears).zip(weights) {
            h = match bias {
                Some(b) => act.forward_with_bias(h, b),
                None => act.forward(h),
            };
            h = kernels::matmul(h, weight.clone());
            bias = Some(linear.bias.val());
        }
        kernels::residual(x, h, bias.expect("at least one linear layer"))
    }
}

/// The s or t network of a coupling: residual MLP blocks, each
/// `x ← (x + branch(x)) / √2`, then a zero-initialised [`Scale`] and, for `s`
/// only, `tanh` (the authors' `ResNet` with `final_scale = True`).
#[derive(Module, Debug)]
pub struct MlpResNet {
    /// Residual blocks.
    pub res_blocks: Vec<ResBlock>,
    /// Final per-feature scale.
    pub scale: Scale,
    /// Whether `tanh` follows the scale (true for `s`, false for `t`).
    pub final_tanh: bool,
}

impl MlpResNet {
    /// The effective matrices of every block's linear layers.
    pub fn weights(&self) -> Vec<Vec<Tensor<2>>> {
        self.res_blocks.iter().map(ResBlock::weights).collect()
    }

    /// The residual blocks, given [`Self::weights`]: `[M, D] -> [M, D]`.
    ///
    /// This stops before the final scale (and `tanh`), which the couplings
    /// fuse into their update ([`crate::kernels::coupling_update`]). A
    /// coupling applies each network to both halves of its blocks, so it
    /// computes (and differentiates) the weights once for both.
    pub fn trunk(&self, mut x: Tensor<2>, weights: &[Vec<Tensor<2>>]) -> Tensor<2> {
        for (block, weights) in self.res_blocks.iter().zip(weights) {
            x = block.forward(x, weights);
        }
        x
    }
}
