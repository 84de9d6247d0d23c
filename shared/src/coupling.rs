//! The RealNVP coupling stack that transforms the blocks of one sub-layer
//! (the authors' `RNVP` with `ResNetReshape` s/t networks).

use burn::module::Module;
use burn::prelude::*;

use crate::decoder::ProductPrecision;
use crate::flow::Direction;
use crate::kernels::{self, CouplingParams, StackLayout};
use crate::nn::{MlpResNet, MlpResNetConfig};

/// Rows from which the fused stack runs: it packs the weights and sets up
/// per-thread workspaces on every call, which a local update of a few blocks
/// (one image, tens of rows) does not amortise — there the composed ops are
/// 4–6× faster (`trainer bench-local`), while training batches have far more.
pub const FUSED_MIN_ROWS: usize = 256;

/// Checkerboard masks over a `[C, K, K]` block flattened to `C·K²`:
/// `left` is 1 where `row + col` is even, `right = 1 - left`.
pub fn checkerboard_masks(channels: usize, kernel_size: usize) -> (Vec<f32>, Vec<f32>) {
    let kk = kernel_size * kernel_size;
    let left: Vec<f32> = (0..channels * kk)
        .map(|e| {
            let (r, c) = ((e % kk) / kernel_size, e % kernel_size);
            if (r + c) % 2 == 0 { 1.0 } else { 0.0 }
        })
        .collect();
    let right = left.iter().map(|m| 1.0 - m).collect();
    (left, right)
}

/// The checkerboard squares a coupling half conditions on (it updates the
/// others): `left` where `row + col` is even, as [`checkerboard_masks`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Squares {
    /// `row + col` even.
    Left,
    /// `row + col` odd.
    Right,
}

/// The two halves of every coupling layer in the forward order (the
/// authors'): the first conditions on the `left` squares and updates the
/// `right` ones, the second the reverse; the inverse runs them backwards.
/// The composed ops ([`CouplingStack::half_masks`]) and the fused kernels
/// ([`StackLayout::halves`]) both follow this.
pub const HALVES: [Squares; 2] = [Squares::Left, Squares::Right];

/// A stack of affine couplings acting on every block of one sub-layer at once.
///
/// Each coupling layer applies its s/t networks twice, first updating the
/// `right` half conditioned on the `left` half, then the reverse, so every
/// parameter is used (as the authors do).
#[derive(Module, Debug)]
pub struct CouplingStack {
    /// Scale networks (end in `tanh`), one per coupling layer.
    pub s_layers: Vec<MlpResNet>,
    /// Translation networks, one per coupling layer.
    pub t_layers: Vec<MlpResNet>,
    /// Checkerboard mask, shape `[1, C·K²]`.
    pub mask_left: Tensor<2>,
    /// Its complement, shape `[1, C·K²]`.
    pub mask_right: Tensor<2>,
    /// The stack's sizes (see [`Self::layout`]).
    #[module(skip)]
    pub layout: StackLayout,
    /// Whether [`Self::forward`] runs as one fused op where the backend has
    /// it (the default; off, it composes per-op kernels, for comparison).
    #[module(skip)]
    pub fused: bool,
    /// The fused stack's matrix products: f32 (the default), or bf16
    /// operands with f32 accumulation (see [`crate::decoder::ProductPrecision`]).
    #[module(skip)]
    pub precision: ProductPrecision,
}

/// The stack's layout is its config.
impl StackLayout {
    /// A stack of `nlayers` couplings on blocks of `C·K²` values, each
    /// network of `nresblocks` blocks of the layout's widths, at the authors'
    /// initialisation (every coupling the identity).
    pub fn init(&self, device: &Device) -> CouplingStack {
        let net = |final_tanh| MlpResNetConfig::new(self.nresblocks, self.layer_widths(), final_tanh).init(device);
        let (left, right) = checkerboard_masks(self.channels, self.kernel_size);
        CouplingStack {
            s_layers: (0..self.nlayers).map(|_| net(true)).collect(),
            t_layers: (0..self.nlayers).map(|_| net(false)).collect(),
            mask_left: Tensor::<1>::from_floats(left.as_slice(), device).unsqueeze(),
            mask_right: Tensor::<1>::from_floats(right.as_slice(), device).unsqueeze(),
            layout: *self,
            fused: true,
            precision: ProductPrecision::F32,
        }
    }
}

impl CouplingStack {
    /// Data to latent direction.
    ///
    /// `x: [M, C·K²]` (one row per block) `-> (z: [M, C·K²], log|det J|: [M])`.
    ///
    /// On the CPU (burn-flex) the whole stack is one fused op
    /// ([`kernels::coupling_stack`]) for at least [`FUSED_MIN_ROWS`] rows;
    /// otherwise it is composed from the per-op kernels, with the same values.
    pub fn forward(&self, x: Tensor<2>) -> (Tensor<2>, Tensor<1>) {
        if self.fused
            && x.dims()[0] >= FUSED_MIN_ROWS
            && kernels::has_fused_stack(&x.device())
            && let Some(out) = kernels::coupling_stack(x.clone(), self.flat_params(), self.layout(), self.precision)
        {
            return out;
        }
        self.forward_composed(x)
    }

    /// [`Self::forward`] composed from the per-op kernels (the reference
    /// for the fused stack): `x: [M, C·K²] -> (z: [M, C·K²], log|det J|: [M])`.
    pub fn forward_composed(&self, mut x: Tensor<2>) -> (Tensor<2>, Tensor<1>) {
        let mut ldj: Option<Tensor<1>> = None;
        for (s_net, t_net) in self.s_layers.iter().zip(&self.t_layers) {
            let weights = (s_net.weights(), t_net.weights());
            for (mask, inv_mask) in self.half_masks() {
                let params = Self::params(s_net, t_net, inv_mask);
                let (s_raw, t_raw) = Self::raw_scale_shift(s_net, t_net, &weights, x.clone() * mask.clone());
                // s = t = 0 on the conditioning half, so this equals the authors'
                // `mask·x + inv_mask·(x·exp(s) + t)` exactly.
                let log_scale = kernels::coupling_log_scale(s_raw.clone(), &params);
                x = kernels::coupling_update(x, s_raw, t_raw, &params, Direction::Forward);
                ldj = Some(ldj.map_or(log_scale.clone(), |acc| acc + log_scale));
            }
        }
        (x, ldj.expect("at least one coupling layer"))
    }

    /// `(conditioning, updated)` masks of each half, in [`HALVES`]' order.
    pub fn half_masks(&self) -> [(&Tensor<2>, &Tensor<2>); 2] {
        HALVES.map(|squares| match squares {
            Squares::Left => (&self.mask_left, &self.mask_right),
            Squares::Right => (&self.mask_right, &self.mask_left),
        })
    }

    /// The sizes that locate each parameter in [`Self::flat_params`].
    pub fn layout(&self) -> StackLayout {
        self.layout
    }

    /// Every parameter of the stack in one vector, `[P]`, in
    /// [`StackLayout`]'s order (differentiable: the gradient flows back to
    /// each parameter).
    pub fn flat_params(&self) -> Tensor<1> {
        let mut parts = Vec::new();
        for (s_net, t_net) in self.s_layers.iter().zip(&self.t_layers) {
            for net in [s_net, t_net] {
                for block in &net.res_blocks {
                    for (swish, linear) in block.activations.iter().zip(&block.linears) {
                        let v = linear.weight_v.val();
                        let len = v.shape().num_elements();
                        parts.extend([swish.beta.val(), v.reshape([len]), linear.weight_g.val(), linear.bias.val()]);
                    }
                }
                parts.push(net.scale.scale.val());
            }
        }
        Tensor::cat(parts, 0)
    }

    /// Latent to data direction, the exact inverse of [`Self::forward`].
    ///
    /// `z: [M, C·K²] -> (x: [M, C·K²], log|det J⁻¹|: [M])`.
    pub fn inverse(&self, z: Tensor<2>) -> (Tensor<2>, Tensor<1>) {
        let (x, ldj) = self.inverse_impl(z, true);
        (x, ldj.expect("log-determinant requested"))
    }

    /// [`Self::inverse`] without the log-determinant, which sampling does not
    /// need: `z: [M, C·K²] -> x: [M, C·K²]`.
    pub fn inverse_without_ldj(&self, z: Tensor<2>) -> Tensor<2> {
        self.inverse_impl(z, false).0
    }

    fn inverse_impl(&self, mut z: Tensor<2>, with_ldj: bool) -> (Tensor<2>, Option<Tensor<1>>) {
        let mut log_scale_sum: Option<Tensor<1>> = None;
        for (s_net, t_net) in self.s_layers.iter().zip(&self.t_layers).rev() {
            let weights = (s_net.weights(), t_net.weights());
            for (mask, inv_mask) in self.half_masks().into_iter().rev() {
                let params = Self::params(s_net, t_net, inv_mask);
                let (s_raw, t_raw) = Self::raw_scale_shift(s_net, t_net, &weights, z.clone() * mask.clone());
                if with_ldj {
                    let log_scale = kernels::coupling_log_scale(s_raw.clone(), &params);
                    log_scale_sum = Some(log_scale_sum.map_or(log_scale.clone(), |acc| acc + log_scale));
                }
                z = kernels::coupling_update(z, s_raw, t_raw, &params, Direction::Inverse);
            }
        }
        (z, log_scale_sum.map(Tensor::neg))
    }

    /// The s and t networks' outputs before their final scale (and `tanh`),
    /// which the fused update applies.
    /// `weights` are the networks' effective matrices, computed once per
    /// coupling layer for both of its halves.
    fn raw_scale_shift(
        s_net: &MlpResNet,
        t_net: &MlpResNet,
        (s_weights, t_weights): &(Vec<Vec<Tensor<2>>>, Vec<Vec<Tensor<2>>>),
        conditioner: Tensor<2>,
    ) -> (Tensor<2>, Tensor<2>) {
        (s_net.trunk(conditioner.clone(), s_weights), t_net.trunk(conditioner, t_weights))
    }

    fn params(s_net: &MlpResNet, t_net: &MlpResNet, inv_mask: &Tensor<2>) -> CouplingParams {
        debug_assert!(s_net.final_tanh && !t_net.final_tanh);
        CouplingParams {
            s_scale: s_net.scale.scale.val(),
            t_scale: t_net.scale.scale.val(),
            mask: inv_mask.clone().squeeze_dim(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use burn::prelude::*;

    use crate::config::RgFlowConfig;
    use crate::decoder::ProductPrecision;
    use crate::testing::{host_uniform, jitter_parameters, seeded_init};

    fn max_rel_diff<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> f32 {
        let scale = b.clone().abs().max().into_scalar::<f32>().max(1e-6);
        (a - b).abs().max().into_scalar::<f32>() / scale
    }

    /// The gradient of every parameter tensor of a stack, flattened, in
    /// the flat order, each with its parameter's name.
    fn parameter_grads(
        stack: &super::CouplingStack,
        grads: &burn::tensor::Gradients,
    ) -> Vec<(&'static str, Tensor<1>)> {
        let mut all = Vec::new();
        for net in stack.s_layers.iter().zip(&stack.t_layers).flat_map(|(s, t)| [s, t]) {
            for block in &net.res_blocks {
                for (swish, linear) in block.activations.iter().zip(&block.linears) {
                    let v = linear.weight_v.val().grad(grads).unwrap();
                    let len = v.shape().num_elements();
                    all.extend([
                        ("beta", swish.beta.val().grad(grads).unwrap()),
                        ("weight_v", v.reshape([len])),
                        ("weight_g", linear.weight_g.val().grad(grads).unwrap()),
                        ("bias", linear.bias.val().grad(grads).unwrap()),
                    ]);
                }
            }
            all.push(("scale", net.scale.scale.val().grad(grads).unwrap()));
        }
        all
    }

    /// The fused stack (one op with a hand-written backward) against the
    /// stack composed from per-op kernels: outputs, log-determinants, and
    /// the gradients of the input and of every parameter. Row counts pad
    /// the last tile and make several groups of tiles; the configs cover
    /// one and several residual blocks and hidden layers, odd widths and
    /// one channel.
    #[test]
    fn fused_stack_matches_the_composed_stack() {
        let device = Device::flex().autodiff();
        let cases = [(3, "2", "2", "2", "40", 150), (1, "3", "1", "1", "9", 64 * 9 + 5), (3, "1", "3", "3", "16", 70)];
        for (channels, nlayers, nres, nmlp, nhidden, rows) in cases {
            let config = RgFlowConfig::from_level_specs(16, channels, nlayers, nres, nmlp, nhidden).unwrap();
            // Drawn on the host: the bf16 tolerances hold for these draws, and
            // the device's RNG is shared with the tests running beside this one.
            let flow = jitter_parameters(seeded_init(&config, 3, &device), 0.1, 5);
            let stack = &flow.layers[0];
            let d = config.block_dim();
            let x = host_uniform([rows, d], -2.6, 2.6, 11, &device);
            let w = host_uniform([rows, d], -1.7, 1.7, 12, &device);
            let w_ldj = host_uniform([rows], -1.7, 1.7, 13, &device);
            let run = |fused: Option<ProductPrecision>| {
                let x = x.clone().require_grad();
                let (y, ldj) = match fused {
                    Some(precision) => {
                        crate::kernels::coupling_stack(x.clone(), stack.flat_params(), stack.layout(), precision)
                            .expect("burn-flex has the fused stack")
                    }
                    None => stack.forward_composed(x.clone()),
                };
                let grads = ((y.clone() * w.clone()).sum() + (ldj.clone() * w_ldj.clone()).sum()).backward();
                let params = parameter_grads(stack, &grads);
                (y, ldj, x.grad(&grads).unwrap(), params)
            };
            let (y_ref, ldj_ref, grad_x_ref, grad_params_ref) = run(None);
            if crate::CpuDecoder::native_bf16() {
                // bf16 products: the same within bf16's precision.
                let (y, ldj, grad_x, grad_params) = run(Some(ProductPrecision::Bf16));
                let case = format!("bf16, C{channels} {nlayers}/{nres}/{nmlp}/{nhidden}");
                let y_err = max_rel_diff(y, y_ref.clone());
                assert!(y_err < 2e-2 && y_err > 1e-6, "{case}: output {y_err}");
                assert!(max_rel_diff(ldj, ldj_ref.clone()) < 5e-2, "{case}: log-determinant");
                assert!(max_rel_diff(grad_x, grad_x_ref.clone()) < 5e-2, "{case}: input gradient");
                for (i, ((name, g), (_, r))) in grad_params.into_iter().zip(grad_params_ref.clone()).enumerate() {
                    // `∂L/∂g = Σ ∂L/∂W · v/‖v‖` per column is a sum whose terms
                    // mostly cancel, so bf16's rounding of the terms shows
                    // up magnified (deep stacks reach ~0.11 of its largest value).
                    let tolerance = if name == "weight_g" { 2e-1 } else { 1e-1 };
                    let err = max_rel_diff(g, r);
                    assert!(err < tolerance, "{case}: parameter tensor {i} ({name}): {err}");
                }
            }
            let (y, ldj, grad_x, grad_params) = run(Some(ProductPrecision::F32));
            let case = format!("C{channels} {nlayers}/{nres}/{nmlp}/{nhidden}, {rows} rows");
            assert!(max_rel_diff(y, y_ref) < 1e-5, "{case}: output");
            assert!(max_rel_diff(ldj, ldj_ref) < 1e-5, "{case}: log-determinant");
            assert!(max_rel_diff(grad_x, grad_x_ref) < 1e-4, "{case}: input gradient");
            assert_eq!(grad_params.len(), grad_params_ref.len());
            for (i, ((name, g), (_, r))) in grad_params.into_iter().zip(grad_params_ref).enumerate() {
                let err = max_rel_diff(g, r);
                assert!(err < 1e-4, "{case}: parameter tensor {i} ({name}): {err}");
            }
        }
    }
}
