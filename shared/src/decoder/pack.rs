//! The s/t networks of every coupling, read from the model once and packed
//! for the tile kernels, one copy per half of each coupling layer.
//!
//! Packing per half lets each network skip the checkerboard's zeros: the
//! conditioner is zero on the half being updated, so the first linear layer
//! reads only the conditioning half (its other rows multiply zeros), and only
//! the updated half of the last layer's output is used, so it computes only
//! those columns — a tenth of the multiplies at the paper's widths.

use burn::prelude::*;

use super::matmul::{Operand, PackedMatrix};
use crate::coupling::CouplingStack;
use crate::nn::{MlpResNet, ResBlock};

/// Host values of a tensor (any float dtype).
pub(super) fn host<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_into_vec_as::<f32>().expect("a float tensor converts to f32")
}

/// One linear layer and the Swish before it.
#[derive(Debug, Clone)]
pub(super) struct PackedLayer<E: Operand> {
    /// The Swish's `β` over the layer's inputs.
    pub beta: Vec<f32>,
    /// Weight and bias.
    pub matrix: PackedMatrix<E>,
}

/// One s or t network, for one half of a coupling layer.
#[derive(Debug, Clone)]
pub(super) struct PackedNet<E: Operand> {
    /// Linear layers per residual block. The first layer of block 0 reads
    /// only the conditioning half; the last layer of the last block writes
    /// only the updated half.
    pub blocks: Vec<Vec<PackedLayer<E>>>,
    /// The final per-feature scale, over the updated half.
    pub scale: Vec<f32>,
}

/// One half of a coupling layer: the half it updates and its two networks.
#[derive(Debug, Clone)]
pub(super) struct PackedHalf<E: Operand> {
    /// Block positions (of `C·K²`) the networks read.
    pub conditioning: Vec<usize>,
    /// Block positions the update changes.
    pub updated: Vec<usize>,
    /// The scale network (ends in `tanh`).
    pub s: PackedNet<E>,
    /// The translation network.
    pub t: PackedNet<E>,
}

/// A sub-layer's coupling stack, as its halves run in the inverse direction.
#[derive(Debug, Clone)]
pub(super) struct PackedStack<E: Operand> {
    /// Values per block, `C·K²`.
    pub dim: usize,
    /// Inverse order: last coupling layer first, each second half first.
    pub halves: Vec<PackedHalf<E>>,
}

impl<E: Operand> PackedStack<E> {
    pub fn new(stack: &CouplingStack) -> Self {
        let layout = stack.layout();
        let mut halves = Vec::new();
        // The inverse undoes the forward's halves in reverse, last layer first.
        for (s_net, t_net) in stack.s_layers.iter().zip(&stack.t_layers).rev() {
            for (conditioning, updated) in layout.halves().into_iter().rev() {
                halves.push(PackedHalf {
                    s: PackedNet::new(s_net, &conditioning, &updated),
                    t: PackedNet::new(t_net, &conditioning, &updated),
                    conditioning,
                    updated,
                });
            }
        }
        Self { dim: layout.dim(), halves }
    }
}

impl<E: Operand> PackedNet<E> {
    fn new(net: &MlpResNet, conditioning: &[usize], updated: &[usize]) -> Self {
        let last_block = net.res_blocks.len() - 1;
        let blocks = net
            .res_blocks
            .iter()
            .enumerate()
            .map(|(b, block)| pack_block(block, (b == 0).then_some(conditioning), (b == last_block).then_some(updated)))
            .collect();
        let scale = host(net.scale.scale.val());
        Self { blocks, scale: updated.iter().map(|&i| scale[i]).collect() }
    }
}

/// A residual block's layers; `inputs` restricts the first layer's inputs,
/// `outputs` the last layer's outputs.
fn pack_block<E: Operand>(
    block: &ResBlock,
    inputs: Option<&[usize]>,
    outputs: Option<&[usize]>,
) -> Vec<PackedLayer<E>> {
    let last = block.linears.len() - 1;
    block
        .linears
        .iter()
        .zip(&block.activations)
        .enumerate()
        .map(|(l, (linear, swish))| {
            let weight = linear.weight();
            let [k, n] = weight.dims();
            let (mut w, mut bias, mut beta) = (host(weight), host(linear.bias.val()), host(swish.beta.val()));
            let mut rows: Vec<usize> = (0..k).collect();
            let mut cols: Vec<usize> = (0..n).collect();
            if let (0, Some(inputs)) = (l, inputs) {
                rows = inputs.to_vec();
            }
            if let (true, Some(outputs)) = (l == last, outputs) {
                cols = outputs.to_vec();
            }
            if rows.len() != k || cols.len() != n {
                w = rows.iter().flat_map(|&r| cols.iter().map(move |&c| (r, c))).map(|(r, c)| w[r * n + c]).collect();
                bias = cols.iter().map(|&c| bias[c]).collect();
                beta = rows.iter().map(|&r| beta[r]).collect();
            }
            PackedLayer { beta, matrix: PackedMatrix::new(&w, &bias, rows.len(), cols.len()) }
        })
        .collect()
}
