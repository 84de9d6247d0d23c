//! A whole coupling stack, forward and backward, one tile of block rows at a
//! time: the training path's counterpart of the packed decoder.
//!
//! Composed from per-op kernels, every layer of every s/t network writes its
//! `[blocks, width]` activations to memory, reads them back, and forks and
//! joins the thread pool, three times per step (forward, backward of the
//! input, backward of the weights). Blocks are independent inside a
//! sub-layer, so here each task takes a tile of block rows ([`TILE_ROWS`],
//! or [`RECOMPUTING_TILE_ROWS`]) and runs the stack's couplings on it with
//! the activations in cache, writing to memory only what the backward needs
//! (its *tape*: the state before each half-coupling, each block's input and,
//! except on AMX, each hidden layer's pre-activation; see [`TapeLayout`]).
//! The backward replays the tape tile by tile. The checkerboard's zeros are
//! skipped as in the decoder: the first layer of a network reads only the
//! conditioning half and the last computes only the updated half.
//!
//! Parameter gradients are summed per *group* of consecutive tiles and the
//! groups then in order; the groups depend only on the number of rows and
//! the tape's kind (the CPU's and the precision's), so a step's gradients
//! are the same bits whatever the thread pool did (training resumes
//! exactly).
//!
//! Shapes: a tile is `R` rows; the state `x` is `[R, D]` (`D = C·K²`), the
//! networks' outputs `[R, U]` over the updated half (`U = D/2`), hidden
//! activations `[R, H]` stored with the row stride `Hs` of the matrix
//! products (`H` rounded up to a panel).

use std::f32::consts::FRAC_1_SQRT_2;
use std::sync::Arc;

use multiversion::multiversion;
use multiversion::target::target_cfg_f;

use super::{exp, sigmoid, tanh, weight_norm, weight_norm_backward};
use crate::decoder::ProductPrecision;
use crate::decoder::matmul::{
    Bf16, Isa, MR, Operand, PANEL, PackedMatrix, Prefetch, SwishBackward, TileKernels, outer_accumulate,
    outer_accumulate_bf16,
};
use crate::kernels::stack::{LinearParams, Net, StackLayout};

/// Most block rows per tile: a tile's working set (activations of one
/// network) stays in a core's L2.
const TILE_ROWS: usize = 64;
/// Most block rows per tile of a training pass whose tape leaves out the
/// hidden values (on AMX, [`TapeLayout`]): no tape share streams through
/// the cache, and twice the rows halve the weight tiles' loads and the
/// weight gradients' accumulator traffic per row (340 against 323
/// images/s; with the tape kept, in f32, 128 rows were 4–8 % slower).
const RECOMPUTING_TILE_ROWS: usize = 128;
const _: () = assert!(TILE_ROWS.is_multiple_of(MR) && RECOMPUTING_TILE_ROWS.is_multiple_of(MR));
/// Tiles a sub-layer with few rows is cut into at least (so that the top
/// levels, a few blocks per image, still use every core).
const MIN_TILES: usize = 8;

/// Rows per tile for `m` block rows: `most`, or fewer (a multiple of
/// [`MR`]) to make [`MIN_TILES`] tiles. A function of `m` and the tape's
/// kind alone, so the gradients' summation order is too.
fn tile_rows(m: usize, most: usize) -> usize {
    (m.div_ceil(MIN_TILES).div_ceil(MR) * MR).clamp(MR, most)
}

/// The most rows of a tile for a pass whose tape keeps the hidden values
/// or not (a forward without a tape counts as keeping them).
fn most_tile_rows(keep_hidden: bool) -> usize {
    if keep_hidden { TILE_ROWS } else { RECOMPUTING_TILE_ROWS }
}
/// Most groups a backward pass sums parameter gradients over. Each zeroes
/// and then adds a copy of the stack's parameter gradients (8 groups were
/// ~80 MB a step at the bench config): 4 trained 335 against 313 images/s
/// in bf16 on AMX and 200 against 189 in f32 (alternated three times),
/// and still give two threads two groups each to balance.
const MAX_GROUPS: usize = 4;

// ------------------------------------------------------------- Weights --

/// One linear layer of one network, as one half of a coupling uses it.
struct Layer<E: Operand> {
    /// The Swish's `β` over the (kept) inputs.
    beta: Vec<f32>,
    /// `W` (kept rows and columns) and bias, for `operand · W + bias`.
    forward: PackedMatrix<E>,
    /// `Wᵀ`, for the input gradient `grad · Wᵀ`.
    backward: PackedMatrix<E>,
    /// The inputs kept (the first layer reads only the conditioning half).
    rows: Option<Vec<usize>>,
    /// The outputs kept (the last layer computes only the updated half).
    cols: Option<Vec<usize>>,
    /// Where the layer's parameters are.
    params: LinearParams,
    /// Full output width (the row stride of its weight gradient).
    out: usize,
    /// Where a layer that keeps some rows or columns sums its compact
    /// weight gradient over a group's tiles ([`Weights::compact_len`]).
    compact: Option<usize>,
}

/// A network's layers, per residual block and linear layer.
type NetLayers<T> = Vec<Vec<T>>;

/// One half of a coupling layer: what it reads, what it updates, and its
/// two networks.
struct Half<E: Operand> {
    conditioning: Vec<usize>,
    updated: Vec<usize>,
    /// `1` on the conditioning positions, `0` elsewhere, `[D]`.
    conditioning_mask: Vec<f32>,
    /// Per network (`s`, `t`): layers per residual block.
    nets: [NetLayers<Arc<Layer<E>>>; 2],
    /// Per network: the final scale over the updated half, and its range.
    scales: [(Vec<f32>, std::ops::Range<usize>); 2],
}

/// The stack's weights for one step: normalised, restricted and packed per
/// half, in the forward order (layer by layer, first half first).
struct Weights<E: Operand> {
    layout: StackLayout,
    halves: Vec<Half<E>>,
    /// Values of the compact weight gradients of the layers that keep some
    /// rows or columns (block 0's first, the last block's last), one slot
    /// per half, network and such layer: a backward group sums each over
    /// its tiles there and scatters it into the gradient once.
    compact_len: usize,
}

impl<E: Operand> Weights<E> {
    /// Normalises and packs `params`; with `backward` unset (inference) the
    /// transposed matrices the backward multiplies by are left empty.
    fn new(layout: StackLayout, params: &[f32], backward: bool) -> Self {
        assert_eq!(params.len(), layout.num_params(), "stack parameters are not [{}]", layout.num_params());
        let d = layout.dim();
        let last_block = layout.nresblocks - 1;
        let last_layer = layout.nmlp;
        // Only block 0's first layer and the last block's last layer differ
        // between a coupling's two halves (they keep the conditioning inputs
        // and the updated outputs); every other layer is packed once and
        // shared, so the second half finds it in cache.
        let interior = |b: usize, l: usize| !(b == 0 && l == 0 || b == last_block && l == last_layer);
        let nets: Vec<(usize, Net)> = (0..layout.nlayers).flat_map(|i| [Net::S, Net::T].map(|net| (i, net))).collect();
        let matrices: Vec<Vec<Vec<Vec<f32>>>> = par_map(&nets, |&(i, net)| {
            (0..layout.nresblocks)
                .map(|b| {
                    (0..layout.linears())
                        .map(|l| {
                            let p = layout.linear(i, net, b, l);
                            weight_norm(&params[p.v], &params[p.g])
                        })
                        .collect()
                })
                .collect()
        });
        let layer = |i: usize, net: Net, b: usize, l: usize, rows: Option<Vec<usize>>, cols: Option<Vec<usize>>| {
            let (k, n) = layout.widths(l);
            let w = &matrices[2 * i + net as usize][b][l];
            Arc::new(Layer::new(w, params, layout.linear(i, net, b, l), [k, n], rows, cols, backward))
        };
        let shared: Vec<NetLayers<Option<Arc<Layer<E>>>>> = par_map(&nets, |&(i, net)| {
            (0..layout.nresblocks)
                .map(|b| {
                    (0..layout.linears()).map(|l| interior(b, l).then(|| layer(i, net, b, l, None, None))).collect()
                })
                .collect()
        });
        let [first, second] = layout.halves();
        let sides = [&first, &second];
        // A compact gradient slot holds the larger of the two kept layers.
        let (first_out, last_in) = (layout.widths(0).1, layout.widths(last_layer).0);
        let slot = (first.0.len() * first_out).max(last_in * first.1.len());
        let jobs: Vec<(usize, usize, Net)> = (0..layout.nlayers)
            .flat_map(|i| (0..2).flat_map(move |h| [Net::S, Net::T].map(|net| (i, h, net))))
            .collect();
        let mut packed = par_map(&jobs, |&(i, h, net)| -> NetLayers<Arc<Layer<E>>> {
            let (conditioning, updated) = sides[h];
            (0..layout.nresblocks)
                .map(|b| {
                    (0..layout.linears())
                        .map(|l| match &shared[2 * i + net as usize][b][l] {
                            Some(layer) => Arc::clone(layer),
                            None => {
                                let rows = (b == 0 && l == 0).then(|| conditioning.clone());
                                let cols = (b == last_block && l == last_layer).then(|| updated.clone());
                                let mut layer = layer(i, net, b, l, rows, cols);
                                let kind = usize::from(b > 0 || l > 0);
                                let at = ((2 * (2 * i + h) + net as usize) * 2 + kind) * slot;
                                Arc::get_mut(&mut layer).expect("a kept layer is not shared yet").compact = Some(at);
                                layer
                            }
                        })
                        .collect()
                })
                .collect()
        })
        .into_iter();
        let mut halves = Vec::with_capacity(2 * layout.nlayers);
        for i in 0..layout.nlayers {
            for (conditioning, updated) in [first.clone(), second.clone()] {
                let scale = |net: Net| {
                    let range = layout.scale(i, net);
                    (updated.iter().map(|&c| params[range.start + c]).collect(), range)
                };
                let mut conditioning_mask = vec![0.0; d];
                conditioning.iter().for_each(|&c| conditioning_mask[c] = 1.0);
                let (s, t) = (packed.next().expect("s packed"), packed.next().expect("t packed"));
                halves.push(Half {
                    nets: [s, t],
                    scales: [scale(Net::S), scale(Net::T)],
                    conditioning,
                    updated,
                    conditioning_mask,
                });
            }
        }
        Self { layout, halves, compact_len: 2 * layout.nlayers * 2 * 2 * slot }
    }

    /// Adds each layer's compact weight gradient, `compact:
    /// [compact_len]`, into its kept rows and columns of `grads`.
    fn scatter_compact(&self, compact: &[f32], grads: &mut [f32]) {
        let layers = self.halves.iter().flat_map(|half| half.nets.iter().flatten().flatten());
        for layer in layers {
            let Some(at) = layer.compact else { continue };
            let (k, n) = layer.kept();
            let grad_w = &mut grads[layer.params.v.clone()];
            for (i, row) in compact[at..at + k * n].chunks_exact(n).enumerate() {
                let at = layer.rows.as_ref().map_or(i, |rows| rows[i]) * layer.out;
                scatter_add(row, layer.cols.as_deref(), &mut grad_w[at..at + layer.out]);
            }
        }
    }
}

impl<E: Operand> Layer<E> {
    fn new(
        w: &[f32],
        params: &[f32],
        at: LinearParams,
        [k, n]: [usize; 2],
        rows: Option<Vec<usize>>,
        cols: Option<Vec<usize>>,
        with_backward: bool,
    ) -> Self {
        let kept_rows: Vec<usize> = rows.clone().unwrap_or_else(|| (0..k).collect());
        let kept_cols: Vec<usize> = cols.clone().unwrap_or_else(|| (0..n).collect());
        let (kr, kc) = (kept_rows.len(), kept_cols.len());
        let mut kept = Vec::with_capacity(kr * kc);
        for &r in &kept_rows {
            kept.extend(kept_cols.iter().map(|&c| w[r * n + c]));
        }
        let bias = &params[at.bias.clone()];
        let bias: Vec<f32> = kept_cols.iter().map(|&c| bias[c]).collect();
        let beta = &params[at.beta.clone()];
        let mut forward = PackedMatrix::empty();
        forward.repack(&kept, kc, Some(&bias), kr, kc);
        let mut backward = PackedMatrix::empty();
        if with_backward {
            let mut transposed = vec![0.0; kr * kc];
            for (r, row) in kept.chunks_exact(kc).enumerate() {
                for (c, &value) in row.iter().enumerate() {
                    transposed[c * kr + r] = value;
                }
            }
            backward.repack(&transposed, kr, None, kc, kr);
        }
        let beta = kept_rows.iter().map(|&r| beta[r]).collect();
        Self { beta, forward, backward, rows, cols, params: at, out: n, compact: None }
    }

    /// Kept inputs and outputs.
    fn kept(&self) -> (usize, usize) {
        (self.forward.k, self.forward.n)
    }
}

/// `items.map(f)`, on the thread pool when there is one (order kept).
fn par_map<I: Sync, T: Send>(items: &[I], f: impl Fn(&I) -> T + Sync + Send) -> Vec<T> {
    #[cfg(feature = "parallel")]
    {
        use rayon::prelude::*;
        items.par_iter().map(f).collect()
    }
    #[cfg(not(feature = "parallel"))]
    items.iter().map(f).collect()
}

// ---------------------------------------------------------------- Tape --

/// Where a tile's tape keeps each saved activation (offsets into the
/// tile's share of the tape, for the first half; half `q` is `q · half`
/// further on).
///
/// The hidden pre-activations are most of a tape (1,024 of 1,216 values a
/// row per half-coupling at the bench config). Where products are cheap
/// next to memory traffic (bf16 on AMX: [`TileKernels::recomputes`]) they
/// are not kept: the backward runs each residual block's layers again from
/// the block's input, on the same kernels and rows, so the values — and
/// the gradients — are the same bits.
struct TapeLayout {
    rows: usize,
    /// Values per half-coupling.
    half: usize,
    /// Per network: the input of each residual block after the first.
    block_inputs: [Vec<usize>; 2],
    /// Per network and block: where its hidden pre-activations `[nmlp, R,
    /// Hs]` start on the tape, when the tape keeps them.
    hidden: Option<[Vec<usize>; 2]>,
    /// Per network: its raw output over the updated half, `[R, U]`.
    raw: [usize; 2],
}

impl TapeLayout {
    fn new(layout: &StackLayout, rows: usize, keep_hidden: bool) -> Self {
        let (d, hs) = (layout.dim(), hidden_stride(layout));
        let u = d / 2;
        // The state before the half-coupling comes first.
        let mut at = rows * d;
        let mut net = || {
            let mut inputs = vec![usize::MAX];
            let mut hidden = Vec::new();
            for b in 0..layout.nresblocks {
                if b > 0 {
                    inputs.push(at);
                    at += rows * d;
                }
                hidden.push(at);
                if keep_hidden {
                    at += layout.nmlp * rows * hs;
                }
            }
            let raw = at;
            at += rows * u;
            (inputs, hidden, raw)
        };
        let (s, t) = (net(), net());
        Self { rows, half: at, block_inputs: [s.0, t.0], hidden: keep_hidden.then_some([s.1, t.1]), raw: [s.2, t.2] }
    }

    /// Values of one block's hidden pre-activations, `[nmlp, R, Hs]`.
    fn block_hidden_len(layout: &StackLayout, rows: usize) -> usize {
        layout.nmlp * rows * hidden_stride(layout)
    }

    fn tile_len(&self, halves: usize) -> usize {
        self.half * halves
    }
}

/// Values before a step's tiles on its tape: the first says where the
/// tiles start (1 to 16), so that they start 64-byte aligned for
/// [`copy_to_tape`]'s streaming stores wherever the allocator put the
/// tape, and are found again even if the tape was moved.
const TAPE_HEAD: usize = 16;

fn hidden_stride(layout: &StackLayout) -> usize {
    layout.nhidden.div_ceil(PANEL) * PANEL
}

// ------------------------------------------------------------ Workspace --

/// Scratch buffers of one task, reused across its tiles.
struct Workspace<E: Operand> {
    gathered: Vec<f32>,
    /// One block's hidden pre-activations when the tape does not keep
    /// them, `[nmlp, R, Hs]`.
    hidden: Vec<f32>,
    operand: Vec<E>,
    product: Vec<f32>,
    /// Backward: the gradient of the current block's output, `[R, D]`.
    grad_out: Vec<f32>,
    /// Backward: the gradient of the block's input, `[R, D]`.
    grad_in: Vec<f32>,
    /// Backward: gradient of the current layer's output, compact `[R, N]`.
    grad_product: Vec<f32>,
    /// Backward: gradient of the current layer's (Swish's) output.
    grad_operand: Vec<f32>,
    /// Backward: the Swish's output, `[R, K]`.
    activation: Vec<f32>,
    /// Backward: the group's compact weight gradients ([`Weights::compact_len`]).
    compact: Vec<f32>,
    /// Backward, products in bf16: the gradient operand, and both tiles of
    /// a weight-gradient product interleaved by row pairs.
    grad_product_operand: Vec<E>,
    pairs: (Vec<Bf16>, Vec<Bf16>),
    /// Backward: the gradients of the networks' raw outputs, `[R, U]`.
    grad_raw_s: Vec<f32>,
    grad_raw_t: Vec<f32>,
    /// The affine update's gathered values of one row.
    affine: Vec<f32>,
}

/// `buffer` as `len` zeros.
impl<E: Operand> Default for Workspace<E> {
    fn default() -> Self {
        Self {
            gathered: Vec::new(),
            hidden: Vec::new(),
            operand: Vec::new(),
            product: Vec::new(),
            grad_out: Vec::new(),
            grad_in: Vec::new(),
            grad_product: Vec::new(),
            grad_operand: Vec::new(),
            activation: Vec::new(),
            compact: Vec::new(),
            grad_raw_s: Vec::new(),
            grad_raw_t: Vec::new(),
            affine: Vec::new(),
            grad_product_operand: Vec::new(),
            pairs: (Vec::new(), Vec::new()),
        }
    }
}

fn resized(buffer: &mut Vec<f32>, len: usize) -> &mut [f32] {
    buffer.clear();
    buffer.resize(len, 0.0);
    buffer
}

/// `buffer` as `len` values, stale ones kept: for outputs written in full.
fn sized<T: Copy + Default>(buffer: &mut Vec<T>, len: usize) -> &mut [T] {
    buffer.resize(len, T::default());
    &mut buffer[..len]
}

// -------------------------------------------------------------- Forward --

/// Runs the stack forward on one tile: `x: [R, D]` in place, `ldj: [R]`
/// (summed into), saving what the backward needs into `tape`.
fn forward_tile<E: TileKernels>(
    isa: Isa,
    weights: &Weights<E>,
    tape_layout: &TapeLayout,
    x: &mut [f32],
    ldj: &mut [f32],
    tape: &mut [f32],
    ws: &mut Workspace<E>,
) {
    let (d, r) = (weights.layout.dim(), tape_layout.rows);
    for (q, half) in weights.halves.iter().enumerate() {
        let tape = &mut tape[q * tape_layout.half..(q + 1) * tape_layout.half];
        tape[..r * d].copy_from_slice(x);
        for net in [Net::S, Net::T] {
            TileNet::new(isa, weights, half, net, tape_layout).forward(x, tape, ws);
        }
        let u = half.updated.len();
        let (raw_s, raw_t) = (&tape[tape_layout.raw[0]..][..r * u], &tape[tape_layout.raw[1]..][..r * u]);
        let scratch = sized(&mut ws.affine, 2 * u);
        affine_forward(x, d, &half.updated, [raw_s, raw_t], [&half.scales[0].0, &half.scales[1].0], ldj, scratch);
    }
}

/// One s or t network of one half-coupling, as a tile runs it.
struct TileNet<'a, E: Operand> {
    isa: Isa,
    layout: &'a StackLayout,
    half: &'a Half<E>,
    /// `Net::S` or `Net::T` as an index.
    net: usize,
    tape: &'a TapeLayout,
}

impl<E: TileKernels> TileNet<'_, E> {
    fn new<'a>(isa: Isa, weights: &'a Weights<E>, half: &'a Half<E>, net: Net, tape: &'a TapeLayout) -> TileNet<'a, E> {
        TileNet { isa, layout: &weights.layout, half, net: net as usize, tape }
    }

    /// Block `b`'s input on the tape, `[R, D]`; `None` for block 0 (it reads
    /// the conditioning half of the state).
    fn block_input<'t>(&self, tape: &'t [f32], b: usize) -> Option<&'t [f32]> {
        let (d, r) = (self.layout.dim(), self.tape.rows);
        (b > 0).then(|| &tape[self.tape.block_inputs[self.net][b]..][..r * d])
    }

    /// A block's linear layer `l`'s input before its Swish, and that input's
    /// row stride: a pre-activation from the block's `hidden: [nmlp, R, Hs]`,
    /// the block's input, or without one (block 0) the conditioning half of
    /// the state `x`, gathered (its `k` columns) into `gathered`.
    fn input<'t>(
        &self,
        hidden: &'t [f32],
        block_input: Option<&'t [f32]>,
        x: &[f32],
        [l, k]: [usize; 2],
        gathered: &'t mut Vec<f32>,
    ) -> (&'t [f32], usize) {
        let (d, r, hs) = (self.layout.dim(), self.tape.rows, hidden_stride(self.layout));
        if l > 0 {
            (&hidden[(l - 1) * r * hs..][..r * hs], hs)
        } else if let Some(input) = block_input {
            (input, d)
        } else {
            let gathered = sized(gathered, r * k);
            gather_columns(x, d, &self.half.conditioning, gathered);
            (gathered, k)
        }
    }

    /// Block `b`'s first `layers` linear layers on the tile, each a Swish
    /// then a product: layer 0 reads the block's input (`None` for block
    /// 0: the conditioning half of `x`), layer `l ≥ 1` the pre-activation
    /// `hidden[l − 1]`; the layers before the last write theirs to `hidden:
    /// [nmlp, R, Hs]`, the last (when `layers` takes it) into `ws.product`.
    fn block_forward(
        &self,
        b: usize,
        layers: usize,
        x: &[f32],
        block_input: Option<&[f32]>,
        hidden: &mut [f32],
        ws: &mut Workspace<E>,
    ) {
        let (isa, layout) = (self.isa, self.layout);
        let (r, hs) = (self.tape.rows, hidden_stride(layout));
        for (l, layer) in self.half.nets[self.net][b].iter().enumerate().take(layers) {
            let (k, _) = layer.kept();
            let operand = sized(&mut ws.operand, r * layer.forward.k_stride);
            let (input, stride) = self.input(hidden, block_input, x, [l, k], &mut ws.gathered);
            E::swish(isa, input, stride, &layer.beta, operand, layer.forward.k_stride);
            if l < layout.nmlp {
                E::matmul(isa, operand, &layer.forward, r, &mut hidden[l * r * hs..][..r * hs]);
            } else {
                let out = sized(&mut ws.product, r * layer.forward.n_stride);
                E::matmul(isa, operand, &layer.forward, r, out);
            }
        }
    }

    /// The network on the tile's conditioning half (of `x: [R, D]`), its
    /// activations into the tape (the hidden ones into `ws.hidden` when the
    /// tape does not keep them) and its raw output (before the final
    /// scale) at `tape[raw]`.
    fn forward(&self, x: &[f32], tape: &mut [f32], ws: &mut Workspace<E>) {
        let (layout, half) = (self.layout, self.half);
        let (d, r) = (layout.dim(), self.tape.rows);
        let last_block = layout.nresblocks - 1;
        let hidden_len = TapeLayout::block_hidden_len(layout, r);
        for b in 0..layout.nresblocks {
            // The hidden values are made in cache, where the next layer reads
            // them, and copied to the tape when it keeps them.
            let mut scratch = std::mem::take(&mut ws.hidden);
            let block_input = self.block_input(tape, b);
            self.block_forward(b, layout.nmlp + 1, x, block_input, sized(&mut scratch, hidden_len), ws);
            if let Some(hidden) = &self.tape.hidden {
                copy_to_tape(self.isa, &scratch[..hidden_len], &mut tape[hidden[self.net][b]..][..hidden_len]);
            }
            ws.hidden = scratch;
            let n_stride = half.nets[self.net][b][layout.nmlp].forward.n_stride;
            // The residual sum; block 0's input is the masked state.
            if b == last_block {
                let (before, after) = tape.split_at_mut(self.tape.raw[self.net]);
                let out = &mut after[..r * half.updated.len()];
                // Block 0's input is zero on the updated half.
                residual_columns(self.block_input(before, b), d, &half.updated, &ws.product, n_stride, out);
            } else {
                let (before, after) = tape.split_at_mut(self.tape.block_inputs[self.net][b + 1]);
                let out = &mut after[..r * d];
                match self.block_input(before, b) {
                    Some(input) => residual_full(input, None, d, &ws.product, n_stride, out),
                    None => residual_full(x, Some(&half.conditioning_mask), d, &ws.product, n_stride, out),
                }
            }
        }
    }
}

/// `tape ← values`, with streaming stores where the CPU has them (AVX,
/// which every kernel family but the portable one implies) and `tape` is
/// 64-byte aligned: the tape is read again only by the backward, long
/// after it has left the cache, and a store through the cache first reads
/// each line from memory (the hidden values' stores were ~12 % of a
/// forward; made in a scratch and streamed, the forward of a level-0 stack
/// is ~3 % faster than with them stored in place).
fn copy_to_tape(isa: Isa, values: &[f32], tape: &mut [f32]) {
    assert_eq!(values.len(), tape.len(), "copy_to_tape: lengths");
    #[cfg(target_arch = "x86_64")]
    if isa != Isa::Portable && tape.as_ptr().align_offset(64) == 0 {
        // SAFETY: every `Isa` but the portable one was detected with AVX;
        // `tape` is 64-byte aligned and as long as `values` (asserted above).
        unsafe { stream_to_tape(values, tape) };
        return;
    }
    let _ = isa;
    tape.copy_from_slice(values);
}

/// [`copy_to_tape`] with AVX streaming stores.
///
/// # Safety
/// AVX; `tape` 32-byte aligned and as long as `values`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
unsafe fn stream_to_tape(values: &[f32], tape: &mut [f32]) {
    use std::arch::x86_64::{_mm_sfence, _mm256_loadu_ps, _mm256_stream_ps};
    let full = values.len() / 8 * 8;
    for i in (0..full).step_by(8) {
        // SAFETY: `i + 8 ≤ full ≤` both lengths; `tape + i` is 32-byte
        // aligned as `tape` is and `i` is a multiple of 8 values.
        unsafe { _mm256_stream_ps(tape.as_mut_ptr().add(i), _mm256_loadu_ps(values.as_ptr().add(i))) };
    }
    tape[full..].copy_from_slice(&values[full..]);
    // Streaming stores are weakly ordered: fenced before the tile's task
    // ends, so the backward (maybe on another thread) reads them.
    _mm_sfence();
}

fn gather_columns(x: &[f32], d: usize, columns: &[usize], out: &mut [f32]) {
    let k = columns.len();
    for (x, out) in x.chunks_exact(d).zip(out.chunks_exact_mut(k)) {
        for (&c, out) in columns.iter().zip(out) {
            *out = x[c];
        }
    }
}

/// `out = (input · mask + h) / √2` over `[R, D]` (the bias is in `h`).
#[multiversion(targets("x86_64+avx512f+avx512vl+avx512dq+fma", "x86_64+avx2+fma"))]
fn residual_full(input: &[f32], mask: Option<&[f32]>, d: usize, h: &[f32], h_stride: usize, out: &mut [f32]) {
    for ((input, h), out) in input.chunks_exact(d).zip(h.chunks_exact(h_stride)).zip(out.chunks_exact_mut(d)) {
        match mask {
            Some(mask) => {
                for (((o, &x), &m), &h) in out.iter_mut().zip(input).zip(mask).zip(&h[..d]) {
                    *o = (x * m + h) * FRAC_1_SQRT_2;
                }
            }
            None => {
                for ((o, &x), &h) in out.iter_mut().zip(input).zip(&h[..d]) {
                    *o = (x + h) * FRAC_1_SQRT_2;
                }
            }
        }
    }
}

/// The last block's sum over the updated half: `out[r, j] = (input[r,
/// updated[j]] + h[r, j]) / √2`, with a zero input when `None`.
fn residual_columns(input: Option<&[f32]>, d: usize, updated: &[usize], h: &[f32], h_stride: usize, out: &mut [f32]) {
    let u = updated.len();
    for (row, (h, out)) in h.chunks_exact(h_stride).zip(out.chunks_exact_mut(u)).enumerate() {
        for (j, out) in out.iter_mut().enumerate() {
            let x = input.map_or(0.0, |input| input[row * d + updated[j]]);
            *out = (x + h[j]) * FRAC_1_SQRT_2;
        }
    }
}

/// `x[r, c] ← x[r, c] e^{s} + t` on the updated columns `c`, with `s =
/// tanh(raw_s · s_scale)`, `t = raw_t · t_scale`; `ldj[r] += Σ s`.
///
/// Per row the updated values are gathered into `scratch: [2U]` so that
/// the `tanh` and `exp` run over contiguous lanes (scattered in place, and
/// with `Σ s` summed in the same loop, they ran one value at a time: 2–3 %
/// of a training step); `Σ s` is then added in column order as before, so
/// the values are the same bits.
#[multiversion(targets("x86_64+avx512f+avx512vl+avx512dq+fma", "x86_64+avx2+fma"))]
fn affine_forward(
    x: &mut [f32],
    d: usize,
    updated: &[usize],
    [raw_s, raw_t]: [&[f32]; 2],
    [s_scale, t_scale]: [&[f32]; 2],
    ldj: &mut [f32],
    scratch: &mut [f32],
) {
    const FMA: bool = target_cfg_f!(target_feature = "fma");
    let u = updated.len();
    let (s, y) = scratch[..2 * u].split_at_mut(u);
    for (((x, raw_s), raw_t), ldj) in
        x.chunks_exact_mut(d).zip(raw_s.chunks_exact(u)).zip(raw_t.chunks_exact(u)).zip(ldj.iter_mut())
    {
        y.iter_mut().zip(updated).for_each(|(y, &c)| *y = x[c]);
        let lanes = s.iter_mut().zip(y.iter_mut()).zip(raw_s.iter().zip(raw_t)).zip(s_scale.iter().zip(t_scale));
        for (((s, y), (&raw_s, &raw_t)), (&s_scale, &t_scale)) in lanes {
            *s = tanh::<FMA>(raw_s * s_scale);
            *y = *y * exp::<FMA>(*s) + raw_t * t_scale;
        }
        let mut sum = 0.0;
        s.iter().for_each(|&s| sum += s);
        *ldj += sum;
        y.iter().zip(updated).for_each(|(&y, &c)| x[c] = y);
    }
}

// ------------------------------------------------------------- Backward --

/// The backward of [`forward_tile`]: `grad_x: [R, D]` holds the gradient of
/// the stack's output and becomes that of its input; `grad_ldj: [R]`;
/// parameter gradients are summed into `grads` (with each weight's
/// gradient in its `v` slot: the weight norm's backward comes later).
#[allow(clippy::too_many_arguments)]
fn backward_tile<E: TileKernels>(
    isa: Isa,
    weights: &Weights<E>,
    tape_layout: &TapeLayout,
    grad_x: &mut [f32],
    grad_ldj: &[f32],
    tape: &[f32],
    grads: &mut [f32],
    ws: &mut Workspace<E>,
) {
    let (d, r) = (weights.layout.dim(), tape_layout.rows);
    for (q, half) in weights.halves.iter().enumerate().rev() {
        let tape = &tape[q * tape_layout.half..(q + 1) * tape_layout.half];
        let x = &tape[..r * d];
        let u = half.updated.len();
        let (raw_s, raw_t) = (&tape[tape_layout.raw[0]..][..r * u], &tape[tape_layout.raw[1]..][..r * u]);
        let mut grad_raw_s = std::mem::take(&mut ws.grad_raw_s);
        let mut grad_raw_t = std::mem::take(&mut ws.grad_raw_t);
        sized(&mut grad_raw_s, r * u);
        sized(&mut grad_raw_t, r * u);
        let ((s_scale, s_range), (t_scale, t_range)) = (&half.scales[0], &half.scales[1]);
        let mut scale_grads = vec![0.0f32; 2 * u];
        let (grad_s_scale, grad_t_scale) = scale_grads.split_at_mut(u);
        affine_backward(
            grad_x,
            grad_ldj,
            x,
            d,
            &half.updated,
            [raw_s, raw_t],
            [s_scale, t_scale],
            [&mut grad_raw_s, &mut grad_raw_t],
            [grad_s_scale, grad_t_scale],
            sized(&mut ws.affine, 2 * u),
        );
        for (j, &c) in half.updated.iter().enumerate() {
            grads[s_range.start + c] += scale_grads[j];
            grads[t_range.start + c] += scale_grads[u + j];
        }
        TileNet::new(isa, weights, half, Net::S, tape_layout).backward(tape, &grad_raw_s, grad_x, grads, ws);
        TileNet::new(isa, weights, half, Net::T, tape_layout).backward(tape, &grad_raw_t, grad_x, grads, ws);
        ws.grad_raw_s = grad_raw_s;
        ws.grad_raw_t = grad_raw_t;
    }
}

/// The affine update's backward: on the updated columns `grad_x ← grad_x ·
/// e^s`; the raw outputs' gradients and the scales' (summed over rows).
/// As in [`affine_forward`], each row's updated values are gathered into
/// `scratch: [2U]` first, so the arithmetic runs over contiguous lanes.
#[allow(clippy::too_many_arguments)]
#[multiversion(targets("x86_64+avx512f+avx512vl+avx512dq+fma", "x86_64+avx2+fma"))]
fn affine_backward(
    grad_x: &mut [f32],
    grad_ldj: &[f32],
    x: &[f32],
    d: usize,
    updated: &[usize],
    [raw_s, raw_t]: [&[f32]; 2],
    [s_scale, t_scale]: [&[f32]; 2],
    [grad_raw_s, grad_raw_t]: [&mut [f32]; 2],
    [grad_s_scale, grad_t_scale]: [&mut [f32]; 2],
    scratch: &mut [f32],
) {
    const FMA: bool = target_cfg_f!(target_feature = "fma");
    let u = updated.len();
    let (gy, x_updated) = scratch[..2 * u].split_at_mut(u);
    let rows = grad_x
        .chunks_exact_mut(d)
        .zip(x.chunks_exact(d))
        .zip(raw_s.chunks_exact(u).zip(raw_t.chunks_exact(u)))
        .zip(grad_raw_s.chunks_exact_mut(u).zip(grad_raw_t.chunks_exact_mut(u)))
        .zip(grad_ldj);
    for ((((grad_x, x), (raw_s, raw_t)), (grad_raw_s, grad_raw_t)), &grad_ldj) in rows {
        for ((gy, x_updated), &c) in gy.iter_mut().zip(x_updated.iter_mut()).zip(updated) {
            *gy = grad_x[c];
            *x_updated = x[c];
        }
        let lanes = gy
            .iter_mut()
            .zip(x_updated.iter())
            .zip(raw_s.iter().zip(raw_t))
            .zip(s_scale.iter().zip(t_scale))
            .zip(grad_raw_s.iter_mut().zip(grad_raw_t.iter_mut()))
            .zip(grad_s_scale.iter_mut().zip(grad_t_scale.iter_mut()));
        for (((((gy, &x), (&raw_s, &raw_t)), (&s_scale, &t_scale)), (grad_raw_s, grad_raw_t)), (grad_ss, grad_ts)) in
            lanes
        {
            let s = tanh::<FMA>(raw_s * s_scale);
            let e = exp::<FMA>(s);
            // ∂/∂s of `x e^s + t`, plus the log-determinant's `Σ s`.
            let grad_s = *gy * x * e + grad_ldj;
            let grad_pre = grad_s * (1.0 - s * s);
            *grad_raw_s = grad_pre * s_scale;
            *grad_ss += grad_pre * raw_s;
            *grad_raw_t = *gy * t_scale;
            *grad_ts += *gy * raw_t;
            *gy *= e;
        }
        gy.iter().zip(updated).for_each(|(&gy, &c)| grad_x[c] = gy);
    }
}

/// One network's backward on the tile: `grad_raw: [R, U]` is the gradient
/// of its raw output; adds the gradient of its input (the conditioning
/// half of the state) into `grad_x` and its parameters' into `grads`.
impl<E: TileKernels> TileNet<'_, E> {
    fn backward(&self, tape: &[f32], grad_raw: &[f32], grad_x: &mut [f32], grads: &mut [f32], ws: &mut Workspace<E>) {
        let (isa, layout, half) = (self.isa, self.layout, self.half);
        let (d, r) = (layout.dim(), self.tape.rows);
        let last_block = layout.nresblocks - 1;
        let x = &tape[..r * d];
        let u = half.updated.len();
        // The gradient of the last block's output: only its updated half.
        let mut grad_out = std::mem::take(&mut ws.grad_out);
        resized(&mut grad_out, r * d);
        for (grad_out, grad_raw) in grad_out.chunks_exact_mut(d).zip(grad_raw.chunks_exact(u)) {
            for (&c, &g) in half.updated.iter().zip(grad_raw) {
                grad_out[c] = g;
            }
        }
        let mut grad_in = std::mem::take(&mut ws.grad_in);
        let hidden_len = TapeLayout::block_hidden_len(layout, r);
        let mut scratch = std::mem::take(&mut ws.hidden);
        for b in (0..=last_block).rev() {
            let layers = &half.nets[self.net][b];
            let block_input = self.block_input(tape, b);
            // The block's pre-activations: kept on the tape, or run again.
            let hidden: &[f32] = match &self.tape.hidden {
                Some(hidden) => &tape[hidden[self.net][b]..][..hidden_len],
                None => {
                    self.block_forward(b, layout.nmlp, x, block_input, sized(&mut scratch, hidden_len), ws);
                    &scratch[..hidden_len]
                }
            };
            // (input + h + bias) / √2: both terms get grad / √2.
            grad_out.iter_mut().for_each(|g| *g *= FRAC_1_SQRT_2);
            let last = &layers[layout.nmlp];
            let (_, n) = last.kept();
            let grad_product = sized(&mut ws.grad_product, r * n);
            match &last.cols {
                Some(cols) => gather_columns(&grad_out, d, cols, grad_product),
                None => grad_product.copy_from_slice(&grad_out),
            }
            // The block's input gets the skip connection's share now.
            sized(&mut grad_in, r * d).copy_from_slice(&grad_out);
            for l in (0..layers.len()).rev() {
                let layer = &layers[l];
                let (k, n) = layer.kept();
                add_column_sums(&ws.grad_product, n, layer.cols.as_deref(), &mut grads[layer.params.bias.clone()]);
                // grad_operand = grad_product · Wᵀ: [R, K] at the stride `k_out`.
                let k_out = layer.backward.n_stride;
                // The layer's input u (before the Swish), asked for during the
                // product so that its arithmetic hides the trip to memory.
                let (input, stride) = self.input(hidden, block_input, x, [l, k], &mut ws.gathered);
                let operand =
                    E::operand_rows(&ws.grad_product, n, layer.backward.k_stride, &mut ws.grad_product_operand);
                let ahead = Prefetch::of(input);
                E::matmul_ahead(isa, operand, &layer.backward, r, sized(&mut ws.grad_operand, r * k_out), ahead);
                // The Swish's output (for the weight gradient), and its backward:
                // `grad_operand` becomes the gradient of u.
                let mut grad_beta = vec![0.0f32; k];
                let tile = SwishBackward {
                    input,
                    input_stride: stride,
                    beta: &layer.beta,
                    grad: &mut ws.grad_operand,
                    grad_stride: k_out,
                    activation: sized(&mut ws.activation, r * k),
                    grad_beta: &mut grad_beta,
                };
                E::swish_backward(isa, tile);
                scatter_add(&grad_beta, layer.rows.as_deref(), &mut grads[layer.params.beta.clone()]);
                // grad W += activationᵀ · grad_product.
                add_weight_grad(isa, ws, [k, n, r], layer, grads);
                if l > 0 && k == k_out {
                    // The previous layer's output gradient (its bias is in u),
                    // already compact: its buffer changes hands, no copy.
                    std::mem::swap(&mut ws.grad_product, &mut ws.grad_operand);
                } else if l > 0 {
                    let next = sized(&mut ws.grad_product, r * k);
                    for (dst, src) in next.chunks_exact_mut(k).zip(ws.grad_operand.chunks_exact(k_out)) {
                        dst.copy_from_slice(&src[..k]);
                    }
                } else if b > 0 {
                    for (dst, src) in grad_in.chunks_exact_mut(d).zip(ws.grad_operand.chunks_exact(k_out)) {
                        dst.iter_mut().zip(&src[..d]).for_each(|(g, s)| *g += s);
                    }
                } else {
                    // Block 0 reads the state through the conditioning mask.
                    for ((gx, gi), src) in
                        grad_x.chunks_exact_mut(d).zip(grad_in.chunks_exact(d)).zip(ws.grad_operand.chunks_exact(k_out))
                    {
                        for (j, &c) in half.conditioning.iter().enumerate() {
                            gx[c] += gi[c] + src[j];
                        }
                    }
                }
            }
            std::mem::swap(&mut grad_out, &mut grad_in);
        }
        ws.hidden = scratch;
        ws.grad_out = grad_out;
        ws.grad_in = grad_in;
    }
}

/// `sums[cols[j]] += Σ_r grad[r, j]` over a compact `[R, N]` (all columns
/// when `cols` is `None`).
#[multiversion(targets("x86_64+avx512f+avx512vl+avx512dq+fma", "x86_64+avx2+fma"))]
fn add_column_sums(grad: &[f32], n: usize, cols: Option<&[usize]>, sums: &mut [f32]) {
    let mut acc = vec![0.0f32; n];
    for row in grad.chunks_exact(n) {
        acc.iter_mut().zip(row).for_each(|(a, g)| *a += g);
    }
    scatter_add(&acc, cols, sums);
}

/// `out[index[j]] += values[j]` (`index[j] = j` when `None`).
fn scatter_add(values: &[f32], index: Option<&[usize]>, out: &mut [f32]) {
    match index {
        Some(index) => index.iter().zip(values).for_each(|(&i, v)| out[i] += v),
        None => out.iter_mut().zip(values).for_each(|(o, v)| *o += v),
    }
}

/// The Swish's backward ([`SwishBackward`]), exact (f32 `exp` and division).
#[multiversion(targets("x86_64+avx512f+avx512vl+avx512dq+fma", "x86_64+avx2+fma"))]
pub(crate) fn swish_backward_rows<'a>(tile: SwishBackward<'a>) {
    let SwishBackward { input, input_stride: stride, beta, grad, grad_stride, activation, grad_beta } = tile;
    const FMA: bool = target_cfg_f!(target_feature = "fma");
    let k = beta.len();
    let rows = input.chunks_exact(stride).zip(grad.chunks_exact_mut(grad_stride)).zip(activation.chunks_exact_mut(k));
    for ((u, g), a) in rows {
        // Zipped slices of one length: no bounds checks, so it vectorises.
        let lanes = u[..k].iter().zip(beta).zip(&mut g[..k]).zip(a.iter_mut()).zip(grad_beta.iter_mut());
        for ((((&u, &b), g), a), grad_beta) in lanes {
            let bu = b * u;
            let s = sigmoid::<FMA>(bu);
            let ds = s * (1.0 - s);
            *a = u * s;
            *grad_beta += *g * u * u * ds;
            *g *= s + bu * ds;
        }
    }
}

/// `grad_w += activationᵀ · grad_product` over the tile's rows (the
/// product's inner dimension), for the kept inputs and outputs `[k, n]` of
/// `layer` and `r` rows: straight into its weight's gradient in `grads`,
/// or for a layer that keeps some rows or columns into its compact slot in
/// `ws.compact` (scattered once per group, [`Weights::scatter_compact`]).
fn add_weight_grad<E: TileKernels>(
    isa: Isa,
    ws: &mut Workspace<E>,
    [k, n, r]: [usize; 3],
    layer: &Layer<E>,
    grads: &mut [f32],
) {
    let Workspace { activation, grad_product, pairs, compact, .. } = ws;
    let (c, c_stride) = match layer.compact {
        Some(at) => (&mut compact[at..at + k * n], n),
        None => (&mut grads[layer.params.v.clone()], layer.out),
    };
    let (a, b) = ((&activation[..], k), (&grad_product[..], n));
    if E::K_STEP == 1 {
        outer_accumulate(isa, a, b, [r, k, n], (c, c_stride));
    } else {
        // bf16 operands pair up along the inner dimension (the rows).
        outer_accumulate_bf16(isa, a, b, r, (c, c_stride), pairs);
    }
}

// -------------------------------------------------------------- Drivers --

/// Tapes whose backward has run, kept for the next forward: a step's tapes
/// are hundreds of MB, and fresh pages from the OS cost a fault each (a
/// sixth of a step when every tape was new). At most [`SPARE_TAPES`].
static SPARES: std::sync::Mutex<Vec<Vec<f32>>> = std::sync::Mutex::new(Vec::new());
const SPARE_TAPES: usize = 32;

/// A tape of `len` values: the smallest spare that fits, or a new one. Its
/// contents are stale; the forward writes every value it later reads.
fn spare_tape(len: usize) -> Vec<f32> {
    let mut spares = SPARES.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let best = spares.iter().enumerate().filter(|(_, t)| t.capacity() >= len).min_by_key(|(_, t)| t.capacity());
    match best.map(|(i, _)| i) {
        Some(i) => {
            let mut tape = spares.swap_remove(i);
            // Shrinks or grows it (within its capacity) to `len`.
            tape.resize(len, 0.0);
            tape
        }
        None => vec![0.0; len],
    }
}

/// Hands a tape whose backward has run back for reuse.
pub fn recycle_tape(tape: Vec<f32>) {
    let mut spares = SPARES.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if spares.len() < SPARE_TAPES {
        spares.push(tape);
    }
}

/// The stack's forward on `x: [M, D]` with `params: [P]`: the output
/// `[M, D + 1]` (each row's new state, then its log-determinant) and, when
/// `save` is set, the tape its [`backward`] needs.
pub fn forward(
    layout: &StackLayout,
    params: &[f32],
    x: &[f32],
    save: bool,
    precision: ProductPrecision,
) -> (Vec<f32>, Vec<f32>) {
    match precision.on_this_cpu() {
        ProductPrecision::F32 => forward_with::<f32>(layout, params, x, save),
        ProductPrecision::Bf16 => forward_with::<Bf16>(layout, params, x, save),
    }
}

fn forward_with<E: TileKernels>(layout: &StackLayout, params: &[f32], x: &[f32], save: bool) -> (Vec<f32>, Vec<f32>) {
    forward_packed(&Weights::<E>::new(*layout, params, false), x, save, keeps_hidden::<E>())
}

/// Whether training tapes keep the hidden pre-activations on this CPU
/// ([`TileKernels::recomputes`]); [`forward`] and [`backward`] agree on it.
fn keeps_hidden<E: TileKernels>() -> bool {
    !E::recomputes(Isa::detect())
}

/// A stack's forward with its weights normalised and packed once, for
/// passes that do not train: a local update runs a few block rows through
/// every sub-layer, and packing per call would cost more than the rows.
pub struct PackedForward {
    weights: Weights<f32>,
}

impl PackedForward {
    /// Packs the stack `params: [P]` laid out as `layout` (f32 products).
    pub fn new(layout: StackLayout, params: &[f32]) -> Self {
        Self { weights: Weights::new(layout, params, false) }
    }

    /// Values per block row, `D`.
    pub fn dim(&self) -> usize {
        self.weights.layout.dim()
    }

    /// The stack forward on `x: [M, D]` in place, each row's log-determinant
    /// into `ldj: [M]`. Up to one tile's rows run on the calling thread
    /// (waking the pool would cost more than they do); the numbers are the
    /// same either way, as each row's are those of [`forward`].
    pub fn run(&self, x: &mut [f32], ldj: &mut [f32]) {
        let d = self.dim();
        assert_eq!(x.len(), ldj.len() * d, "blocks are not [M, {d}] with M = {}", ldj.len());
        let m = ldj.len();
        if m == 0 {
            return;
        }
        // Up to a full tile runs as one tile of exactly `m` rows (the kernels
        // take any row count with the same per-row bits).
        if m > TILE_ROWS {
            let (out, _) = forward_packed(&self.weights, x, false, false);
            for ((row, ldj), out) in x.chunks_exact_mut(d).zip(ldj.iter_mut()).zip(out.chunks_exact(d + 1)) {
                row.copy_from_slice(&out[..d]);
                *ldj = out[d];
            }
            return;
        }
        // A few rows are bound by latency and by streaming the weights, not
        // by arithmetic: two threads with half the rows each take ~half the
        // time of one with all of them.
        #[cfg(feature = "parallel")]
        if m >= 2 && rayon::current_num_threads() > 1 {
            let (x_a, x_b) = x.split_at_mut(m.div_ceil(2) * d);
            let (ldj_a, ldj_b) = ldj.split_at_mut(m.div_ceil(2));
            rayon::join(|| self.run_tile(x_a, ldj_a), || self.run_tile(x_b, ldj_b));
            return;
        }
        self.run_tile(x, ldj);
    }

    /// [`Self::run`] on up to [`TILE_ROWS`] rows as one tile, on this thread.
    fn run_tile(&self, x: &mut [f32], ldj: &mut [f32]) {
        // Nothing runs backward: the hidden values need no place on the tape.
        let tape_layout = TapeLayout::new(&self.weights.layout, ldj.len(), false);
        SCRATCH.with_borrow_mut(|(ws, tape)| {
            let tape = sized(tape, tape_layout.tile_len(self.weights.halves.len()));
            ldj.fill(0.0);
            forward_tile(Isa::detect(), &self.weights, &tape_layout, x, ldj, tape, ws);
        });
    }
}

thread_local! {
    /// [`PackedForward::run`]'s workspace and tape, kept between calls (a
    /// local update makes one call per sub-layer, each a few rows).
    static SCRATCH: std::cell::RefCell<(Workspace<f32>, Vec<f32>)> = Default::default();
}

/// [`forward`] with the weights packed; a saved tape keeps the hidden
/// pre-activations if `keep_hidden` (see [`TapeLayout`]).
fn forward_packed<E: TileKernels>(
    weights: &Weights<E>,
    x: &[f32],
    save: bool,
    keep_hidden: bool,
) -> (Vec<f32>, Vec<f32>) {
    let layout = &weights.layout;
    let d = layout.dim();
    assert_eq!(x.len() % d, 0, "blocks are not [M, {d}]");
    let m = x.len() / d;
    let tile_rows = tile_rows(m, most_tile_rows(!save || keep_hidden));
    let isa = Isa::detect();
    let tape_layout = TapeLayout::new(layout, tile_rows, save && keep_hidden);
    let tile_tape = tape_layout.tile_len(weights.halves.len());
    let tiles = m.div_ceil(tile_rows);
    let mut out = vec![0.0f32; m * (d + 1)];
    let mut tape = if save { spare_tape(TAPE_HEAD + tiles * tile_tape) } else { Vec::new() };
    let tiles_tape: &mut [f32] = if save {
        let at = 1 + tape[1..].as_ptr().align_offset(64).min(TAPE_HEAD - 1);
        tape[0] = at as f32;
        &mut tape[at..at + tiles * tile_tape]
    } else {
        &mut []
    };
    let run = |ws: &mut (Workspace<E>, Vec<f32>), (tile, (out, tape)): (usize, (&mut [f32], Option<&mut [f32]>))| {
        let (ws, scratch_tape) = ws;
        let first = tile * tile_rows;
        let rows = (m - first).min(tile_rows);
        let mut state = vec![0.0f32; tile_rows * d];
        state[..rows * d].copy_from_slice(&x[first * d..(first + rows) * d]);
        let mut ldj = vec![0.0f32; tile_rows];
        let tape = match tape {
            Some(tape) => tape,
            None => sized(scratch_tape, tile_tape),
        };
        forward_tile(isa, weights, &tape_layout, &mut state, &mut ldj, tape, ws);
        for (row, out) in out.chunks_exact_mut(d + 1).enumerate() {
            out[..d].copy_from_slice(&state[row * d..(row + 1) * d]);
            out[d] = ldj[row];
        }
    };
    #[cfg(feature = "parallel")]
    {
        use rayon::prelude::*;
        let out_chunks = out.par_chunks_mut(tile_rows * (d + 1));
        if save {
            out_chunks
                .zip(tiles_tape.par_chunks_mut(tile_tape))
                .map(|(o, t)| (o, Some(t)))
                .enumerate()
                .for_each_init(Default::default, run);
        } else {
            out_chunks.map(|o| (o, None)).enumerate().for_each_init(Default::default, run);
        }
    }
    #[cfg(not(feature = "parallel"))]
    {
        let mut ws = Default::default();
        let out_chunks = out.chunks_mut(tile_rows * (d + 1));
        if save {
            out_chunks
                .zip(tiles_tape.chunks_mut(tile_tape))
                .map(|(o, t)| (o, Some(t)))
                .enumerate()
                .for_each(|item| run(&mut ws, item));
        } else {
            out_chunks.map(|o| (o, None)).enumerate().for_each(|item| run(&mut ws, item));
        }
    }
    (out, tape)
}

/// The backward of [`forward`] given the gradient of its output, `grad:
/// [M, D + 1]`: the gradients of `x` (`[M, D]`) and of `params` (`[P]`).
pub fn backward(
    layout: &StackLayout,
    params: &[f32],
    tape: &[f32],
    grad: &[f32],
    precision: ProductPrecision,
) -> (Vec<f32>, Vec<f32>) {
    match precision.on_this_cpu() {
        ProductPrecision::F32 => backward_with::<f32>(layout, params, tape, grad, keeps_hidden::<f32>()),
        ProductPrecision::Bf16 => backward_with::<Bf16>(layout, params, tape, grad, keeps_hidden::<Bf16>()),
    }
}

/// [`backward`] from a tape that keeps the hidden pre-activations if
/// `keep_hidden` (as the forward that made it).
fn backward_with<E: TileKernels>(
    layout: &StackLayout,
    params: &[f32],
    tape: &[f32],
    grad: &[f32],
    keep_hidden: bool,
) -> (Vec<f32>, Vec<f32>) {
    let d = layout.dim();
    assert_eq!(grad.len() % (d + 1), 0, "output gradient is not [M, {}]", d + 1);
    let m = grad.len() / (d + 1);
    let tile_rows = tile_rows(m, most_tile_rows(keep_hidden));
    let weights = Weights::<E>::new(*layout, params, true);
    let isa = Isa::detect();
    let tape_layout = TapeLayout::new(layout, tile_rows, keep_hidden);
    let tile_tape = tape_layout.tile_len(weights.halves.len());
    let tiles = m.div_ceil(tile_rows);
    assert_eq!(tape.len(), TAPE_HEAD + tiles * tile_tape, "the tape is not of this forward");
    let at = tape[0] as usize;
    assert!((1..=TAPE_HEAD).contains(&at), "the tape is not of this forward");
    let tape = &tape[at..at + tiles * tile_tape];
    // Groups of consecutive tiles, a function of `m` and the tape's kind only.
    let tiles_per_group = tiles.div_ceil(MAX_GROUPS).max(1);
    let group_rows = tiles_per_group * tile_rows;
    let p = layout.num_params();
    let mut grad_x = vec![0.0f32; m * d];
    let run = |ws: &mut Workspace<E>, (group, grad_x): (usize, &mut [f32])| -> Vec<f32> {
        let mut grads = vec![0.0f32; p];
        let mut state = vec![0.0f32; tile_rows * d];
        let mut grad_ldj = vec![0.0f32; tile_rows];
        resized(&mut ws.compact, weights.compact_len);
        for (t, grad_x) in grad_x.chunks_mut(tile_rows * d).enumerate() {
            let tile = group * tiles_per_group + t;
            let first = tile * tile_rows;
            let rows = grad_x.len() / d;
            state.fill(0.0);
            grad_ldj.fill(0.0);
            for (row, g) in grad[first * (d + 1)..(first + rows) * (d + 1)].chunks_exact(d + 1).enumerate() {
                state[row * d..(row + 1) * d].copy_from_slice(&g[..d]);
                grad_ldj[row] = g[d];
            }
            let tape = &tape[tile * tile_tape..(tile + 1) * tile_tape];
            backward_tile(isa, &weights, &tape_layout, &mut state, &grad_ldj, tape, &mut grads, ws);
            grad_x.copy_from_slice(&state[..rows * d]);
        }
        // The two halves of a coupling keep complementary rows (columns),
        // so each value gets one slot's sum, added to its zero here.
        weights.scatter_compact(&ws.compact, &mut grads);
        grads
    };
    #[cfg(feature = "parallel")]
    let partials: Vec<Vec<f32>> = {
        use rayon::prelude::*;
        grad_x.par_chunks_mut(group_rows * d).enumerate().map_init(Workspace::<E>::default, run).collect()
    };
    #[cfg(not(feature = "parallel"))]
    let partials: Vec<Vec<f32>> = {
        let mut ws = Workspace::<E>::default();
        grad_x.chunks_mut(group_rows * d).enumerate().map(|item| run(&mut ws, item)).collect()
    };
    let mut grads = sum_in_order(&partials, p);
    // The weights' gradients to their directions and magnitudes.
    let mut linears: Vec<LinearParams> = Vec::new();
    for i in 0..layout.nlayers {
        for net in [Net::S, Net::T] {
            for b in 0..layout.nresblocks {
                linears.extend((0..layout.linears()).map(|l| layout.linear(i, net, b, l)));
            }
        }
    }
    let normalised = par_map(&linears, |at| {
        weight_norm_backward(&params[at.v.clone()], &params[at.g.clone()], &grads[at.v.clone()])
    });
    for (at, (grad_v, grad_g)) in linears.into_iter().zip(normalised) {
        grads[at.v].copy_from_slice(&grad_v);
        grads[at.g].copy_from_slice(&grad_g);
    }
    (grad_x, grads)
}

/// `Σ partials` (each of `len` values; zeros when there are none), element
/// by element in the partials' order (so the same bits whatever the thread
/// pool did), on the pool in chunks of elements.
fn sum_in_order(partials: &[Vec<f32>], len: usize) -> Vec<f32> {
    let mut sum = partials.first().cloned().unwrap_or_else(|| vec![0.0; len]);
    let add = |at: usize, chunk: &mut [f32]| {
        for partial in partials.iter().skip(1) {
            chunk.iter_mut().zip(&partial[at..]).for_each(|(s, p)| *s += p);
        }
    };
    const CHUNK: usize = 1 << 14;
    #[cfg(feature = "parallel")]
    {
        use rayon::prelude::*;
        sum.par_chunks_mut(CHUNK).enumerate().for_each(|(c, chunk)| add(c * CHUNK, chunk));
    }
    #[cfg(not(feature = "parallel"))]
    sum.chunks_mut(CHUNK).enumerate().for_each(|(c, chunk)| add(c * CHUNK, chunk));
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tape read from another address (burn may move it between the
    /// forward and the backward) gives the same gradients: its head says
    /// where its aligned tiles start, not the address.
    #[test]
    fn a_moved_tape_gives_the_same_gradients() {
        let layout = StackLayout { channels: 3, kernel_size: 4, nlayers: 2, nresblocks: 2, nmlp: 2, nhidden: 40 };
        let (d, m) = (layout.dim(), 150);
        let params: Vec<f32> = (0..layout.num_params()).map(|i| ((i * 7919) % 1000) as f32 * 1e-3 - 0.5).collect();
        let x: Vec<f32> = (0..m * d).map(|i| ((i * 31) % 200) as f32 * 0.01 - 1.0).collect();
        let grad: Vec<f32> = (0..m * (d + 1)).map(|i| ((i * 17) % 100) as f32 * 0.01 - 0.5).collect();
        let (_, tape) = forward(&layout, &params, &x, true, ProductPrecision::F32);
        let want = backward(&layout, &params, &tape, &grad, ProductPrecision::F32);
        // Copies one to three values (4 to 12 bytes) off the original's alignment.
        for shift in 1..4 {
            let mut moved = vec![0.0f32; shift];
            moved.extend_from_slice(&tape);
            let got = backward(&layout, &params, &moved[shift..], &grad, ProductPrecision::F32);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&want.0), bits(&got.0), "input gradients, shift {shift}");
            assert_eq!(bits(&want.1), bits(&got.1), "parameter gradients, shift {shift}");
        }
    }

    /// Gradients from a tape without the hidden pre-activations (the
    /// backward runs each block again) are the same bits as from one that
    /// keeps them, in f32 and bf16, for tiles full and partial (where the
    /// tiles differ in size, the parameter gradients' sums are grouped
    /// differently, so equal to rounding).
    #[test]
    fn recomputed_hidden_values_give_the_same_gradients() {
        fn check<E: TileKernels>(layout: StackLayout, m: usize) {
            let d = layout.dim();
            let params: Vec<f32> = (0..layout.num_params()).map(|i| ((i * 7919) % 1000) as f32 * 1e-3 - 0.5).collect();
            let x: Vec<f32> = (0..m * d).map(|i| ((i * 31) % 200) as f32 * 0.01 - 1.0).collect();
            let grad: Vec<f32> = (0..m * (d + 1)).map(|i| ((i * 17) % 100) as f32 * 0.01 - 0.5).collect();
            let weights = Weights::<E>::new(layout, &params, false);
            let run = |keep: bool| {
                let (out, tape) = forward_packed(&weights, &x, true, keep);
                let (grad_x, grads) = backward_with::<E>(&layout, &params, &tape, &grad, keep);
                (out, tape.len(), grad_x, grads)
            };
            let (kept, recomputed) = (run(true), run(false));
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&kept.0), bits(&recomputed.0), "outputs");
            assert!(recomputed.1 < kept.1 / 2, "tape {} against {}", recomputed.1, kept.1);
            assert_eq!(bits(&kept.2), bits(&recomputed.2), "input gradients");
            if most_tile_rows(true) * MIN_TILES >= m {
                assert_eq!(bits(&kept.3), bits(&recomputed.3), "parameter gradients");
            } else {
                // Bigger tiles without the hidden values: the same terms,
                // summed in other groups.
                for (i, (a, b)) in kept.3.iter().zip(&recomputed.3).enumerate() {
                    assert!((a - b).abs() <= 1e-5 * (1.0 + a.abs()), "parameter {i}: {a} against {b}");
                }
            }
        }
        let layout = StackLayout { channels: 3, kernel_size: 4, nlayers: 2, nresblocks: 2, nmlp: 2, nhidden: 40 };
        for m in [150, 13, 1100] {
            check::<f32>(layout, m);
            // bf16 training runs only where the CPU has bf16 products
            // (`ProductPrecision::on_this_cpu`).
            if Isa::detect().native_bf16() {
                check::<Bf16>(layout, m);
            }
        }
        check::<f32>(StackLayout { nresblocks: 3, nmlp: 1, ..layout }, 70);
    }

    /// Rates of the fused stack alone (no burn around it): a bench-config
    /// level-0 stack (4 couplings, nhidden 128) on 4,096 block rows, its
    /// forward with the tape and its backward, in GFLOP/s of the products
    /// they hold (forward's once, backward's twice), with every thread.
    #[test]
    #[ignore = "benchmark: prints GFLOP/s"]
    fn stack_rates() {
        let layout = StackLayout { channels: 3, kernel_size: 4, nlayers: 4, nresblocks: 2, nmlp: 2, nhidden: 128 };
        let (d, m) = (layout.dim(), 4096);
        let params: Vec<f32> = (0..layout.num_params()).map(|i| ((i * 7919) % 1000) as f32 * 1e-4 + 0.01).collect();
        let x: Vec<f32> = (0..m * d).map(|i| ((i * 31) % 200) as f32 * 0.01 - 1.0).collect();
        let grad = vec![0.01f32; m * (d + 1)];
        let gflop = 2.0 * (layout.forward_macs_per_row() * m) as f64 / 1e9;
        // The first pass warms the pool and the spare tapes; of the rest,
        // the median and the best (this machine shares its cores).
        let (mut forwards, mut backwards) = (Vec::new(), Vec::new());
        for _ in 0..16 {
            let t0 = std::time::Instant::now();
            let (_, tape) = forward(&layout, &params, &x, true, ProductPrecision::F32);
            let t1 = std::time::Instant::now();
            let _ = backward(&layout, &params, &tape, &grad, ProductPrecision::F32);
            let t2 = std::time::Instant::now();
            recycle_tape(tape);
            forwards.push((t1 - t0).as_secs_f64());
            backwards.push((t2 - t1).as_secs_f64());
        }
        for (pass, times, products) in [("forward", &mut forwards, 1.0), ("backward", &mut backwards, 2.0)] {
            let times = &mut times[1..];
            times.sort_by(f64::total_cmp);
            let (median, best) = (times[times.len() / 2], times[0]);
            println!(
                "{pass}: median {:.1} ms ({:.0} GFLOP/s), best {:.1} ms ({:.0} GFLOP/s)",
                median * 1e3,
                products * gflop / median,
                best * 1e3,
                products * gflop / best
            );
        }
    }
}
