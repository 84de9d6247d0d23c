//! The shape of a whole coupling stack as one fused op sees it: its
//! parameters as one flat vector, and the checkerboard halves.
//!
//! A fused stack op takes every parameter of a sub-layer's
//! [`CouplingStack`](crate::coupling::CouplingStack) as one `[P]` tensor
//! (see [`CouplingStack::flat_params`](crate::coupling::CouplingStack::flat_params)),
//! so that autodiff sees two inputs (the blocks and the parameters) whatever
//! the depth of the stack. [`StackLayout`] says where each parameter lives in
//! that vector; the model and the kernels both read it, so the order has one
//! home.

use std::ops::Range;

use burn::config::Config;

use crate::coupling::{HALVES, Squares, checkerboard_masks};

/// The s or t network of a coupling layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Net {
    /// The scale network (its output goes through `tanh`).
    S = 0,
    /// The translation network.
    T = 1,
}

/// Where one linear layer (and the Swish before it) keeps its parameters in
/// the flat vector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinearParams {
    /// The Swish's `β`, `[in]`.
    pub beta: Range<usize>,
    /// The direction `v`, `[in, out]` row-major.
    pub v: Range<usize>,
    /// The magnitude `g`, `[out]`.
    pub g: Range<usize>,
    /// The bias, `[out]`.
    pub bias: Range<usize>,
}

/// The sizes of a coupling stack (one sub-layer's), enough to locate every
/// parameter in its flat vector. Order: coupling layer, then `s` before `t`,
/// then residual block, then linear layer (`β`, `v`, `g`, bias), and each
/// network's final scale after its blocks.
///
/// It is the stack's burn-style config too: [`StackLayout::init`] builds
/// the [`CouplingStack`](crate::coupling::CouplingStack) it describes.
#[derive(Config, Debug, Copy, PartialEq, Eq, Hash)]
pub struct StackLayout {
    /// Channels `C` of a block.
    pub channels: usize,
    /// Block side `K`; a block has `C·K²` values.
    pub kernel_size: usize,
    /// Coupling layers.
    pub nlayers: usize,
    /// Residual blocks per network.
    pub nresblocks: usize,
    /// Hidden layers per residual block (`nmlp + 1` linear layers).
    pub nmlp: usize,
    /// Hidden width.
    pub nhidden: usize,
}

impl StackLayout {
    /// Values per block, `D = C·K²`.
    pub fn dim(&self) -> usize {
        self.channels * self.kernel_size * self.kernel_size
    }

    /// Linear layers per residual block.
    pub fn linears(&self) -> usize {
        self.nmlp + 1
    }

    /// The widths a residual block's activations pass through, `[D, H
    /// (nmlp times), D]` (the authors' `build_res_block`).
    pub fn layer_widths(&self) -> Vec<usize> {
        let mut widths: Vec<usize> = (0..self.linears()).map(|l| self.widths(l).0).collect();
        widths.push(self.dim());
        widths
    }

    /// `(in, out)` widths of linear layer `l` of a residual block (called
    /// per parameter lookup, so computed without building the list).
    pub fn widths(&self, l: usize) -> (usize, usize) {
        let d = self.dim();
        let input = if l == 0 { d } else { self.nhidden };
        let output = if l == self.nmlp { d } else { self.nhidden };
        (input, output)
    }

    fn linear_len(&self, l: usize) -> usize {
        let (i, o) = self.widths(l);
        i + i * o + 2 * o
    }

    fn block_len(&self) -> usize {
        (0..self.linears()).map(|l| self.linear_len(l)).sum()
    }

    /// One network's values, in `u64` (see [`Self::num_params_u64`]).
    fn net_len_u64(&self) -> u64 {
        self.nresblocks as u64 * self.block_len() as u64 + self.dim() as u64
    }

    fn net_len(&self) -> usize {
        usize::try_from(self.net_len_u64()).expect("a coupling stack too large for this platform")
    }

    fn net_start(&self, layer: usize, net: Net) -> usize {
        (2 * layer + net as usize) * self.net_len()
    }

    /// Number of parameters, `P`.
    pub fn num_params(&self) -> usize {
        usize::try_from(self.num_params_u64()).expect("a coupling stack too large for this platform")
    }

    /// [`Self::num_params`] counted in `u64`: a config is sized with it
    /// before it is trusted (see `RgFlowConfig::validate`), where a 32-bit
    /// `usize` (wasm) could overflow. (A residual block's values are still
    /// summed in `usize`: within `validate`'s caps on the widths and the
    /// layers they stay below 2³².)
    pub fn num_params_u64(&self) -> u64 {
        2 * self.nlayers as u64 * self.net_len_u64()
    }

    /// Linear layer `l` of residual block `block` of the `net` of coupling
    /// layer `layer`.
    pub fn linear(&self, layer: usize, net: Net, block: usize, l: usize) -> LinearParams {
        let mut at = self.net_start(layer, net) + block * self.block_len();
        at += (0..l).map(|l| self.linear_len(l)).sum::<usize>();
        let (i, o) = self.widths(l);
        let beta = at..at + i;
        let v = beta.end..beta.end + i * o;
        let g = v.end..v.end + o;
        let bias = g.end..g.end + o;
        LinearParams { beta, v, g, bias }
    }

    /// The final per-feature scale of a network, `[D]`.
    pub fn scale(&self, layer: usize, net: Net) -> Range<usize> {
        let end = self.net_start(layer, net) + self.net_len();
        end - self.dim()..end
    }

    /// Multiply-adds of the stack's matrix products per block row, forward,
    /// with the checkerboard's zeros skipped (the first layer reads the
    /// conditioning half, the last computes the updated half). A training
    /// step does three times as many (the input and weight gradients).
    pub fn forward_macs_per_row(&self) -> usize {
        let half = self.dim() / 2;
        let last_block = self.nresblocks - 1;
        let per_net: usize = (0..self.nresblocks)
            .flat_map(|b| (0..self.linears()).map(move |l| (b, l)))
            .map(|(b, l)| {
                let (i, o) = self.widths(l);
                let i = if b == 0 && l == 0 { half } else { i };
                let o = if b == last_block && l == self.nmlp { half } else { o };
                i * o
            })
            .sum();
        per_net * 2 * 2 * self.nlayers
    }

    /// `(conditioning, updated)` block positions of each half of a coupling
    /// layer, in the forward order ([`HALVES`]).
    pub fn halves(&self) -> [(Vec<usize>, Vec<usize>); 2] {
        let (left, _) = checkerboard_masks(self.channels, self.kernel_size);
        let positions = |on: bool| (0..left.len()).filter(|&i| (left[i] == 1.0) == on).collect::<Vec<_>>();
        let (left, right) = (positions(true), positions(false));
        HALVES.map(|squares| match squares {
            Squares::Left => (left.clone(), right.clone()),
            Squares::Right => (right.clone(), left.clone()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The layout is a burn config: saved as JSON and read back, it builds
    /// the stack it describes, whose flat parameters it locates.
    #[test]
    fn the_layout_is_the_stacks_config() {
        let layout = StackLayout { channels: 3, kernel_size: 4, nlayers: 2, nresblocks: 2, nmlp: 1, nhidden: 16 };
        let back: StackLayout = serde_json::from_str(&serde_json::to_string(&layout).unwrap()).unwrap();
        assert_eq!(back, layout);
        let stack = back.init(&burn::prelude::Device::flex());
        assert_eq!(stack.layout(), layout);
        assert_eq!(stack.flat_params().dims(), [layout.num_params()]);
    }

    /// The ranges tile `0..P` in the documented order, without gaps.
    #[test]
    fn parameters_tile_the_flat_vector() {
        let layout = StackLayout { channels: 3, kernel_size: 4, nlayers: 2, nresblocks: 2, nmlp: 2, nhidden: 40 };
        let mut at = 0;
        for layer in 0..layout.nlayers {
            for net in [Net::S, Net::T] {
                for block in 0..layout.nresblocks {
                    for l in 0..layout.linears() {
                        let p = layout.linear(layer, net, block, l);
                        for range in [p.beta, p.v, p.g, p.bias] {
                            assert_eq!(range.start, at);
                            at = range.end;
                        }
                    }
                }
                let scale = layout.scale(layer, net);
                assert_eq!((scale.start, scale.len()), (at, 48));
                at = scale.end;
            }
        }
        assert_eq!(at, layout.num_params());
        let [(c0, u0), (c1, u1)] = layout.halves();
        assert_eq!((c0.len(), u0.len()), (24, 24));
        assert_eq!((c0, u0), (u1, c1));
    }
}
