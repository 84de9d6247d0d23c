//! The RealNVP coupling stack that transforms the blocks of one sub-layer
//! (the authors' `RNVP` with `ResNetReshape` s/t networks).

use burn::module::Module;
use burn::prelude::*;

use crate::kernels::{self, CouplingParams};
use crate::nn::MlpResNet;

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
}

impl CouplingStack {
    /// `nlayers` couplings on blocks of `channels × kernel_size²` values.
    pub fn new(
        channels: usize,
        kernel_size: usize,
        nlayers: usize,
        nresblocks: usize,
        nmlp: usize,
        nhidden: usize,
        device: &Device,
    ) -> Self {
        let dim = channels * kernel_size * kernel_size;
        let net = |tanh| MlpResNet::new(nresblocks, dim, nmlp, nhidden, tanh, device);
        let (left, right) = checkerboard_masks(channels, kernel_size);
        Self {
            s_layers: (0..nlayers).map(|_| net(true)).collect(),
            t_layers: (0..nlayers).map(|_| net(false)).collect(),
            mask_left: Tensor::<1>::from_floats(left.as_slice(), device).unsqueeze(),
            mask_right: Tensor::<1>::from_floats(right.as_slice(), device).unsqueeze(),
        }
    }

    /// Data to latent direction.
    ///
    /// `x: [M, C·K²]` (one row per block) `-> (z: [M, C·K²], log|det J|: [M])`.
    pub fn forward(&self, mut x: Tensor<2>) -> (Tensor<2>, Tensor<1>) {
        let mut ldj: Option<Tensor<1>> = None;
        for (s_net, t_net) in self.s_layers.iter().zip(&self.t_layers) {
            let weights = (s_net.weights(), t_net.weights());
            for (mask, inv_mask) in [(&self.mask_left, &self.mask_right), (&self.mask_right, &self.mask_left)] {
                let params = Self::params(s_net, t_net, inv_mask);
                let (s_raw, t_raw) = Self::raw_scale_shift(s_net, t_net, &weights, x.clone() * mask.clone());
                // s = t = 0 on the conditioning half, so this equals the authors'
                // `mask·x + inv_mask·(x·exp(s) + t)` exactly.
                let log_scale = kernels::coupling_log_scale(s_raw.clone(), &params);
                x = kernels::coupling_update(x, s_raw, t_raw, &params, false);
                ldj = Some(ldj.map_or(log_scale.clone(), |acc| acc + log_scale));
            }
        }
        (x, ldj.expect("at least one coupling layer"))
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
            for (mask, inv_mask) in [(&self.mask_right, &self.mask_left), (&self.mask_left, &self.mask_right)] {
                let params = Self::params(s_net, t_net, inv_mask);
                let (s_raw, t_raw) = Self::raw_scale_shift(s_net, t_net, &weights, z.clone() * mask.clone());
                if with_ldj {
                    let log_scale = kernels::coupling_log_scale(s_raw.clone(), &params);
                    log_scale_sum = Some(log_scale_sum.map_or(log_scale.clone(), |acc| acc + log_scale));
                }
                z = kernels::coupling_update(z, s_raw, t_raw, &params, true);
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
