//! The MERA lattice: which sites each sub-layer's blocks gather, and the level
//! of every latent site.
//!
//! Level `i` acts on the sites whose row and column are both multiples of
//! `2^i`. Its *decimator* gathers `K×K` blocks with dilation `2^i` and stride
//! `K·2^i` starting at the origin; its *disentangler* gathers the same blocks
//! shifted diagonally by half a block, `K·2^i / 2`, wrapping periodically.
//! The authors apply the decimator first, then the disentangler, at every
//! level (`mera_indices` in their `layers/mera.py`); we keep that order.

use crate::flow::Direction;

/// The two kinds of sub-layer at every level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubLayerKind {
    /// Blocks at offset 0.
    Decimator,
    /// Blocks offset by half a block.
    Disentangler,
}

/// One sub-layer of the lattice: a partition of (some of) the sites into blocks.
#[derive(Debug, Clone)]
pub struct SubLayer {
    /// Level `i` (dilation `2^i`).
    pub level: usize,
    /// Decimator or disentangler.
    pub kind: SubLayerKind,
    /// Distance between the sites of one block, `2^i`.
    pub dilation: usize,
    /// Distance between neighbouring blocks, `K·2^i`.
    pub stride: usize,
    /// Shift of every block (both axes), `0` or `K·2^i / 2`.
    pub offset: usize,
    /// Number of blocks.
    pub num_blocks: usize,
    /// Row of every block site, `[num_blocks][K²]` flattened (row-major within a block).
    pub rows: Vec<usize>,
    /// Column of every block site, same layout as `rows`.
    pub cols: Vec<usize>,
    /// For every site `row·L + col`, the block holding it (`u32::MAX`: none).
    block_of_site: Vec<u32>,
}

impl SubLayer {
    /// Site index `row·L + col` of site `k` of block `b`.
    pub fn site(&self, size: usize, b: usize, k: usize) -> usize {
        let kk = self.rows.len() / self.num_blocks;
        self.rows[b * kk + k] * size + self.cols[b * kk + k]
    }

    /// The block holding site `row·L + col`, if this sub-layer touches it.
    pub fn block_of(&self, site: usize) -> Option<usize> {
        let b = self.block_of_site[site];
        (b != u32::MAX).then_some(b as usize)
    }

    /// Blocks holding at least one of `sites`, in increasing order, each once.
    pub fn blocks_touching(&self, sites: impl IntoIterator<Item = usize>) -> Vec<usize> {
        let mut hit = vec![false; self.num_blocks];
        for site in sites {
            if let Some(b) = self.block_of(site) {
                hit[b] = true;
            }
        }
        (0..self.num_blocks).filter(|&b| hit[b]).collect()
    }
}

/// The full lattice of an `L×L` image with `K×K` blocks.
#[derive(Debug, Clone)]
pub struct MeraLattice {
    /// Edge length `L`.
    pub size: usize,
    /// Block edge `K`.
    pub kernel_size: usize,
    /// Sub-layers in the data-to-latent (forward) order.
    pub sublayers: Vec<SubLayer>,
    /// Level of the latent at every site `row·L + col`.
    pub site_level: Vec<usize>,
}

/// Block gather indices exactly as the authors' `get_indices` (im2col with
/// dilation, stride and a periodic offset). Returns `(rows, cols)`, each of
/// shape `[num_blocks][height·width]` flattened, and the number of blocks.
fn block_indices(
    size: usize,
    height: usize,
    width: usize,
    stride: usize,
    dilation: usize,
    offset: usize,
) -> (Vec<usize>, Vec<usize>, usize) {
    let out_h = (size - dilation * (height - 1) - 1) / stride + 1;
    let out_w = (size - dilation * (width - 1) - 1) / stride + 1;
    let mut rows = Vec::with_capacity(out_h * out_w * height * width);
    let mut cols = Vec::with_capacity(rows.capacity());
    for b in 0..out_h * out_w {
        for k in 0..height * width {
            rows.push(((k / width) * dilation + stride * (b / out_w) + offset) % size);
            cols.push(((k % width) * dilation + stride * (b % out_w) + offset) % size);
        }
    }
    (rows, cols, out_h * out_w)
}

impl MeraLattice {
    /// Builds the lattice for an `size×size` image and `kernel_size×kernel_size` blocks.
    ///
    /// `size / kernel_size` must be a power of two (checked by the config).
    pub fn new(size: usize, kernel_size: usize) -> Self {
        let levels = crate::config::num_levels(size, kernel_size);
        let mut sublayers = Vec::with_capacity(2 * levels);
        for level in 0..levels {
            let dilation = 1 << level;
            let stride = kernel_size * dilation;
            for (kind, offset) in [(SubLayerKind::Decimator, 0), (SubLayerKind::Disentangler, stride / 2)] {
                let (rows, cols, num_blocks) = block_indices(size, kernel_size, kernel_size, stride, dilation, offset);
                let mut block_of_site = vec![u32::MAX; size * size];
                for (i, (r, c)) in rows.iter().zip(&cols).enumerate() {
                    block_of_site[r * size + c] = (i / (kernel_size * kernel_size)) as u32;
                }
                sublayers.push(SubLayer {
                    level,
                    kind,
                    dilation,
                    stride,
                    offset,
                    num_blocks,
                    rows,
                    cols,
                    block_of_site,
                });
            }
        }
        let top = levels - 1;
        let site_level = (0..size * size)
            .map(|s| {
                let (r, c) = (s / size, s % size);
                // 2-adic valuation; row/col 0 is divisible by every power of two.
                let v = |x: usize| if x == 0 { usize::MAX } else { x.trailing_zeros() as usize };
                v(r).min(v(c)).min(top)
            })
            .collect();
        Self { size, kernel_size, sublayers, site_level }
    }

    /// Number of levels.
    pub fn levels(&self) -> usize {
        self.sublayers.len() / 2
    }

    /// Where level `level`'s sub-layer of `kind` is in forward order: the
    /// decimator at `2·level`, the disentangler right after it.
    pub fn sublayer_index(level: usize, kind: SubLayerKind) -> usize {
        2 * level
            + match kind {
                SubLayerKind::Decimator => 0,
                SubLayerKind::Disentangler => 1,
            }
    }

    /// Blocks of every sub-layer together: what a full pass evaluates.
    pub fn num_blocks(&self) -> usize {
        self.sublayers.iter().map(|s| s.num_blocks).sum()
    }

    /// Values per block, `K²` (per channel).
    pub fn block_sites(&self) -> usize {
        self.kernel_size * self.kernel_size
    }

    /// The element order used while sub-layer `k` runs, for `channels` channels:
    /// position `p` of that layout holds canonical element `order[p]`, where a
    /// canonical element is `c·L² + site`. The first `num_blocks·C·K²` entries
    /// are the blocks, each laid out `[C][K²]` as the authors' `stackRGblock`
    /// (so a reshape gives the `[blocks, C·K²]` matrix the coupling needs); the
    /// rest are the untouched elements in canonical order.
    pub fn layout(&self, k: usize, channels: usize) -> Vec<usize> {
        let sub = &self.sublayers[k];
        let plane = self.size * self.size;
        let kk = self.block_sites();
        let mut order = Vec::with_capacity(channels * plane);
        let mut active = vec![false; channels * plane];
        for b in 0..sub.num_blocks {
            for c in 0..channels {
                for s in 0..kk {
                    let e = c * plane + sub.site(self.size, b, s);
                    debug_assert!(!active[e], "blocks of one sub-layer overlap");
                    active[e] = true;
                    order.push(e);
                }
            }
        }
        order.extend((0..channels * plane).filter(|&e| !active[e]));
        order
    }

    /// Gather indices that move a state from layout `from` to layout `to`
    /// (`None` = canonical `[C, L, L]` order): `new[p] = old[index[p]]`.
    pub fn transition(&self, from: Option<usize>, to: Option<usize>, channels: usize) -> Vec<usize> {
        let n = channels * self.size * self.size;
        let position_in_from: Vec<usize> = match from {
            None => (0..n).collect(),
            Some(k) => invert(&self.layout(k, channels)),
        };
        match to {
            None => position_in_from,
            Some(k) => self.layout(k, channels).into_iter().map(|e| position_in_from[e]).collect(),
        }
    }
}

impl MeraLattice {
    /// The gathers of a forward pass: entry `k` moves the state into the
    /// layout of sub-layer `k` (from the previous one's, or canonical order
    /// for `k = 0`), the last entry back to canonical order.
    pub fn forward_transitions(&self, channels: usize) -> Vec<Vec<usize>> {
        let depth = self.sublayers.len();
        (0..=depth).map(|k| self.transition(k.checked_sub(1), (k < depth).then_some(k), channels)).collect()
    }

    /// The gathers of an inverse pass: entry `j` moves the state into the
    /// layout of sub-layer `depth - 1 - j`, the last entry back to canonical order.
    pub fn inverse_transitions(&self, channels: usize) -> Vec<Vec<usize>> {
        let depth = self.sublayers.len();
        (0..=depth)
            .map(|j| self.transition((j > 0).then(|| depth - j), (j < depth).then(|| depth - 1 - j), channels))
            .collect()
    }
}

impl MeraLattice {
    /// Follows a change through the sub-layers: `changed` marks the sites
    /// that differ at the input; returns, for every sub-layer in the order
    /// they run (forward: 0, 1, …; inverse: last, …, 0), the blocks that must
    /// be recomputed, and the sites that may differ at the output.
    ///
    /// A local change reaches a bounded number of blocks per sub-layer, so this
    /// is `O(log L)` blocks in all — the causal cone of the change.
    pub fn cone(&self, changed: &[bool], direction: Direction) -> (Vec<Vec<usize>>, Vec<bool>) {
        let mut marked = changed.to_vec();
        // The marked sites as a list too: each sub-layer looks at those only,
        // not at all L² sites (a cone from one fine site stays small; an
        // inpainting stroke asks for one per site of its hole's cone).
        let mut sites: Vec<usize> = (0..marked.len()).filter(|&s| marked[s]).collect();
        let order: Vec<usize> = match direction {
            Direction::Forward => (0..self.sublayers.len()).collect(),
            Direction::Inverse => (0..self.sublayers.len()).rev().collect(),
        };
        let mut dirty = vec![Vec::new(); self.sublayers.len()];
        for k in order {
            let sub = &self.sublayers[k];
            let blocks = sub.blocks_touching(sites.iter().copied());
            for &b in &blocks {
                for s in 0..self.block_sites() {
                    let site = sub.site(self.size, b, s);
                    if !marked[site] {
                        marked[site] = true;
                        sites.push(site);
                    }
                }
            }
            dirty[k] = blocks;
        }
        (dirty, marked)
    }

    /// The image sites a latent at `site` can influence (its receptive field's
    /// largest possible support).
    pub fn receptive_cone(&self, site: usize) -> Vec<bool> {
        let mut changed = vec![false; self.size * self.size];
        changed[site] = true;
        self.cone(&changed, Direction::Inverse).1
    }

    /// Canonical element indices `c·L² + site` of the given blocks of
    /// sub-layer `k`, laid out `[block][C][K²]` (the coupling's row layout).
    pub fn block_elements(&self, k: usize, blocks: &[usize], channels: usize) -> Vec<usize> {
        let sub = &self.sublayers[k];
        let plane = self.size * self.size;
        let kk = self.block_sites();
        let mut out = Vec::with_capacity(blocks.len() * channels * kk);
        for &b in blocks {
            for c in 0..channels {
                out.extend((0..kk).map(|s| c * plane + sub.site(self.size, b, s)));
            }
        }
        out
    }

    /// Canonical element indices of every latent of `level`, ordered `[C][site]`.
    pub fn level_elements(&self, level: usize, channels: usize) -> Vec<usize> {
        let plane = self.size * self.size;
        (0..channels)
            .flat_map(|c| {
                self.site_level.iter().enumerate().filter(move |(_, l)| **l == level).map(move |(s, _)| c * plane + s)
            })
            .collect()
    }
}

/// Inverse of a permutation.
fn invert(perm: &[usize]) -> Vec<usize> {
    let mut inv = vec![0; perm.len()];
    for (p, &e) in perm.iter().enumerate() {
        inv[e] = p;
    }
    inv
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indices_match_the_authors_small_case() {
        // From the golden L = 8 vectors: sub-layer 1 (disentangler, offset 2), block 1.
        let lat = MeraLattice::new(8, 4);
        let sub = &lat.sublayers[1];
        assert_eq!(sub.kind, SubLayerKind::Disentangler);
        assert_eq!(&sub.cols[16..32], &[6, 7, 0, 1, 6, 7, 0, 1, 6, 7, 0, 1, 6, 7, 0, 1]);
        assert_eq!(&sub.rows[0..8], &[2, 2, 2, 2, 3, 3, 3, 3]);
    }

    #[test]
    fn every_sublayer_partitions_the_sites_of_its_level() {
        for (size, k) in [(4, 4), (8, 4), (32, 4), (64, 4), (16, 2)] {
            let lat = MeraLattice::new(size, k);
            for sub in &lat.sublayers {
                let step = sub.dilation;
                let mut seen = vec![0; size * size];
                for b in 0..sub.num_blocks {
                    for s in 0..k * k {
                        seen[sub.site(size, b, s)] += 1;
                    }
                }
                for (site, &n) in seen.iter().enumerate() {
                    let on_level = (site / size) % step == 0 && (site % size) % step == 0;
                    assert_eq!(n, usize::from(on_level), "L={size} level {} site {site}", sub.level);
                }
            }
        }
    }

    #[test]
    fn latent_levels_count_like_a_tree() {
        let lat = MeraLattice::new(32, 4);
        let count = |l| lat.site_level.iter().filter(|&&x| x == l).count();
        assert_eq!([count(0), count(1), count(2), count(3)], [768, 192, 48, 16]);
    }

    /// The cone as first written: every sub-layer scans all L² sites.
    fn cone_by_scanning(lat: &MeraLattice, changed: &[bool], direction: Direction) -> (Vec<Vec<usize>>, Vec<bool>) {
        let mut marked = changed.to_vec();
        let mut order: Vec<usize> = (0..lat.sublayers.len()).collect();
        if direction == Direction::Inverse {
            order.reverse();
        }
        let mut dirty = vec![Vec::new(); lat.sublayers.len()];
        for k in order {
            let sub = &lat.sublayers[k];
            let blocks = sub.blocks_touching((0..marked.len()).filter(|&s| marked[s]));
            for &b in &blocks {
                for s in 0..lat.block_sites() {
                    marked[sub.site(lat.size, b, s)] = true;
                }
            }
            dirty[k] = blocks;
        }
        (dirty, marked)
    }

    #[test]
    fn cones_equal_a_scan_of_every_site() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for size in [8, 16, 32] {
            let lat = MeraLattice::new(size, 4);
            for density in [0, 1, 4, 64, 512] {
                let changed: Vec<bool> = (0..size * size).map(|_| next() % 1024 < density).collect();
                for direction in [Direction::Forward, Direction::Inverse] {
                    assert_eq!(
                        lat.cone(&changed, direction),
                        cone_by_scanning(&lat, &changed, direction),
                        "L={size}, {density}/1024 changed, {direction:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn cones_grow_by_a_few_blocks_per_sublayer() {
        for size in [32, 64, 128] {
            let lat = MeraLattice::new(size, 4);
            let mut changed = vec![false; size * size];
            changed[(size / 2 + 1) * size + size / 2 + 1] = true;
            let (dirty, reached) = lat.cone(&changed, Direction::Forward);
            // The changed region grows by about one block per sub-layer while
            // blocks double in size per level: at most 3×3 blocks per sub-layer.
            let counts: Vec<usize> = dirty.iter().map(Vec::len).collect();
            assert!(counts.iter().all(|&n| (1..=9).contains(&n)), "L={size}: {counts:?}");
            assert!(reached.iter().filter(|&&m| m).count() < size * size);
        }
        // A top-level latent reaches the whole image.
        let lat = MeraLattice::new(16, 4);
        assert!(lat.receptive_cone(0).iter().all(|&m| m));
        // A level-0 latent reaches only a neighbourhood.
        let cone = lat.receptive_cone(5 * 16 + 5);
        assert!(cone[5 * 16 + 5] && !cone.iter().all(|&m| m));
    }

    #[test]
    fn transitions_compose_to_identity() {
        let lat = MeraLattice::new(16, 4);
        let c = 2;
        let to0 = lat.transition(None, Some(0), c);
        let back = lat.transition(Some(0), None, c);
        let canonical: Vec<usize> = (0..c * 256).collect();
        let in0: Vec<usize> = to0.iter().map(|&i| canonical[i]).collect();
        assert_eq!(in0, lat.layout(0, c));
        let again: Vec<usize> = back.iter().map(|&i| in0[i]).collect();
        assert_eq!(again, canonical);
        let in1: Vec<usize> = lat.transition(Some(0), Some(1), c).iter().map(|&i| in0[i]).collect();
        assert_eq!(in1, lat.layout(1, c));
    }
}
