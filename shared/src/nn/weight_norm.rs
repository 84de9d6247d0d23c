use burn::config::Config;
use burn::module::{Module, Param};
use burn::prelude::*;
use burn::tensor::Distribution;
use std::sync::{Arc, OnceLock};

/// A [`WeightNormLinear`] from `d_input` to `d_output` features.
#[derive(Config, Debug)]
pub struct WeightNormLinearConfig {
    /// Input features.
    pub d_input: usize,
    /// Output features.
    pub d_output: usize,
}

impl WeightNormLinearConfig {
    /// The authors' initialisation: `v ~ U(-b, b)` with `b = √(2.81·3 / in)`
    /// (2.81 is Swish's gain), zero bias, and `g = ‖v‖` so that `W = v` at start.
    pub fn init(&self, device: &Device) -> WeightNormLinear {
        let (d_in, d_out) = (self.d_input, self.d_output);
        let bound = (2.81 * 3.0 / d_in as f64).sqrt();
        // `v` and `g` are lazy (see `lazy_param`) but `g` is `v`'s norm: the
        // draw is made once, by whichever of the two is used first.
        let draw = Arc::new(OnceLock::new());
        let v_draw = Arc::clone(&draw);
        let draw_v = move |device: &Device| -> Tensor<2> {
            Tensor::random([d_in, d_out], Distribution::Uniform(-bound, bound), device)
        };
        WeightNormLinear {
            weight_v: super::lazy_param([d_in, d_out], device, move |device| {
                v_draw.get_or_init(|| draw_v(device)).clone()
            }),
            weight_g: super::lazy_param([d_out], device, move |device| {
                // On `device` even if `v` was made elsewhere (a module moved
                // between the two).
                let v = draw.get_or_init(|| draw_v(device)).clone().to_device(device);
                v.square().sum_dim(0).sqrt().squeeze_dim::<1>(0)
            }),
            bias: super::lazy_param([d_out], device, move |device| Tensor::zeros([d_out], device)),
        }
    }
}

/// A weight-normalised linear layer (`torch.nn.utils.weight_norm`, `dim = 0`):
/// `W = g · v / ‖v‖`, the norm taken per output feature.
///
/// `v` is stored `[in, out]` (burn's layout, so the forward is one matmul);
/// the authors' `weight_v` is `[out, in]` and `weight_g` is `[out, 1]`.
#[derive(Module, Debug)]
pub struct WeightNormLinear {
    /// Direction `v`, shape `[in, out]`.
    pub weight_v: Param<Tensor<2>>,
    /// Magnitude `g`, shape `[out]`.
    pub weight_g: Param<Tensor<1>>,
    /// Bias, shape `[out]`.
    pub bias: Param<Tensor<1>>,
}

impl WeightNormLinear {
    /// The effective weight `W = g · v / ‖v‖`, shape `[in, out]`. The s/t
    /// networks multiply by it and fold the bias into the fused op that
    /// follows (see [`super::ResBlock::forward`]).
    pub fn weight(&self) -> Tensor<2> {
        crate::kernels::weight_norm(self.weight_v.val(), self.weight_g.val())
    }
}
