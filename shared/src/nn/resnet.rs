use burn::module::Module;
use burn::prelude::*;

use super::{Scale, Swish, WeightNormLinear};
use crate::kernels;

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
    fn new(widths: &[usize], device: &Device) -> Self {
        let pairs = widths.windows(2);
        Self {
            activations: widths[..widths.len() - 1].iter().map(|&w| Swish::new(w, device)).collect(),
            linears: pairs.map(|w| WeightNormLinear::new(w[0], w[1], device)).collect(),
        }
    }

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
    /// `num_res_blocks` blocks over `widths` (`[D, H, …, H, D]`, see
    /// [`StackLayout::layer_widths`](crate::kernels::StackLayout::layer_widths)).
    pub fn new(num_res_blocks: usize, widths: &[usize], final_tanh: bool, device: &Device) -> Self {
        let dim = widths[0];
        assert!(widths.len() >= 2 && widths.last() == Some(&dim), "a residual block maps [D, …, D], got {widths:?}");
        Self {
            res_blocks: (0..num_res_blocks).map(|_| ResBlock::new(widths, device)).collect(),
            scale: Scale::new(dim, device),
            final_tanh,
        }
    }

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
