//! Latents to images on the CPU, fast: the inverse flow compiled once per
//! model into packed weights and cache-sized tiles.
//!
//! [`RgFlow::decode`] runs the s/t networks as whole-tensor ops: every layer
//! writes its `[blocks, width]` activations to memory and reads them back,
//! with a fork-join across threads per op. Blocks are independent inside a
//! sub-layer, though, so [`CpuDecoder`] hands each thread a tile of block
//! rows and runs the sub-layer's entire coupling stack on it, with the
//! weights normalised and packed beforehand (see `matmul.rs` for the kernels
//! and `pack.rs` for the checkerboard's skipped zeros): one fork-join per
//! sub-layer, and activations that never leave the cache.
//!
//! [`ProductPrecision::Bf16`] rounds the weights and the networks' activations to
//! bfloat16 for the matrix products (accumulating in f32); on CPUs with
//! AVX512-BF16 that doubles their rate (other CPUs decode in f32). The affine
//! updates, residual sums and the state itself stay f32. Pixels move by about
//! half a level of 255 on average (`tests/decoder.rs`, on the shipped model).

#[cfg(target_arch = "x86_64")]
mod amx;
#[cfg(feature = "wgpu")]
pub(crate) mod gpu;
pub(crate) mod matmul;
mod pack;
mod swish;
mod tile;

use burn::prelude::*;
use burn::tensor::TensorData;

use crate::config::RgFlowConfig;
use crate::error::{Error, Result};
use crate::flow::RgFlow;
use crate::preprocess;
#[cfg(feature = "wgpu")]
pub use gpu::GpuDecoder;
pub use matmul::Isa;
use matmul::{Bf16, MR, TileKernels};
use pack::PackedStack;
use tile::Workspace;

/// Number type of the s/t networks' matrix products.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum ProductPrecision {
    /// f32 throughout (matches [`RgFlow::decode`] to rounding).
    #[default]
    F32,
    /// bfloat16 weights and activations into f32 accumulators.
    Bf16,
}

impl ProductPrecision {
    /// The precision products run in on this CPU when `self` is asked for:
    /// bf16 only where the CPU multiplies it natively (AVX512-BF16;
    /// elsewhere bf16 would only be slower than f32).
    pub fn on_this_cpu(self) -> Self {
        if Isa::detect().native_bf16() { self } else { ProductPrecision::F32 }
    }
}

/// The CPU's matrix-product roof in `precision` (as it runs on this CPU,
/// [`ProductPrecision::on_this_cpu`]): GFLOP/s of the tile kernel on the
/// model's typical tile, `[64, 128] × [128, 128]` in cache, on every thread
/// of the pool at once, each timed for about `seconds`. A workload made only
/// of these products cannot beat it.
pub fn product_roof_gflops(precision: ProductPrecision, seconds: f64) -> f64 {
    match precision.on_this_cpu() {
        ProductPrecision::F32 => matmul::machine_gflops::<f32>(seconds),
        ProductPrecision::Bf16 => matmul::machine_gflops::<Bf16>(seconds),
    }
}

impl std::fmt::Display for ProductPrecision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ProductPrecision::F32 => "f32",
            ProductPrecision::Bf16 => "bf16",
        })
    }
}

/// Whether `device` keeps tensors in host memory (the CPU backends): there
/// the packed host-side passes ([`CpuDecoder`], [`crate::PackedFlow`]) cost
/// no transfers, and a device may be shared by threads of one process.
pub fn host_memory(device: &Device) -> bool {
    use burn::backend::DispatchDevice;
    match device.as_dispatch() {
        #[cfg(feature = "flex")]
        DispatchDevice::Flex(_) => true,
        #[cfg(feature = "ndarray")]
        DispatchDevice::NdArray(_) => true,
        // Unreachable when flex is the only backend compiled in (the web page).
        #[allow(unreachable_patterns)]
        _ => false,
    }
}

/// Latents to images on a flow's device, the fastest way that device allows:
/// the packed [`CpuDecoder`] where tensors live in host memory
/// ([`host_memory`]), the fused `GpuDecoder` on CubeCL devices (native
/// wgpu; in the browser it needs the asynchronous read of
/// `GpuDecoder::pixels_async`), burn ops ([`RgFlow::decode`]) elsewhere.
/// All give the same images in f32.
///
/// ```
/// # use burn::prelude::*;
/// use rgflow::decoder::{Decoder, ProductPrecision};
/// let device = Device::flex();
/// let flow = rgflow::RgFlowConfig::from_level_specs(8, 3, "1", "1", "1", "8")?.init(&device);
/// let decoder = Decoder::for_device(&flow, &device, ProductPrecision::F32)?;
/// assert!(decoder.packed().is_some()); // flex keeps tensors in host memory
/// let z = Tensor::<4>::zeros([2, 3, 8, 8], &device);
/// let x01 = decoder.decode(z); // [2, 3, 8, 8] in [0, 1]
/// # Ok::<(), rgflow::Error>(())
/// ```
#[derive(Clone)]
pub enum Decoder {
    /// The packed CPU decoder (shared: [`crate::PackedFlow`] hands out its own).
    Packed(std::sync::Arc<CpuDecoder>),
    /// Fused kernels on a CubeCL device, one launch per sub-layer.
    #[cfg(feature = "wgpu")]
    Gpu(std::sync::Arc<GpuDecoder>),
    /// burn ops on the flow's device (boxed: a flow is a few hundred bytes
    /// of handles, the packed variant one pointer).
    Ops(Box<RgFlow>),
}

impl Decoder {
    /// The decoder for `flow` on `device` (the device its weights live on).
    ///
    /// `precision` is that of the packed decoder's products; it falls back to
    /// f32 on CPUs without AVX512-BF16 ([`Self::precision`] says which ran).
    /// Asking for bf16 where tensors do not live in host memory is an error:
    /// burn ops decode in f32 only.
    pub fn for_device(flow: &RgFlow, device: &Device, precision: ProductPrecision) -> Result<Self> {
        if host_memory(device) {
            Ok(Decoder::Packed(std::sync::Arc::new(CpuDecoder::new(flow, precision))))
        } else if precision == ProductPrecision::Bf16 {
            Err(Error::Config(format!(
                "bf16 products are an option of the packed CPU decoder; on {device:?} latents decode with burn ops, in f32"
            )))
        } else {
            #[cfg(all(feature = "wgpu", not(target_arch = "wasm32")))]
            if let Some(decoder) = GpuDecoder::for_device(flow, device)? {
                return Ok(Decoder::Gpu(decoder));
            }
            Ok(Decoder::Ops(Box::new(flow.clone())))
        }
    }

    /// Latents to `[0, 1]` images (clamped): `z: [B, C, L, L] -> [B, C, L, L]`
    /// on `z`'s device.
    ///
    /// # Panics
    /// When the GPU decoder's read back fails (a lost device), as burn's
    /// own reads do.
    pub fn decode(&self, z: Tensor<4>) -> Tensor<4> {
        match self {
            Decoder::Packed(decoder) => decoder.decode(z),
            #[cfg(feature = "wgpu")]
            Decoder::Gpu(decoder) => decoder.decode(z).unwrap_or_else(|e| panic!("{e}")),
            Decoder::Ops(flow) => flow.decode(z),
        }
    }

    /// The packed CPU decoder, when this is one.
    pub fn packed(&self) -> Option<&CpuDecoder> {
        match self {
            Decoder::Packed(decoder) => Some(decoder),
            _ => None,
        }
    }

    /// The precision of the networks' products (burn ops: f32).
    pub fn precision(&self) -> ProductPrecision {
        self.packed().map_or(ProductPrecision::F32, CpuDecoder::precision)
    }
}

impl std::fmt::Display for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Decoder::Packed(decoder) => write!(f, "packed CPU decoder, {} products", decoder.precision()),
            #[cfg(feature = "wgpu")]
            Decoder::Gpu(_) => f.write_str("fused GPU decoder"),
            Decoder::Ops(_) => f.write_str("burn ops"),
        }
    }
}

/// Block rows per tile: enough rows to amortise reading a layer's weights,
/// few enough that a tile's activations stay in the core's L2.
const TILE_ROWS: usize = 64;
const _: () = assert!(TILE_ROWS.is_multiple_of(MR));

/// The packed coupling stacks, in the precision chosen.
enum Stacks {
    F32(Vec<PackedStack<f32>>),
    Bf16(Vec<PackedStack<Bf16>>),
}

/// An [`RgFlow`]'s inverse, packed for fast CPU decoding (see the module
/// docs). Build it once per model; it holds its own copy of the weights.
pub struct CpuDecoder {
    config: RgFlowConfig,
    precision: ProductPrecision,
    isa: Isa,
    stacks: Stacks,
    /// Blocks of each sub-layer (forward order).
    blocks: Vec<usize>,
    /// The lattice's inverse transitions (as [`RgFlow`]'s inverse gathers).
    gathers: Vec<Vec<usize>>,
}

impl CpuDecoder {
    /// Packs `flow`'s weights (read from its device once).
    ///
    /// [`ProductPrecision::Bf16`] needs a CPU with AVX512-BF16; elsewhere bf16
    /// products would only be slower than f32 ones, so the decoder runs in
    /// f32 ([`Self::precision`] says which).
    pub fn new(flow: &RgFlow, precision: ProductPrecision) -> Self {
        let isa = Isa::detect();
        let precision = precision.on_this_cpu();
        let stacks = match precision {
            ProductPrecision::F32 => Stacks::F32(flow.layers.iter().map(PackedStack::new).collect()),
            ProductPrecision::Bf16 => Stacks::Bf16(flow.layers.iter().map(PackedStack::new).collect()),
        };
        let lattice = flow.lattice();
        let gathers = lattice.inverse_transitions(flow.config().channels);
        Self {
            config: flow.config().clone(),
            precision,
            isa,
            stacks,
            blocks: lattice.sublayers.iter().map(|s| s.num_blocks).collect(),
            gathers,
        }
    }

    /// The precision of the networks' products (f32 where bf16 was asked
    /// for but the CPU lacks AVX512-BF16).
    pub fn precision(&self) -> ProductPrecision {
        self.precision
    }

    /// Whether this CPU runs [`ProductPrecision::Bf16`] products (at twice the f32
    /// rate); elsewhere the decoder runs in f32.
    pub fn native_bf16() -> bool {
        Isa::detect().native_bf16()
    }

    /// The inverse flow on host values: `z: [B, C·L²]` (canonical `[C, L, L]`
    /// order per image) `-> x: [B, C·L²]` in logit space.
    pub fn inverse(&self, z: &[f32]) -> Vec<f32> {
        match &self.stacks {
            Stacks::F32(stacks) => self.inverse_with(stacks, z),
            Stacks::Bf16(stacks) => self.inverse_with(stacks, z),
        }
    }

    /// Latents to `[0, 1]` images (clamped), as [`RgFlow::decode`]:
    /// `z: [B, C, L, L] -> [B, C, L, L]` on `z`'s device.
    pub fn decode(&self, z: Tensor<4>) -> Tensor<4> {
        let (dims, device) = (z.dims(), z.device());
        let x = self.inverse(&pack::host(z));
        let x = Tensor::from_data(TensorData::new(x, dims), &device);
        preprocess::logit_to_pixels(x, self.config.logit_constraint).clamp(0.0, 1.0)
    }

    /// Sub-layer `k`'s coupling stack inverted on block rows `rows: [M, D]`
    /// in place (any `M`; rows are independent, so each row's numbers are
    /// those of a full decode). A single tile runs on the calling thread.
    pub(crate) fn invert_rows(&self, k: usize, rows: &mut [f32]) {
        match &self.stacks {
            Stacks::F32(stacks) => invert_rows_with(self.isa, &stacks[k], rows),
            Stacks::Bf16(stacks) => invert_rows_with(self.isa, &stacks[k], rows),
        }
    }

    fn inverse_with<E: TileKernels>(&self, stacks: &[PackedStack<E>], z: &[f32]) -> Vec<f32> {
        let n = self.config.num_dims();
        assert_eq!(z.len() % n, 0, "latents are not [B, {n}]");
        let batch = z.len() / n;
        let depth = stacks.len();
        let mut state = Vec::new();
        for j in 0..depth {
            state = gather(if j == 0 { z } else { &state }, n, &self.gathers[j]);
            let k = depth - 1 - j;
            self.invert_sublayer(&stacks[k], self.blocks[k], &mut state, batch);
        }
        gather(&state, n, &self.gathers[depth])
    }

    /// Sub-layer `k`'s stack on a state in its layout, `[B, N]` with each
    /// image's `blocks · D` block values first.
    fn invert_sublayer<E: TileKernels>(&self, stack: &PackedStack<E>, blocks: usize, state: &mut [f32], batch: usize) {
        let (n, d) = (self.config.num_dims(), stack.dim);
        let rows = batch * blocks;
        let isa = self.isa;
        // Tiles read block rows from the state and write their own chunk of
        // `out`; row `r` is block `r % blocks` of image `r / blocks`. The last
        // tile is short (rounded up to the micro-kernel's rows): a coarse
        // level of a small batch has a few blocks, not a tile's worth.
        let mut out = vec![0.0f32; rows.next_multiple_of(MR) * d];
        let run = |ws: &mut Workspace<E>, (tile, chunk): (usize, &mut [f32])| {
            let first = tile * TILE_ROWS;
            for (i, row) in chunk.chunks_exact_mut(d).enumerate().take(rows.saturating_sub(first)) {
                let r = first + i;
                let at = (r / blocks) * n + (r % blocks) * d;
                row.copy_from_slice(&state[at..at + d]);
            }
            tile::invert_tile(isa, stack, chunk, chunk.len() / d, ws);
        };
        #[cfg(feature = "parallel")]
        {
            use rayon::prelude::*;
            out.par_chunks_mut(TILE_ROWS * d).enumerate().for_each_init(Workspace::new, run);
        }
        #[cfg(not(feature = "parallel"))]
        {
            let mut ws = Workspace::new();
            out.chunks_mut(TILE_ROWS * d).enumerate().for_each(|item| run(&mut ws, item));
        }
        for (b, image) in state.chunks_exact_mut(n).enumerate() {
            image[..blocks * d].copy_from_slice(&out[b * blocks * d..(b + 1) * blocks * d]);
        }
    }
}

fn invert_rows_with<E: TileKernels>(isa: Isa, stack: &PackedStack<E>, rows: &mut [f32]) {
    let d = stack.dim;
    assert_eq!(rows.len() % d, 0, "blocks are not [M, {d}]");
    let m = rows.len() / d;
    // Tiles of up to TILE_ROWS rows, the last one short.
    let run = |ws: &mut Workspace<E>, chunk: &mut [f32]| tile::invert_tile(isa, stack, chunk, chunk.len() / d, ws);
    if m <= TILE_ROWS {
        // As `PackedForward::run`: a few rows go faster split over two threads.
        #[cfg(feature = "parallel")]
        if m >= 2 && rayon::current_num_threads() > 1 {
            let (a, b) = rows.split_at_mut(m.div_ceil(2) * d);
            rayon::join(|| run(&mut Workspace::new(), a), || run(&mut Workspace::new(), b));
            return;
        }
        run(&mut Workspace::new(), rows);
        return;
    }
    #[cfg(feature = "parallel")]
    {
        use rayon::prelude::*;
        rows.par_chunks_mut(TILE_ROWS * d).for_each_init(Workspace::new, |ws, chunk| run(ws, chunk));
    }
    #[cfg(not(feature = "parallel"))]
    {
        let mut ws = Workspace::new();
        rows.chunks_mut(TILE_ROWS * d).for_each(|chunk| run(&mut ws, chunk));
    }
}

/// `new[b, p] = old[b, index[p]]` for every image of `[B, N]` values.
fn gather(old: &[f32], n: usize, index: &[usize]) -> Vec<f32> {
    let mut new = Vec::with_capacity(old.len());
    for image in old.chunks_exact(n) {
        new.extend(index.iter().map(|&i| image[i]));
    }
    new
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{host_uniform, jitter_parameters};

    /// Model shapes the decoders are checked on: `(L, C, nlayers, nresblocks,
    /// nmlp, nhidden)`, padding rows (a batch of 3), columns (odd widths)
    /// and the bf16 inner pairs, one and several residual blocks and linear
    /// layers, per-level depths.
    pub(super) const SHAPES: [(usize, usize, &str, &str, &str, &str); 4] = [
        (8, 1, "2", "1", "1", "16"),
        (16, 3, "2,1,1", "2", "2", "7"),
        (32, 3, "2,1,1,1", "2", "2", "40"),
        (16, 1, "1", "3", "1", "9"),
    ];

    fn max_abs(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
    }

    /// The packed f32 inverse equals the flow's own, for shapes that pad
    /// rows (a batch of 3), columns (odd widths) and the bf16 inner pairs,
    /// and for one and several residual blocks and linear layers.
    #[test]
    fn packed_inverse_matches_the_flow() {
        let device = Device::flex();
        for (size, channels, nlayers, nres, nmlp, nhidden) in SHAPES {
            let config = RgFlowConfig::from_level_specs(size, channels, nlayers, nres, nmlp, nhidden).unwrap();
            let flow = jitter_parameters(config.init(&device), 0.1, 5);
            let z = host_uniform([3, channels, size, size], -2.0, 2.0, 9, &device);
            let want = pack::host(flow.inverse_without_ldj(z.clone()));
            let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let f32_decoder = CpuDecoder::new(&flow, ProductPrecision::F32);
            let got = f32_decoder.inverse(&pack::host(z.clone()));
            let err = max_abs(&got, &want) / scale;
            assert!(err < 1e-5, "L{size} C{channels} {nlayers}/{nres}/{nmlp}/{nhidden}: f32 error {err}");
            assert!(max_abs(&want, &pack::host(z.clone())) > 1e-2, "the flow is the identity");

            if CpuDecoder::native_bf16() {
                let bf16 = CpuDecoder::new(&flow, ProductPrecision::Bf16).inverse(&pack::host(z.clone()));
                let err = max_abs(&bf16, &want) / scale;
                assert!(err < 5e-2 && err > 0.0, "L{size} C{channels}: bf16 error {err}");
            }

            let pixels = pack::host(f32_decoder.decode(z.clone()));
            let want_pixels = pack::host(flow.decode(z.clone()));
            assert!(max_abs(&pixels, &want_pixels) < 1e-5, "pixels");

            // The device's decoder is the packed one here (flex keeps tensors in host memory).
            let chosen = Decoder::for_device(&flow, &device, ProductPrecision::F32).unwrap();
            assert!(chosen.packed().is_some(), "{chosen}");
            assert_eq!(pack::host(chosen.decode(z)), pixels);
        }
    }
}
