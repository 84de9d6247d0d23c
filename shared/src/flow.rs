//! The RG-Flow bijector: the coupling stacks of all sub-layers, applied to the
//! blocks the MERA lattice gathers.

use std::sync::Arc;

use burn::module::Module;
use burn::prelude::*;
use burn::tensor::Int;

use crate::config::RgFlowConfig;
use crate::coupling::CouplingStack;
use crate::gather::index_tensor;
use crate::lattice::{MeraLattice, SubLayerKind};
use crate::preprocess;
use crate::prior::Prior;

/// Which way a pass runs through the flow (and each coupling in it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Data to latents, `x → z`.
    Forward,
    /// Latents to data, `z → x`.
    Inverse,
}

/// RG-Flow: `x ↔ z` with a tractable log-determinant.
///
/// Internally the image is one row of `C·L²` values per batch entry. Before a
/// sub-layer runs, one gather moves that row into the sub-layer's *layout*
/// (see [`MeraLattice::layout`]): its blocks first, each `[C, K²]`, then the
/// untouched values. The blocks then are a plain `[B·blocks, C·K²]` matrix, so
/// each linear layer is one matmul over every block of the sub-layer, and no
/// scatter is ever needed.
#[derive(Module, Debug)]
pub struct RgFlow {
    /// One coupling stack per sub-layer, in forward order (the authors' `layers`).
    pub layers: Vec<CouplingStack>,
    /// Forward gathers: entry `k < depth` moves the state into layout `k`,
    /// the last one back to canonical `[C, L, L]` order.
    forward_gathers: Vec<Tensor<1, Int>>,
    /// Inverse gathers: entry `j < depth` moves the state into layout
    /// `depth - 1 - j`, the last one back to canonical order.
    inverse_gathers: Vec<Tensor<1, Int>>,
    #[module(skip)]
    config: RgFlowConfig,
    #[module(skip)]
    lattice: Arc<MeraLattice>,
}

impl RgFlow {
    pub(crate) fn new(config: &RgFlowConfig, device: &Device) -> Self {
        let layers = (0..config.depth()).map(|k| config.stack_layout(k).init(device)).collect();
        Self::from_layers(config, layers, device)
    }

    /// Assembles a flow from already built coupling stacks (used by importers).
    pub(crate) fn from_layers(config: &RgFlowConfig, layers: Vec<CouplingStack>, device: &Device) -> Self {
        let lattice = MeraLattice::new(config.image_size, config.kernel_size);
        let index = |indices: Vec<Vec<usize>>| indices.into_iter().map(|i| index_tensor(i, device)).collect();
        let forward_gathers = index(lattice.forward_transitions(config.channels));
        let inverse_gathers = index(lattice.inverse_transitions(config.channels));
        Self { layers, forward_gathers, inverse_gathers, config: config.clone(), lattice: Arc::new(lattice) }
    }

    /// The config this flow was built from.
    pub fn config(&self) -> &RgFlowConfig {
        &self.config
    }

    /// The lattice (block indices, latent levels).
    pub fn lattice(&self) -> &MeraLattice {
        &self.lattice
    }

    /// Level `level`'s sub-layer of `kind`: its coupling stack, which
    /// transforms the blocks of [`MeraLattice::sublayers`] at the same index
    /// ([`MeraLattice::sublayer_index`]).
    ///
    /// # Panics
    /// If `level` is not below [`MeraLattice::levels`].
    pub fn sublayer(&self, level: usize, kind: SubLayerKind) -> &CouplingStack {
        let levels = self.lattice.levels();
        assert!(level < levels, "level {level} of a flow with {levels} levels");
        &self.layers[MeraLattice::sublayer_index(level, kind)]
    }

    /// Level `level`'s decimator: the coupling stack on the `K×K` blocks of
    /// the level's sites that start at the origin (see [`Self::sublayer`]).
    pub fn decimator(&self, level: usize) -> &CouplingStack {
        self.sublayer(level, SubLayerKind::Decimator)
    }

    /// Level `level`'s disentangler: the coupling stack on the same blocks
    /// shifted diagonally by half a block, across the decimator's block
    /// boundaries (see [`Self::sublayer`]).
    pub fn disentangler(&self, level: usize) -> &CouplingStack {
        self.sublayer(level, SubLayerKind::Disentangler)
    }

    /// The prior over latents.
    pub fn prior(&self) -> Prior {
        Prior::new(self.config.prior)
    }

    /// Whether the coupling stacks' forward runs as one fused op per
    /// sub-layer where the backend has it (on by default; see
    /// [`CouplingStack::forward`]). Off, it is composed from per-op kernels.
    pub fn set_fused_stacks(&mut self, fused: bool) {
        self.layers.iter_mut().for_each(|layer| layer.fused = fused);
    }

    /// The precision of the fused stacks' matrix products (f32 by default;
    /// bf16 rounds their operands and accumulates in f32, on CPUs with
    /// AVX512-BF16 — elsewhere they stay f32).
    pub fn set_stack_precision(&mut self, precision: crate::decoder::ProductPrecision) {
        self.layers.iter_mut().for_each(|layer| layer.precision = precision);
    }

    /// Multiply-adds of the coupling stacks' matrix products per image,
    /// forward (see [`StackLayout::forward_macs_per_row`](crate::kernels::StackLayout::forward_macs_per_row)).
    pub fn stack_macs_per_image(&self) -> usize {
        let blocks = self.lattice.sublayers.iter().map(|s| s.num_blocks);
        self.layers.iter().zip(blocks).map(|(layer, blocks)| blocks * layer.layout().forward_macs_per_row()).sum()
    }

    /// Number of trainable scalars.
    pub fn num_parameters(&self) -> usize {
        self.num_params()
    }

    /// Applies sub-layer `k` to a state already in layout `k`, with its
    /// log-determinant unless the pass is an inverse `without_ldj`.
    fn apply_sublayer(
        &self,
        k: usize,
        state: Tensor<2>,
        direction: Direction,
        without_ldj: bool,
    ) -> (Tensor<2>, Option<Tensor<1>>) {
        let [batch, n] = state.dims();
        let blocks = self.lattice.sublayers[k].num_blocks;
        let dim = self.config.block_dim();
        let active_len = blocks * dim;
        let (active, passive) = if active_len == n {
            (state, None)
        } else {
            (state.clone().slice([0..batch, 0..active_len]), Some(state.slice([0..batch, active_len..n])))
        };
        let rows = active.reshape([batch * blocks, dim]);
        let (out, ldj) = match (direction, without_ldj) {
            (Direction::Forward, _) => {
                let (out, ldj) = self.layers[k].forward(rows);
                (out, Some(ldj))
            }
            (Direction::Inverse, false) => {
                let (out, ldj) = self.layers[k].inverse(rows);
                (out, Some(ldj))
            }
            (Direction::Inverse, true) => (self.layers[k].inverse_without_ldj(rows), None),
        };
        let ldj = ldj.map(|l| l.reshape([batch, blocks]).sum_dim(1).squeeze_dim(1));
        let out = out.reshape([batch, active_len]);
        let state = match passive {
            Some(p) => Tensor::cat(vec![out, p], 1),
            None => out,
        };
        (state, ldj)
    }

    /// The sub-layers in the order a pass runs them: finest first forward
    /// (data to latents), coarsest first inverse.
    pub(crate) fn sublayer_order(&self, direction: Direction) -> Vec<usize> {
        let depth = self.layers.len();
        match direction {
            Direction::Forward => (0..depth).collect(),
            Direction::Inverse => (0..depth).rev().collect(),
        }
    }

    /// Data to latents.
    ///
    /// `x: [B, C, L, L]` (logit space) `-> (z: [B, C, L, L], log|det ∂z/∂x|: [B])`.
    pub fn forward(&self, x: Tensor<4>) -> (Tensor<4>, Tensor<1>) {
        let dims = x.dims();
        let mut state = x.reshape([dims[0], dims[1] * dims[2] * dims[3]]);
        let mut ldj = Tensor::<1>::zeros([dims[0]], &state.device());
        for k in self.sublayer_order(Direction::Forward) {
            state = state.select(1, self.forward_gathers[k].clone());
            let (s, l) = self.apply_sublayer(k, state, Direction::Forward, false);
            state = s;
            ldj = ldj + l.expect("forward log-determinant");
        }
        let state = state.select(1, self.forward_gathers[self.layers.len()].clone());
        (state.reshape(dims), ldj)
    }

    /// Latents to data, the exact inverse of [`Self::forward`].
    ///
    /// `z: [B, C, L, L] -> (x: [B, C, L, L], log|det ∂x/∂z|: [B])`.
    pub fn inverse(&self, z: Tensor<4>) -> (Tensor<4>, Tensor<1>) {
        let (x, ldj) = self.inverse_impl(z, false);
        (x, ldj.expect("inverse log-determinant"))
    }

    /// [`Self::inverse`] without the log-determinant, which drawing images
    /// does not need (it is a quarter of the work of the couplings):
    /// `z: [B, C, L, L] -> x: [B, C, L, L]`.
    pub fn inverse_without_ldj(&self, z: Tensor<4>) -> Tensor<4> {
        self.inverse_impl(z, true).0
    }

    fn inverse_impl(&self, z: Tensor<4>, without_ldj: bool) -> (Tensor<4>, Option<Tensor<1>>) {
        let dims = z.dims();
        let mut state = z.reshape([dims[0], dims[1] * dims[2] * dims[3]]);
        let mut ldj: Option<Tensor<1>> = None;
        for (j, k) in self.sublayer_order(Direction::Inverse).into_iter().enumerate() {
            state = state.select(1, self.inverse_gathers[j].clone());
            let (s, l) = self.apply_sublayer(k, state, Direction::Inverse, without_ldj);
            state = s;
            ldj = match (ldj, l) {
                (Some(acc), Some(l)) => Some(acc + l),
                (acc, l) => acc.or(l),
            };
        }
        let state = state.select(1, self.inverse_gathers[self.layers.len()].clone());
        (state.reshape(dims), ldj)
    }

    /// `log p(x)` of logit-space data under the flow and its prior.
    ///
    /// `x: [B, C, L, L] -> [B]`.
    pub fn log_prob(&self, x: Tensor<4>) -> Tensor<1> {
        let (z, ldj) = self.forward(x);
        ldj + self.prior().log_prob(z)
    }

    /// Bits per dimension of `[0, 1]` images (already dequantised, if wanted),
    /// through the logit transform, as the authors' training loss.
    ///
    /// `x01: [B, C, L, L] -> [B]`.
    pub fn bits_per_dim(&self, x01: Tensor<4>) -> Tensor<1> {
        preprocess::bits_per_dim(self.nats_per_dim(x01))
    }

    /// The authors' training loss per image: `-(log p(logit x) + log|det
    /// logit|) / D` nats per dimension of `[0, 1]` images (the trainer
    /// minimises its mean; [`preprocess::nats_to_bits_per_dim`] turns it into
    /// [`Self::bits_per_dim`]).
    ///
    /// `x01: [B, C, L, L] -> [B]`.
    pub fn nats_per_dim(&self, x01: Tensor<4>) -> Tensor<1> {
        let (x, ldj_logit) = preprocess::logit_transform(x01, self.config.logit_constraint);
        preprocess::nats_per_dim(self.log_prob(x), ldj_logit, self.config.num_dims())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{host_uniform, jitter_parameters};

    fn random_flow(size: usize, channels: usize, jitter: f64, device: &Device) -> RgFlow {
        let config = RgFlowConfig::from_level_specs(size, channels, "2", "1", "1", "16").unwrap();
        jitter_parameters(config.init(device), jitter, 7)
    }

    fn max_abs_diff(a: Tensor<4>, b: Tensor<4>) -> f32 {
        (a - b).abs().max().into_scalar::<f32>()
    }

    /// ‖a − b‖ / ‖b‖.
    fn rel_err(a: Tensor<4>, b: Tensor<4>) -> f32 {
        let norm = b.clone().square().sum().sqrt().into_scalar::<f32>();
        (a - b).square().sum().sqrt().into_scalar::<f32>() / norm
    }

    /// Each level's decimator and disentangler are its two sub-layers, in
    /// forward order, with the layout of their own per-sub-layer knobs.
    #[test]
    fn decimators_and_disentanglers_are_the_levels_sub_layers() {
        let device = Device::flex();
        let config = RgFlowConfig::from_level_specs(16, 3, "3,2,1", "1", "1", "8,12,16").unwrap();
        let flow = config.init(&device);
        for level in 0..flow.lattice().levels() {
            for (kind, stack) in [
                (SubLayerKind::Decimator, flow.decimator(level)),
                (SubLayerKind::Disentangler, flow.disentangler(level)),
            ] {
                let k = MeraLattice::sublayer_index(level, kind);
                let sub = &flow.lattice().sublayers[k];
                assert_eq!((sub.level, sub.kind), (level, kind));
                assert_eq!(stack.layout(), config.stack_layout(k));
                assert_eq!(stack.layout().nlayers, 3 - level);
            }
        }
    }

    #[test]
    #[should_panic(expected = "level 3 of a flow with 3 levels")]
    fn a_level_past_the_top_is_named() {
        let device = Device::flex();
        let flow = RgFlowConfig::from_level_specs(16, 3, "1", "1", "1", "8").unwrap().init(&device);
        let _ = flow.decimator(3);
    }

    #[test]
    fn inverse_undoes_forward() {
        let device = Device::flex();
        for size in [8, 16, 32, 64] {
            for channels in [1, 3] {
                // Strong random couplings make deep flows ill-conditioned in f32.
                let flow = random_flow(size, channels, 0.1, &device);
                let x = host_uniform([2, channels, size, size], -2.5, 2.5, 1, &device);
                let (z, ldj) = flow.forward(x.clone());
                assert!(max_abs_diff(z.clone(), x.clone()) > 1e-2, "L={size} C={channels}: flow is the identity");
                let (x_back, inv_ldj) = flow.inverse(z);
                let err = rel_err(x_back, x);
                assert!(err < 1e-5, "L={size} C={channels}: round trip relative error {err}");
                let ldj_sum = (ldj + inv_ldj).abs().max().into_scalar::<f32>();
                assert!(ldj_sum < 1e-3, "L={size} C={channels}: ldj + inverse ldj = {ldj_sum}");
            }
        }
    }

    /// `log|det|` of a small dense matrix by LU with partial pivoting (f64).
    fn log_abs_det(mut a: Vec<f64>, n: usize) -> f64 {
        let mut total = 0.0;
        for col in 0..n {
            let pivot = (col..n).max_by(|&i, &j| a[i * n + col].abs().total_cmp(&a[j * n + col].abs())).unwrap();
            if pivot != col {
                for k in 0..n {
                    a.swap(pivot * n + k, col * n + k);
                }
            }
            let p = a[col * n + col];
            total += p.abs().ln();
            for row in col + 1..n {
                let f = a[row * n + col] / p;
                for k in col..n {
                    a[row * n + k] -= f * a[col * n + k];
                }
            }
        }
        total
    }

    #[test]
    fn log_det_matches_the_full_jacobian() {
        let device = Device::flex().autodiff();
        for (size, channels) in [(4, 3), (8, 1)] {
            let flow = random_flow(size, channels, 0.3, &device);
            let n = channels * size * size;
            let x0 = host_uniform([1, channels, size, size], -1.7, 1.7, 2, &device);
            // Row b of the batch carries output component b: one backward pass
            // gives the whole Jacobian, row by row.
            let x = x0.clone().repeat_dim(0, n).detach().require_grad();
            let (z, ldj) = flow.forward(x.clone());
            let selector = Tensor::<2>::eye(n, &device).reshape([n, channels, size, size]);
            let grads = (z * selector).sum().backward();
            let jac: Vec<f64> =
                x.grad(&grads).unwrap().into_data().try_to_vec::<f32>().unwrap().into_iter().map(f64::from).collect();
            // Not a vacuous test: the map is far from the identity. (Its
            // log-det may still be small: the couplings' log-scales take both
            // signs, and the random init depends on what else drew from the
            // device's RNG.)
            let off_identity = jac
                .iter()
                .enumerate()
                .map(|(i, &j)| (j - if i % (n + 1) == 0 { 1.0 } else { 0.0 }).abs())
                .fold(0.0, f64::max);
            assert!(off_identity > 0.1, "L={size} C={channels}: the flow is close to the identity ({off_identity})");
            let brute = log_abs_det(jac, n);
            let ours = ldj.narrow(0, 0, 1).into_scalar::<f32>() as f64;
            assert!(
                (brute - ours).abs() < 1e-3 * brute.abs().max(1.0),
                "L={size} C={channels}: {ours} vs brute force {brute}"
            );
        }
    }
}
