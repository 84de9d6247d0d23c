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
        let halves = inverse_halves(stack)
            .into_iter()
            .map(|half| PackedHalf {
                s: PackedNet::new(half.s),
                t: PackedNet::new(half.t),
                conditioning: half.conditioning,
                updated: half.updated,
            })
            .collect();
        Self { dim: stack.layout().dim(), halves }
    }
}

impl<E: Operand> PackedNet<E> {
    fn new(net: PlainNet) -> Self {
        let blocks = net
            .blocks
            .into_iter()
            .map(|layers| {
                layers
                    .into_iter()
                    .map(|l| PackedLayer {
                        beta: l.beta,
                        matrix: PackedMatrix::new(&l.weight, &l.bias, l.inputs, l.outputs),
                    })
                    .collect()
            })
            .collect();
        Self { blocks, scale: net.scale }
    }
}

/// One linear layer and the Swish before it, restricted to the inputs and
/// outputs a half uses, as plain row-major host values.
#[derive(Debug, Clone)]
pub(super) struct PlainLayer {
    /// Inputs `K` (rows of the weight).
    pub inputs: usize,
    /// Outputs `N` (columns).
    pub outputs: usize,
    /// The Swish's `β`, `[K]`.
    pub beta: Vec<f32>,
    /// The weight-normalised weight, `[K, N]` row-major.
    pub weight: Vec<f32>,
    /// The bias, `[N]`.
    pub bias: Vec<f32>,
}

/// One s or t network for one half: residual blocks of [`PlainLayer`]s and
/// the final scale over the updated half.
#[derive(Debug, Clone)]
pub(super) struct PlainNet {
    pub blocks: Vec<Vec<PlainLayer>>,
    pub scale: Vec<f32>,
}

/// One half of a coupling layer with plain networks (see [`PackedHalf`]).
#[derive(Debug, Clone)]
pub(super) struct PlainHalf {
    pub conditioning: Vec<usize>,
    pub updated: Vec<usize>,
    pub s: PlainNet,
    pub t: PlainNet,
}

/// A stack's halves in the order the inverse runs them — last coupling
/// layer first, each second half first — with the checkerboard's zeros cut
/// out of their networks. The one home of that order for every decoder.
pub(super) fn inverse_halves(stack: &CouplingStack) -> Vec<PlainHalf> {
    let layout = stack.layout();
    let mut halves = Vec::new();
    for (s_net, t_net) in stack.s_layers.iter().zip(&stack.t_layers).rev() {
        for (conditioning, updated) in layout.halves().into_iter().rev() {
            halves.push(PlainHalf {
                s: plain_net(s_net, &conditioning, &updated),
                t: plain_net(t_net, &conditioning, &updated),
                conditioning,
                updated,
            });
        }
    }
    halves
}

fn plain_net(net: &MlpResNet, conditioning: &[usize], updated: &[usize]) -> PlainNet {
    let last_block = net.res_blocks.len() - 1;
    let blocks = net
        .res_blocks
        .iter()
        .enumerate()
        .map(|(b, block)| plain_block(block, (b == 0).then_some(conditioning), (b == last_block).then_some(updated)))
        .collect();
    let scale = host(net.scale.scale.val());
    PlainNet { blocks, scale: updated.iter().map(|&i| scale[i]).collect() }
}

/// A residual block's layers; `inputs` restricts the first layer's inputs,
/// `outputs` the last layer's outputs.
fn plain_block(block: &ResBlock, inputs: Option<&[usize]>, outputs: Option<&[usize]>) -> Vec<PlainLayer> {
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
            PlainLayer { inputs: rows.len(), outputs: cols.len(), beta, weight: w, bias }
        })
        .collect()
}
