//! Local recomputation: after a change to a few sites, only the blocks of each
//! sub-layer that the change reaches are evaluated again — `O(log L)` block
//! evaluations for a local edit instead of `O(L²)` — with the same numbers as
//! a full pass.
//!
//! A [`FlowCache`] holds every sub-layer's output for a batch, in canonical
//! `[C·L²]` order, and the log-det of every block. An update gathers the
//! dirty blocks' rows from the new input, runs their couplings, and writes the
//! rows back by a gather from `[state, new rows]`, so values are copied, never
//! re-added, and gradients flow (inpainting differentiates through it).

use burn::prelude::*;

use crate::flow::RgFlow;
use crate::gather::{index_tensor, pick_columns};

/// Which way a cached pass runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Data to latents.
    Forward,
    /// Latents to data.
    Inverse,
}

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

/// `old` with the entries at `positions` replaced by the columns of `new`,
/// by one gather from `[old, new]`. `old: [B, N]`, `new: [B, positions.len()]`.
fn replace_columns(old: Tensor<2>, positions: &[usize], new: Tensor<2>) -> Tensor<2> {
    let n = old.dims()[1];
    let mut source: Vec<usize> = (0..n).collect();
    for (j, &p) in positions.iter().enumerate() {
        source[p] = n + j;
    }
    pick_columns(vec![old, new], source)
}

impl RgFlow {
    fn order(&self, direction: Direction) -> Vec<usize> {
        let depth = self.layers.len();
        match direction {
            Direction::Forward => (0..depth).collect(),
            Direction::Inverse => (0..depth).rev().collect(),
        }
    }

    /// Runs the given blocks of every sub-layer, starting from `input` and,
    /// for the blocks not recomputed, reusing `base` (a pass over an input that
    /// differs from `input` only where the dirty blocks reach).
    fn run_blocks(
        &self,
        direction: Direction,
        input: Tensor<2>,
        dirty: &[Vec<usize>],
        base: Option<&FlowCache>,
    ) -> (FlowCache, LocalStats) {
        let [batch, n] = input.dims();
        let channels = self.config().channels;
        let plane = n / channels;
        let dim = self.config().block_dim();
        let device = input.device();
        let mut states = vec![input];
        let mut block_ldj: Vec<Option<Tensor<2>>> = vec![None; self.layers.len()];
        let mut stats = LocalStats { blocks_evaluated: 0, blocks_total: 0 };
        for (j, k) in self.order(direction).into_iter().enumerate() {
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
            // Each output element comes from one of: the previous state (sites
            // this sub-layer does not touch), the base pass's output (its clean
            // blocks), or the new rows (its dirty blocks) — one gather.
            let mut parts = vec![previous];
            let base_out = base.filter(|_| blocks.len() < sub.num_blocks).map(|b| b.states[j + 1].clone());
            let base_offset = base_out.as_ref().map(|_| n);
            parts.extend(base_out);
            let rows_offset = parts.len() * n;
            let mut source: Vec<usize> = (0..n)
                .map(|e| match (sub.block_of(e % plane), base_offset) {
                    (Some(_), Some(off)) => off + e,
                    _ => e,
                })
                .collect();
            for (p, &e) in elements.iter().enumerate() {
                source[e] = rows_offset + p;
            }
            parts.extend(rows);
            let state = pick_columns(parts, source);
            let ldj = match (ldj, base) {
                (Some(ldj), Some(base)) if blocks.len() < sub.num_blocks => {
                    replace_columns(base.block_ldj[k].clone(), blocks, ldj)
                }
                (Some(ldj), _) => ldj,
                (None, Some(base)) => base.block_ldj[k].clone(),
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

    /// Re-runs a cached pass for a new input that differs from the cached one
    /// only at the `changed` sites (`[L²]`, any channel), evaluating only the
    /// blocks the change reaches.
    pub fn update_cached(&self, cache: &FlowCache, input: Tensor<4>, changed: &[bool]) -> (FlowCache, LocalStats) {
        let [b, c, h, w] = input.dims();
        let (dirty, _) = self.lattice().cone(changed, cache.direction == Direction::Inverse);
        self.run_blocks(cache.direction, input.reshape([b, c * h * w]), &dirty, Some(cache))
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
}
