//! Local recomputation on the CPU with packed weights: an update costs its
//! blocks, not the image.
//!
//! [`RgFlow::update_cached`] runs a dirty block's couplings as burn ops. For a
//! brush stroke that is a few blocks per sub-layer, so its time goes to the
//! per-op overheads (thousands of small ops) rather than to arithmetic.
//! [`PackedFlow`] packs every sub-layer's coupling stack once, both ways (the
//! forward's from the training kernels, the inverse's from the
//! [`CpuDecoder`]), keeps a pass's states in host memory, and updates them in
//! place: per sub-layer it gathers the dirty blocks' rows, runs the packed
//! stack on them as one small tile (its rows split over two threads when
//! there are several), and writes them back. Nothing in an update is `O(L²)`.
//!
//! Rows are independent in the tile kernels, so a local update gives the same
//! bits as a full [`PackedFlow`] pass; against the burn ops of [`RgFlow`] it
//! agrees to f32 rounding.

use std::sync::{Arc, OnceLock};

use burn::module::Module;
use burn::prelude::Device;

use super::{Direction, LocalStats};
use crate::decoder::{CpuDecoder, Decoder, ProductPrecision, host_memory};
use crate::flow::RgFlow;
use crate::kernels::cpu::stack::PackedForward;

/// An [`RgFlow`] packed for cached passes and local updates on the host
/// (see the module docs). Build it once per model: it holds its own copy of
/// the weights, packed for each direction. Cheap to share ([`Arc`] inside).
///
/// ```
/// # use burn::prelude::*;
/// use rgflow::cone::{Direction, PackedFlow};
/// let device = Device::flex();
/// let flow = rgflow::RgFlowConfig::from_level_specs(8, 3, "1", "1", "1", "8")?.init(&device);
/// let packed = PackedFlow::new(&flow);
/// let x = vec![0.3f32; 3 * 8 * 8];
/// let mut cache = packed.run_cached(Direction::Forward, &x);
/// // Edit one pixel (all channels): only the blocks it reaches run again.
/// let (mut edited, mut changed) = (x.clone(), vec![false; 64]);
/// changed[9] = true;
/// (0..3).for_each(|c| edited[c * 64 + 9] = -0.5);
/// let stats = packed.update(&mut cache, &edited, &changed);
/// assert!(stats.blocks_evaluated < stats.blocks_total);
/// assert_eq!(cache, packed.run_cached(Direction::Forward, &edited));
/// # Ok::<(), rgflow::Error>(())
/// ```
#[derive(Clone)]
pub struct PackedFlow {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for PackedFlow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackedFlow").field("config", self.inner.flow.config()).finish_non_exhaustive()
    }
}

struct Inner {
    flow: RgFlow,
    /// The device `flow` lives on.
    device: Device,
    /// See [`PackedFlow::forward`].
    forward: OnceLock<Vec<PackedForward>>,
    inverse: Arc<CpuDecoder>,
    /// Per sub-layer, the canonical element of every value of every block,
    /// `[blocks][C][K²]` (the coupling's row layout).
    elements: Vec<Vec<usize>>,
}

/// The states of one pass over a batch, in host memory (see [`PackedFlow`]).
#[derive(Debug, Clone, PartialEq)]
pub struct PackedCache {
    /// The pass's direction.
    pub direction: Direction,
    /// Images in the batch.
    pub batch: usize,
    /// `states[0]` is the input, `states[j + 1]` the state after the `j`-th
    /// sub-layer run; each `[B, C·L²]` in canonical order.
    pub states: Vec<Vec<f32>>,
    /// Log-det of every block of sub-layer `k`, `[B, blocks_k]` (indexed by `k`;
    /// zeros for an inverse pass, which does not compute them).
    pub block_ldj: Vec<Vec<f32>>,
}

impl PackedFlow {
    /// Packs `flow` (its weights read from the device once).
    pub fn new(flow: &RgFlow) -> Self {
        let channels = flow.config().channels;
        let lattice = flow.lattice();
        let elements = lattice
            .sublayers
            .iter()
            .enumerate()
            .map(|(k, sub)| lattice.block_elements(k, &(0..sub.num_blocks).collect::<Vec<_>>(), channels))
            .collect();
        let inner = Inner {
            flow: flow.clone(),
            device: flow.devices().into_iter().next().expect("a flow has parameters"),
            forward: OnceLock::new(),
            inverse: Arc::new(CpuDecoder::new(flow, ProductPrecision::F32)),
            elements,
        };
        Self { inner: Arc::new(inner) }
    }

    /// The forward's packed stacks, one per sub-layer, packed on first use:
    /// sampling needs only the inverse, so a page's first face does not wait
    /// for them.
    fn forward(&self) -> &[PackedForward] {
        self.inner.forward.get_or_init(|| {
            self.inner
                .flow
                .layers
                .iter()
                .map(|stack| {
                    let params = stack.flat_params().into_data().try_into_vec_as::<f32>().expect("f32 parameters");
                    PackedForward::new(stack.layout(), &params)
                })
                .collect()
        })
    }

    /// `flow` packed when `device` keeps tensors in host memory (the CPU
    /// backends, [`host_memory`]), where the packed passes cost no
    /// transfers; `None` elsewhere (run burn ops on the device there).
    pub fn for_device(flow: &RgFlow, device: &Device) -> Option<Self> {
        host_memory(device).then(|| Self::new(flow))
    }

    /// The model this was packed from.
    pub fn flow(&self) -> &RgFlow {
        &self.inner.flow
    }

    /// The device the model was packed from (where results are handed back as tensors).
    pub fn device(&self) -> Device {
        self.inner.device.clone()
    }

    /// The packed inverse (f32) as a full-image decoder, shared with this.
    pub fn decoder(&self) -> Decoder {
        Decoder::Packed(Arc::clone(&self.inner.inverse))
    }

    /// Values per image, `C·L²`.
    fn num_dims(&self) -> usize {
        self.inner.flow.config().num_dims()
    }

    fn batch_of(&self, values: &[f32]) -> usize {
        let n = self.num_dims();
        assert_eq!(values.len() % n, 0, "images are not [B, {n}]");
        values.len() / n
    }

    /// Values per block row, `C·K²`, and sub-layer `k`'s blocks' elements.
    fn block_table(&self, k: usize) -> (usize, &[usize]) {
        (self.inner.flow.config().block_dim(), &self.inner.elements[k])
    }

    /// The rows of `blocks` of sub-layer `k` from the images `source: [B, N]`,
    /// `[B · blocks, D]`.
    fn gather_rows(&self, k: usize, blocks: &[usize], source: &[f32]) -> Vec<f32> {
        let (dim, elements) = self.block_table(k);
        let mut rows = Vec::with_capacity(source.len() / self.num_dims() * blocks.len() * dim);
        for image in source.chunks_exact(self.num_dims()) {
            for &b in blocks {
                rows.extend(elements[b * dim..(b + 1) * dim].iter().map(|&e| image[e]));
            }
        }
        rows
    }

    /// Writes [`Self::gather_rows`]'s rows back into the images `target: [B, N]`.
    fn scatter_rows(&self, k: usize, blocks: &[usize], rows: &[f32], target: &mut [f32]) {
        let (dim, elements) = self.block_table(k);
        if blocks.is_empty() {
            return;
        }
        for (image, rows) in target.chunks_exact_mut(self.num_dims()).zip(rows.chunks_exact(blocks.len() * dim)) {
            for (&b, row) in blocks.iter().zip(rows.chunks_exact(dim)) {
                for (&e, &v) in elements[b * dim..(b + 1) * dim].iter().zip(row) {
                    image[e] = v;
                }
            }
        }
    }

    /// Sub-layer `k`'s couplings on gathered rows of `blocks` (in place); a
    /// forward pass writes each block's log-det into `ldj: [B, blocks_k]`.
    fn run_rows(&self, direction: Direction, k: usize, blocks: &[usize], rows: &mut [f32], ldj: &mut [f32]) {
        if blocks.is_empty() {
            return;
        }
        match direction {
            Direction::Forward => {
                let mut row_ldj = vec![0.0f32; rows.len() / self.block_table(k).0];
                self.forward()[k].run(rows, &mut row_ldj);
                let per_image = self.inner.flow.lattice().sublayers[k].num_blocks;
                for (image_ldj, values) in ldj.chunks_exact_mut(per_image).zip(row_ldj.chunks_exact(blocks.len())) {
                    for (&b, &v) in blocks.iter().zip(values) {
                        image_ldj[b] = v;
                    }
                }
            }
            Direction::Inverse => self.inner.inverse.invert_rows(k, rows),
        }
    }

    /// A full pass over `input: [B, C·L²]` (canonical order; logit-space `x`
    /// for `Forward`, `z` for `Inverse`) that keeps its states.
    pub fn run_cached(&self, direction: Direction, input: &[f32]) -> PackedCache {
        let batch = self.batch_of(input);
        let sublayers = &self.inner.flow.lattice().sublayers;
        let mut states = vec![input.to_vec()];
        let mut block_ldj = vec![Vec::new(); sublayers.len()];
        for k in self.inner.flow.sublayer_order(direction) {
            let all: Vec<usize> = (0..sublayers[k].num_blocks).collect();
            let mut state = states.last().expect("a pass has states").clone();
            let mut ldj = vec![0.0f32; batch * all.len()];
            let mut rows = self.gather_rows(k, &all, &state);
            self.run_rows(direction, k, &all, &mut rows, &mut ldj);
            self.scatter_rows(k, &all, &rows, &mut state);
            states.push(state);
            block_ldj[k] = ldj;
        }
        PackedCache { direction, batch, states, block_ldj }
    }

    /// Brings `cache` up to date, in place, for a new input that differs from
    /// its input only at the `changed` sites (`[L²]`, every channel): the new
    /// values are read from `input: [B, C·L²]` at those sites alone, and only
    /// the blocks the change reaches run. Afterwards `cache` holds the same
    /// bits as [`Self::run_cached`] on the new input.
    pub fn update(&self, cache: &mut PackedCache, input: &[f32], changed: &[bool]) -> LocalStats {
        // On a worker of the pool, the sub-layers' two-thread splits are
        // cheap joins rather than one hand-over from outside each.
        #[cfg(feature = "parallel")]
        return rayon::scope(|_| self.update_here(cache, input, changed));
        #[cfg(not(feature = "parallel"))]
        self.update_here(cache, input, changed)
    }

    fn update_here(&self, cache: &mut PackedCache, input: &[f32], changed: &[bool]) -> LocalStats {
        let lattice = self.inner.flow.lattice();
        let n = self.num_dims();
        let plane = lattice.size * lattice.size;
        assert_eq!(changed.len(), plane, "changed sites are not [{plane}]");
        assert_eq!(input.len(), cache.batch * n, "the input is not [{}, {n}]", cache.batch);
        let channels = n / plane;
        let sites: Vec<usize> = (0..plane).filter(|&s| changed[s]).collect();
        for (state, input) in cache.states[0].chunks_exact_mut(n).zip(input.chunks_exact(n)) {
            for c in 0..channels {
                for &s in &sites {
                    state[c * plane + s] = input[c * plane + s];
                }
            }
        }
        let mut stats = LocalStats { blocks_evaluated: 0, blocks_total: 0 };
        // The sites where the new pass may differ from the old one so far, as
        // a list (what the work follows) and a mask (for membership): the
        // cone of `MeraLattice::cone`, followed without scanning the image.
        let mut marked = changed.to_vec();
        let mut marked_sites = sites;
        for (j, k) in self.inner.flow.sublayer_order(cache.direction).into_iter().enumerate() {
            let sub = &lattice.sublayers[k];
            let blocks = sub.blocks_touching(marked_sites.iter().copied());
            stats.blocks_total += sub.num_blocks;
            stats.blocks_evaluated += blocks.len();
            let (before, after) = cache.states.split_at_mut(j + 1);
            let (source, target) = (&before[j], &mut after[0]);
            // Changed sites this sub-layer does not touch pass through.
            let through: Vec<usize> = marked_sites.iter().copied().filter(|&s| sub.block_of(s).is_none()).collect();
            for (target, source) in target.chunks_exact_mut(n).zip(source.chunks_exact(n)) {
                for c in 0..channels {
                    for &s in &through {
                        target[c * plane + s] = source[c * plane + s];
                    }
                }
            }
            let mut rows = self.gather_rows(k, &blocks, source);
            self.run_rows(cache.direction, k, &blocks, &mut rows, &mut cache.block_ldj[k]);
            self.scatter_rows(k, &blocks, &rows, target);
            for &b in &blocks {
                for s in 0..lattice.block_sites() {
                    let site = sub.site(lattice.size, b, s);
                    if !marked[site] {
                        marked[site] = true;
                        marked_sites.push(site);
                    }
                }
            }
        }
        stats
    }

    /// An inverse pass over `z: [B, C·L²]`, in place, that runs only the
    /// given blocks (per sub-layer, as [`crate::MeraLattice::cone`] lists
    /// them) and passes every other site through; as
    /// [`RgFlow::inverse_blocks`], exact at the sites whose values depend on
    /// those blocks alone.
    pub fn inverse_blocks(&self, z: &mut [f32], blocks: &[Vec<usize>]) {
        self.batch_of(z);
        for k in self.inner.flow.sublayer_order(Direction::Inverse) {
            let mut rows = self.gather_rows(k, &blocks[k], z);
            self.run_rows(Direction::Inverse, k, &blocks[k], &mut rows, &mut []);
            self.scatter_rows(k, &blocks[k], &rows, z);
        }
    }
}

impl PackedCache {
    /// A cache of no pass (a placeholder while one is updated elsewhere).
    pub fn empty() -> Self {
        Self { direction: Direction::Forward, batch: 0, states: Vec::new(), block_ldj: Vec::new() }
    }

    /// The pass's output, `[B, C·L²]`.
    pub fn output(&self) -> &[f32] {
        self.states.last().expect("a pass has states")
    }

    /// The pass's log-det per image, `[B]` (a forward pass's).
    pub fn log_det(&self) -> Vec<f32> {
        let mut total = vec![0.0f32; self.batch];
        for ldj in &self.block_ldj {
            let per_image = ldj.len() / self.batch;
            for (t, l) in total.iter_mut().zip(ldj.chunks_exact(per_image)) {
                *t += l.iter().sum::<f32>();
            }
        }
        total
    }
}

#[cfg(test)]
mod tests {
    use burn::prelude::*;

    use super::*;
    use crate::RgFlowConfig;
    use crate::testing::{host_uniform, jitter_parameters};

    fn flow(size: usize, device: &Device) -> RgFlow {
        let config = RgFlowConfig::from_level_specs(size, 3, "2", "1", "2", "16").unwrap();
        jitter_parameters(config.init(device), 0.1, 7)
    }

    fn host(t: Tensor<2>) -> Vec<f32> {
        t.into_data().try_into_vec_as::<f32>().unwrap()
    }

    fn max_diff(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
    }

    /// The packed passes are the flow's, to f32 rounding, both ways, log-det included.
    #[test]
    fn packed_passes_match_the_flow() {
        let device = Device::flex();
        let f = flow(16, &device);
        let packed = PackedFlow::new(&f);
        let x = host_uniform([3, 3, 16, 16], -1.7, 1.7, 1, &device);
        let input = host(x.clone().reshape([3, 768]));
        for direction in [Direction::Forward, Direction::Inverse] {
            let want = f.run_cached(direction, x.clone());
            let got = packed.run_cached(direction, &input);
            let err = max_diff(got.output(), &host(want.states.last().unwrap().clone()));
            assert!(err < 1e-5, "{direction:?}: {err}");
            assert!(max_diff(got.output(), &input) > 1e-2, "the flow is the identity");
            if direction == Direction::Forward {
                let want_ldj = want.log_det().into_data().try_into_vec_as::<f32>().unwrap();
                assert!(max_diff(&got.log_det(), &want_ldj) < 1e-3);
            }
        }
    }

    /// An update in place gives the bits of a full packed pass on the new input.
    #[test]
    fn update_equals_a_full_pass() {
        let device = Device::flex();
        for size in [16, 32] {
            let f = flow(size, &device);
            let packed = PackedFlow::new(&f);
            let n = 3 * size * size;
            let input = host(host_uniform([2, 3, size, size], -1.7, 1.7, 2, &device).reshape([2, n]));
            for direction in [Direction::Forward, Direction::Inverse] {
                let mut cache = packed.run_cached(direction, &input);
                let mut edit = input.clone();
                let mut changed = vec![false; size * size];
                for (r, c) in [(5, 6), (5, 7), (6, 8), (size - 1, 0)] {
                    changed[r * size + c] = true;
                    for e in (0..6).map(|bc| bc * size * size + r * size + c) {
                        edit[e] += 0.7;
                    }
                }
                // The input outside the changed sites is never read.
                let mut garbled = edit.clone();
                garbled.iter_mut().enumerate().filter(|(e, _)| !changed[e % (size * size)]).for_each(|(_, v)| *v = 9.0);
                let stats = packed.update(&mut cache, &garbled, &changed);
                let full = packed.run_cached(direction, &edit);
                assert!(stats.blocks_evaluated < stats.blocks_total, "{stats:?}");
                assert_eq!(cache, full, "L={size} {direction:?}");
            }
        }
    }

    /// The inverse over a hole's cone gives the full inverse's bits on the hole.
    #[test]
    fn inverse_over_a_cone_is_exact_on_its_sites() {
        let device = Device::flex();
        let size = 32;
        let f = flow(size, &device);
        let packed = PackedFlow::new(&f);
        let z = host(host_uniform([2, 3, size, size], -1.5, 1.5, 3, &device).reshape([2, 3 * size * size]));
        let full = packed.run_cached(Direction::Inverse, &z);
        let mut hole = vec![false; size * size];
        (12..18).flat_map(|r| (3..7).map(move |c| r * size + c)).for_each(|s| hole[s] = true);
        let (blocks, _) = f.lattice().cone(&hole, Direction::Forward);
        let mut part = z.clone();
        packed.inverse_blocks(&mut part, &blocks);
        let plane = size * size;
        let mut differing_elsewhere = 0;
        for (e, (a, b)) in full.output().iter().zip(&part).enumerate() {
            if hole[e % plane] {
                assert_eq!(a, b, "hole element {e}");
            } else if a != b {
                differing_elsewhere += 1;
            }
        }
        assert!(differing_elsewhere > 0);
    }
}
