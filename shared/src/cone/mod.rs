//! Causal cones: cached passes and local recomputation. After a change to a few sites, only the blocks of each
//! sub-layer that the change reaches are evaluated again — `O(log L)` block
//! evaluations for a local edit instead of `O(L²)` — with the same numbers as
//! a full pass.
//!
//! A [`FlowCache`] holds every sub-layer's output for a batch, in canonical
//! `[C·L²]` order, and the log-det of every block. An update gathers the
//! dirty blocks' rows from the new input, runs their couplings, and writes the
//! rows over the cached state (an indexed assignment: values are copied, never
//! re-added, and gradients flow — inpainting differentiates through it).
//!
//! Those updates run as burn ops, on any backend. On the CPU, [`PackedFlow`]
//! does the same with packed weights and host states, so that an update's
//! time follows its blocks rather than per-op overheads.

mod packed;

use burn::prelude::*;
use burn::tensor::IndexingUpdateOp;

use crate::flow::RgFlow;
use crate::gather::index_tensor;

pub use packed::{PackedCache, PackedFlow};

/// Which way a cached pass runs (the flow's one [`Direction`], here too).
pub use crate::flow::Direction;

/// The intermediate results of one pass over a batch.
#[derive(Debug, Clone)]
pub struct FlowCache {
    /// The pass's direction.
    pub direction: Direction,
    /// `states[0]` is the input, `states[j + 1]` the state after the `j`-th
    /// sub-layer run; each `[B, C·L²]` in canonical order.
    pub states: Vec<Tensor<2>>,
    /// Log-det of every block of sub-layer `k`, `[B, blocks_k]` (indexed by `k`).
    pub block_ldj: Vec<Tensor<2>>,
}

/// How much work an update did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalStats {
    /// Blocks whose couplings ran.
    pub blocks_evaluated: usize,
    /// Blocks a full pass evaluates.
    pub blocks_total: usize,
}

impl RgFlow {
    /// Runs the given blocks of every sub-layer, starting from `input`.
    ///
    /// With a `base` pass and the sites where `input` differs from its input,
    /// the blocks not recomputed take the base pass's values: each new state
    /// is the base state with only the elements that differ written over it
    /// (the dirty blocks' and the changed sites a sub-layer passes through), so
    /// an update costs its blocks plus a copy, not a gather of every element.
    /// Without one, sites outside the given blocks pass through unchanged.
    fn run_blocks(
        &self,
        direction: Direction,
        input: Tensor<2>,
        dirty: &[Vec<usize>],
        base: Option<(&FlowCache, &[bool])>,
    ) -> (FlowCache, LocalStats) {
        let [batch, n] = input.dims();
        let channels = self.config().channels;
        let plane = n / channels;
        let dim = self.config().block_dim();
        let device = input.device();
        let mut states = vec![input];
        let mut block_ldj: Vec<Option<Tensor<2>>> = vec![None; self.layers.len()];
        let mut stats = LocalStats { blocks_evaluated: 0, blocks_total: 0 };
        // Sites where this pass may differ from the base pass so far.
        let mut marked = base.map(|(_, changed)| changed.to_vec());
        for (j, k) in self.sublayer_order(direction).into_iter().enumerate() {
            let sub = &self.lattice().sublayers[k];
            let blocks = &dirty[k];
            stats.blocks_total += sub.num_blocks;
            stats.blocks_evaluated += blocks.len();
            let previous = states[j].clone();
            let elements = self.lattice().block_elements(k, blocks, channels);
            let (rows, ldj) = if blocks.is_empty() {
                (None, None)
            } else {
                let rows = previous
                    .clone()
                    .select(1, index_tensor(elements.clone(), &device))
                    .reshape([batch * blocks.len(), dim]);
                let (rows, ldj) = match direction {
                    Direction::Forward => self.layers[k].forward(rows),
                    Direction::Inverse => self.layers[k].inverse(rows),
                };
                (Some(rows.reshape([batch, blocks.len() * dim])), Some(ldj.reshape([batch, blocks.len()])))
            };
            let assign = |target: Tensor<2>, positions: Vec<usize>, values: Tensor<2>| {
                target.select_assign(1, index_tensor(positions, &device), values, IndexingUpdateOp::Assign)
            };
            let state = match (base, marked.as_mut()) {
                (Some((base, _)), Some(marked)) => {
                    // Changed sites this sub-layer does not touch keep their new values.
                    let through: Vec<usize> = (0..channels)
                        .flat_map(|c| {
                            (0..plane).filter(|&s| marked[s] && sub.block_of(s).is_none()).map(move |s| c * plane + s)
                        })
                        .collect();
                    for &b in blocks {
                        for s in 0..self.lattice().block_sites() {
                            marked[sub.site(self.lattice().size, b, s)] = true;
                        }
                    }
                    let mut values: Vec<Tensor<2>> = rows.into_iter().collect();
                    if !through.is_empty() {
                        values.push(previous.select(1, index_tensor(through.clone(), &device)));
                    }
                    let positions: Vec<usize> = elements.iter().copied().chain(through).collect();
                    let base_out = base.states[j + 1].clone();
                    if positions.is_empty() { base_out } else { assign(base_out, positions, Tensor::cat(values, 1)) }
                }
                _ => match rows {
                    Some(rows) => assign(previous, elements, rows),
                    None => previous,
                },
            };
            let ldj = match (ldj, base) {
                (Some(ldj), Some((base, _))) if blocks.len() < sub.num_blocks => base.block_ldj[k]
                    .clone()
                    .select_assign(1, index_tensor(blocks.clone(), &device), ldj, IndexingUpdateOp::Assign),
                (Some(ldj), _) => ldj,
                (None, Some((base, _))) => base.block_ldj[k].clone(),
                (None, None) => Tensor::zeros([batch, sub.num_blocks], &device),
            };
            states.push(state);
            block_ldj[k] = Some(ldj);
        }
        let cache = FlowCache {
            direction,
            states,
            block_ldj: block_ldj.into_iter().map(|l| l.expect("every sub-layer ran")).collect(),
        };
        (cache, stats)
    }

    /// A full pass that keeps its intermediate results.
    ///
    /// `input: [B, C, L, L]` (logit-space `x` for `Forward`, `z` for `Inverse`).
    pub fn run_cached(&self, direction: Direction, input: Tensor<4>) -> FlowCache {
        let [b, c, h, w] = input.dims();
        let all: Vec<Vec<usize>> = self.lattice().sublayers.iter().map(|s| (0..s.num_blocks).collect()).collect();
        self.run_blocks(direction, input.reshape([b, c * h * w]), &all, None).0
    }

    /// An inverse pass that runs only the given blocks (per sub-layer, as
    /// [`crate::MeraLattice::cone`] lists them) and passes every other site
    /// through. Exact at every site whose value depends on those blocks alone:
    /// for the blocks of `cone(marked, Direction::Forward)`, at the `marked` sites — the
    /// blocks a pixel depends on in the inverse pass are the blocks its
    /// forward cone reaches. Elsewhere the output means nothing.
    ///
    /// `z: [B, C, L, L] -> [B, C, L, L]`.
    pub fn inverse_blocks(&self, z: Tensor<4>, blocks: &[Vec<usize>]) -> Tensor<4> {
        let dims = z.dims();
        let [b, c, h, w] = dims;
        let (mut cache, _) = self.run_blocks(Direction::Inverse, z.reshape([b, c * h * w]), blocks, None);
        cache.states.pop().expect("a pass has states").reshape(dims)
    }

    /// Re-runs a cached pass for a new input that differs from the cached one
    /// only at the `changed` sites (`[L²]`, any channel), evaluating only the
    /// blocks the change reaches.
    pub fn update_cached(&self, cache: &FlowCache, input: Tensor<4>, changed: &[bool]) -> (FlowCache, LocalStats) {
        let [b, c, h, w] = input.dims();
        let (dirty, _) = self.lattice().cone(changed, cache.direction);
        self.run_blocks(cache.direction, input.reshape([b, c * h * w]), &dirty, Some((cache, changed)))
    }
}

impl FlowCache {
    /// The pass's output, `[B, C, L, L]`.
    pub fn output(&self, channels: usize, size: usize) -> Tensor<4> {
        let last = self.states.last().expect("a pass has states").clone();
        let b = last.dims()[0];
        last.reshape([b, channels, size, size])
    }

    /// The pass's log-det, `[B]`.
    pub fn log_det(&self) -> Tensor<1> {
        let mut total: Option<Tensor<1>> = None;
        for l in &self.block_ldj {
            let s = l.clone().sum_dim(1).squeeze_dim::<1>(1);
            total = Some(match total {
                Some(t) => t + s,
                None => s,
            });
        }
        total.expect("at least one sub-layer")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RgFlowConfig;
    use crate::testing::{host_uniform, jitter_parameters};

    fn flow(size: usize, device: &Device) -> RgFlow {
        let config = RgFlowConfig::from_level_specs(size, 3, "2", "1", "1", "16").unwrap();
        jitter_parameters(config.init(device), 0.1, 7)
    }

    fn max_diff(a: Tensor<4>, b: Tensor<4>) -> f32 {
        (a - b).abs().max().into_scalar::<f32>()
    }

    #[test]
    fn cached_pass_equals_the_plain_one() {
        let device = Device::flex();
        let f = flow(16, &device);
        let x = host_uniform([2, 3, 16, 16], -1.7, 1.7, 1, &device);
        let (z, ldj) = f.forward(x.clone());
        let cache = f.run_cached(Direction::Forward, x);
        assert_eq!(max_diff(cache.output(3, 16), z.clone()), 0.0);
        assert!((cache.log_det() - ldj).abs().max().into_scalar::<f32>() < 1e-4);
        let (x_back, _) = f.inverse(z.clone());
        let inv = f.run_cached(Direction::Inverse, z);
        assert_eq!(max_diff(inv.output(3, 16), x_back), 0.0);
    }

    #[test]
    fn local_update_equals_full_recomputation() {
        let device = Device::flex();
        for size in [16, 32] {
            let f = flow(size, &device);
            let x = host_uniform([2, 3, size, size], -1.7, 1.7, 2, &device);
            for direction in [Direction::Forward, Direction::Inverse] {
                let cache = f.run_cached(direction, x.clone());
                // Edit a 2×3 patch in every channel.
                let mut changed = vec![false; size * size];
                let mut edit = x.clone().into_data().try_to_vec::<f32>().unwrap();
                for (r, c) in [(5, 6), (5, 7), (5, 8), (6, 6), (6, 7), (6, 8)] {
                    changed[r * size + c] = true;
                    for b in 0..2 {
                        for ch in 0..3 {
                            edit[((b * 3 + ch) * size + r) * size + c] += 0.7;
                        }
                    }
                }
                let x2 = Tensor::<4>::from_data(TensorData::new(edit, [2, 3, size, size]), &device);
                let (local, stats) = f.update_cached(&cache, x2.clone(), &changed);
                let full = f.run_cached(direction, x2);
                assert!(stats.blocks_evaluated < stats.blocks_total, "{stats:?}");
                assert_eq!(max_diff(local.output(3, size), full.output(3, size)), 0.0, "L={size} {direction:?}");
                let dl = (local.log_det() - full.log_det()).abs().max().into_scalar::<f32>();
                assert!(dl < 1e-3, "L={size} {direction:?}: log-det differs by {dl}");
            }
        }
    }

    #[test]
    fn inverse_over_a_forward_cone_is_exact_on_its_sites() {
        let device = Device::flex();
        let size = 32;
        let f = flow(size, &device);
        let z = host_uniform([2, 3, size, size], -1.5, 1.5, 3, &device);
        let full = f.inverse(z.clone()).0.into_data().try_to_vec::<f32>().unwrap();
        let mut hole = vec![false; size * size];
        for r in 12..18 {
            for c in 3..7 {
                hole[r * size + c] = true;
            }
        }
        let (blocks, _) = f.lattice().cone(&hole, Direction::Forward);
        let total = f.lattice().num_blocks();
        let run: usize = blocks.iter().map(Vec::len).sum();
        assert!(run < total / 2, "{run} of {total} blocks");
        let part = f.inverse_blocks(z, &blocks).into_data().try_to_vec::<f32>().unwrap();
        let plane = size * size;
        let mut differing_elsewhere = 0;
        for (e, (a, b)) in full.iter().zip(&part).enumerate() {
            if hole[e % plane] {
                assert_eq!(a, b, "hole element {e}");
            } else if a != b {
                differing_elsewhere += 1;
            }
        }
        // Outside the hole the partial pass is not the inverse (else the test proves nothing).
        assert!(differing_elsewhere > 0);
    }
}
