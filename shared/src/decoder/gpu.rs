//! Latents to images on a CubeCL device (wgpu: Vulkan, Metal, DX12,
//! WebGPU), with one kernel launch per sub-layer.
//!
//! [`RgFlow::decode`] on a GPU runs every op of every s/t network as its own
//! kernel: thousands of launches per batch, each a round trip through memory.
//! [`GpuDecoder`] does on the GPU what [`super::CpuDecoder`] does on the CPU:
//! a workgroup takes a tile of block rows into workgroup (shared) memory and
//! runs the sub-layer's whole inverse coupling stack on it — every half,
//! both networks, every residual block — reading weights that were
//! weight-normalised, cut to the checkerboard's used rows and columns and
//! uploaded once per model. A batch is one launch per sub-layer plus one
//! gather per sub-layer (the lattice's moves between sub-layers); the last
//! gather also maps logits to pixels.
//!
//! Kernel shapes (`D = C·K²` values per block, `U = D/2` per half, `W` the
//! widest layer): a tile is `R` rows; shared memory holds the tile's state
//! `z: [R, D]`, the residual stream `x: [R, D]`, a layer's Swish'd input and
//! its product (`[R, W]` each) and the scale factors `[R, U]`.

use std::sync::Arc;

use burn::prelude::{Device, Tensor};
use cubecl::prelude::*;
use cubecl::server::Handle;

use super::pack::{PlainHalf, PlainNet, inverse_halves};
use crate::error::{Error, Result};
use crate::flow::RgFlow;

/// Units (threads) per workgroup: WebGPU's guaranteed maximum.
const UNITS: u32 = 256;
// The product's shape, from a sweep on an H200 (batch 4096, `trainer bench
// --fused-sampling-only`): small register tiles and small workgroups — many
// of them resident per SM — beat larger ones (14.9k images/s here against
// 13.3k for 4 × 4 per unit and 32-row tiles, 10.6k for 1 × 1).

/// Block rows each unit accumulates at once in a matrix product: the
/// weight it loads is used this many times.
const ROWS_PER_UNIT: usize = 2;
/// Columns each unit accumulates in a wide layer's product: the row it
/// loads from shared memory is used this many times.
const COLS_PER_UNIT: usize = 2;
/// Inputs of a product unrolled together (loads in flight at once).
const K_UNROLL: usize = 4;
/// Layers at least this wide take the register-tiled product.
const WIDE: usize = 128;
/// Rows per tile at most: 8 rows of the paper's widths take 12 KB of
/// workgroup memory (WebGPU guarantees 16 KB).
const MAX_TILE: usize = 8;

/// A sub-layer's whole inverse coupling stack on tiles of block rows.
///
/// `state: [B, n]` holds each image's `blocks · D` block values first, rows
/// `0..rows` being block `r % blocks` of image `r / blocks`; it is updated
/// in place. `weights` and `indices` are the model's (see
/// [`GpuDecoder::new`]); this sub-layer's start at `weight_base` and
/// `index_base`.
#[cube(launch, launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn invert_stack_kernel(
    state: &mut [f32],
    weights: &[f32],
    indices: &[u32],
    weight_base: usize,
    index_base: usize,
    halves: usize,
    blocks: usize,
    image_dims: usize,
    rows: usize,
    #[comptime] tile: usize,
    #[comptime] dim: usize,
    #[comptime] half: usize,
    #[comptime] width: usize,
    #[comptime] hidden: usize,
    #[comptime] res_blocks: usize,
    #[comptime] linears: usize,
    #[comptime] rows_per_unit: usize,
    #[comptime] cols_per_unit: usize,
    #[comptime] k_unroll: usize,
) {
    let first = CUBE_POS * tile;
    // Uniform per workgroup: the whole group leaves, or none of it.
    if first >= rows {
        terminate!();
    }
    let unit = UNIT_POS as usize;
    let units = CUBE_DIM as usize;
    let mut z = Shared::<[f32]>::new_slice(comptime!(tile * dim));
    let mut x = Shared::<[f32]>::new_slice(comptime!(tile * dim));
    let mut act = Shared::<[f32]>::new_slice(comptime!(tile * width));
    let mut prod = Shared::<[f32]>::new_slice(comptime!(tile * width));
    let mut scale = Shared::<[f32]>::new_slice(comptime!(tile * half));

    // Load the tile (rows past the end read as zeros and are not stored).
    for i in range_stepped(unit, comptime!(tile * dim), units) {
        let r = i / dim;
        let g = first + r;
        let mut value = 0.0f32;
        if g < rows {
            value = state[(g / blocks) * image_dims + (g % blocks) * dim + i % dim];
        }
        z[i] = value;
    }
    sync_cube();

    let groups = comptime!(tile / rows_per_unit);
    let mut offset = weight_base;
    for h in 0..halves {
        let conditioning = index_base + h * comptime!(2 * half);
        let updated = conditioning + half;
        for net in 0..2usize {
            // The residual stream starts as z on the conditioning half, zero
            // on the updated one.
            for i in range_stepped(unit, comptime!(tile * dim), units) {
                x[i] = 0.0f32;
            }
            sync_cube();
            for i in range_stepped(unit, comptime!(tile * half), units) {
                let c = indices[conditioning + i % half] as usize;
                let at = (i / half) * dim + c;
                x[at] = z[at];
            }
            sync_cube();
            for b in 0..res_blocks {
                for l in 0..linears {
                    // This layer's widths: the first layer of block 0 reads
                    // only the conditioning half, the last layer of the last
                    // block writes only the updated half.
                    let mut k = hidden.runtime();
                    if l == 0 {
                        k = dim;
                        if b == 0 {
                            k = half;
                        }
                    }
                    let mut n = hidden.runtime();
                    if l == linears - 1 {
                        n = dim;
                        if b == res_blocks - 1 {
                            n = half;
                        }
                    }
                    let beta = offset;
                    let weight = beta + k;
                    let bias = weight + k * n;
                    offset = bias + n;

                    // The Swish'd input, `act: [R, k]` (stride `width`).
                    for i in range_stepped(unit, tile * k, units) {
                        let r = i / k;
                        let c = i % k;
                        let v = if l > 0 {
                            prod[r * width + c]
                        } else if b > 0 {
                            x[r * dim + c]
                        } else {
                            x[r * dim + indices[conditioning + c] as usize]
                        };
                        let beta_v = weights[beta + c];
                        act[r * width + c] = v / (1.0f32 + f32::exp(-beta_v * v));
                    }
                    sync_cube();

                    // `prod[r, j] = bias[j] + Σ_c act[r, c] · w[c, j]`. Wide
                    // layers: each unit a register tile of `rows_per_unit`
                    // rows × `cols_per_unit` columns (strided, so a warp's
                    // weight reads stay contiguous), two loads per four
                    // multiply-adds; narrow ones: one column each, so that
                    // every unit has work.
                    if n >= WIDE {
                        // (`div_ceil` is not a kernel-side function.)
                        #[allow(clippy::manual_div_ceil)]
                        let slots = (n + cols_per_unit - 1) / cols_per_unit;
                        for item in range_stepped(unit, slots * groups, units) {
                            let s = item % slots;
                            let r0 = (item / slots) * rows_per_unit;
                            // Columns past `n` (when `cols_per_unit ∤ n`) redo
                            // the last one and are not stored.
                            let mut cols = Array::<usize>::new(cols_per_unit);
                            let mut acc = Array::<f32>::new(comptime!(rows_per_unit * cols_per_unit));
                            #[unroll]
                            for q in 0..cols_per_unit {
                                cols[q] = usize::min(s + q * slots, n - 1);
                                let b_q = weights[bias + cols[q]];
                                #[unroll]
                                for i in 0..rows_per_unit {
                                    acc[i * cols_per_unit + q] = b_q;
                                }
                            }
                            let mut w = Array::<f32>::new(cols_per_unit);
                            let mut a = Array::<f32>::new(rows_per_unit);
                            // The first `k − k % k_unroll` inputs unrolled (loads
                            // of several inputs in flight at once), the rest one by
                            // one: the body is written twice because a bounds
                            // test inside the unrolled loop instead made the
                            // decoder 1.8× slower on an H200 (8.7k against 15.8k
                            // images/s at batch 4096).
                            let full = k - k % k_unroll;
                            for c0 in range_stepped(0, full, k_unroll) {
                                #[unroll]
                                for u in 0..k_unroll {
                                    let c = c0 + u;
                                    #[unroll]
                                    for q in 0..cols_per_unit {
                                        w[q] = weights[weight + c * n + cols[q]];
                                    }
                                    #[unroll]
                                    for i in 0..rows_per_unit {
                                        a[i] = act[(r0 + i) * width + c];
                                    }
                                    #[unroll]
                                    for i in 0..rows_per_unit {
                                        #[unroll]
                                        for q in 0..cols_per_unit {
                                            acc[i * cols_per_unit + q] += a[i] * w[q];
                                        }
                                    }
                                }
                            }
                            for c in full..k {
                                #[unroll]
                                for q in 0..cols_per_unit {
                                    w[q] = weights[weight + c * n + cols[q]];
                                }
                                #[unroll]
                                for i in 0..rows_per_unit {
                                    a[i] = act[(r0 + i) * width + c];
                                }
                                #[unroll]
                                for i in 0..rows_per_unit {
                                    #[unroll]
                                    for q in 0..cols_per_unit {
                                        acc[i * cols_per_unit + q] += a[i] * w[q];
                                    }
                                }
                            }
                            #[unroll]
                            for q in 0..cols_per_unit {
                                if s + q * slots < n {
                                    #[unroll]
                                    for i in 0..rows_per_unit {
                                        prod[(r0 + i) * width + cols[q]] = acc[i * cols_per_unit + q];
                                    }
                                }
                            }
                        }
                    } else {
                        for item in range_stepped(unit, n * groups, units) {
                            let j = item % n;
                            let r0 = (item / n) * rows_per_unit;
                            let mut acc = Array::<f32>::new(rows_per_unit);
                            let b_j = weights[bias + j];
                            #[unroll]
                            for i in 0..rows_per_unit {
                                acc[i] = b_j;
                            }
                            let full = k - k % k_unroll;
                            for c0 in range_stepped(0, full, k_unroll) {
                                #[unroll]
                                for u in 0..k_unroll {
                                    let c = c0 + u;
                                    let w = weights[weight + c * n + j];
                                    #[unroll]
                                    for i in 0..rows_per_unit {
                                        acc[i] += act[(r0 + i) * width + c] * w;
                                    }
                                }
                            }
                            for c in full..k {
                                let w = weights[weight + c * n + j];
                                #[unroll]
                                for i in 0..rows_per_unit {
                                    acc[i] += act[(r0 + i) * width + c] * w;
                                }
                            }
                            #[unroll]
                            for i in 0..rows_per_unit {
                                prod[(r0 + i) * width + j] = acc[i];
                            }
                        }
                    }
                    sync_cube();
                }
                if b < res_blocks - 1 {
                    // `x ← (x + h) / √2` over the whole block.
                    for i in range_stepped(unit, comptime!(tile * dim), units) {
                        let r = i / dim;
                        let c = i % dim;
                        x[i] = (x[i] + prod[r * width + c]) * 0.70710677f32;
                    }
                    sync_cube();
                }
            }
            // The last block's residual over the updated half, then the
            // network's scale: s as the factor e^{−tanh(·)}, t applied.
            let net_scale = offset;
            offset += half;
            for i in range_stepped(unit, comptime!(tile * half), units) {
                let r = i / half;
                let j = i % half;
                let at = r * dim + indices[updated + j] as usize;
                let out = (x[at] + prod[r * width + j]) * 0.70710677f32;
                if net == 0 {
                    scale[i] = f32::exp(-f32::tanh(out * weights[net_scale + j]));
                } else {
                    z[at] = (z[at] - out * weights[net_scale + j]) * scale[i];
                }
            }
            sync_cube();
        }
    }

    for i in range_stepped(unit, comptime!(tile * dim), units) {
        let g = first + i / dim;
        if g < rows {
            state[(g / blocks) * image_dims + (g % blocks) * dim + i % dim] = z[i];
        }
    }
}

/// `output[b, p] = input[b, index[p]]` for every image of `[B, n]` values;
/// with `to_pixels` the result is also mapped from logits to `[0, 1]`
/// pixels (as [`crate::preprocess::logit_to_pixels`], then clamped).
#[cube(launch)]
fn gather_kernel(
    input: &[f32],
    output: &mut [f32],
    indices: &[u32],
    index_base: usize,
    image_dims: usize,
    total: usize,
    logit_constraint: f32,
    #[comptime] to_pixels: bool,
) {
    let i = ABSOLUTE_POS;
    if i < total {
        let p = i % image_dims;
        let mut v = input[i - p + indices[index_base + p] as usize];
        if to_pixels {
            let y = 1.0f32 / (1.0f32 + f32::exp(-v));
            v = ((y * 2.0f32 - 1.0f32) / logit_constraint + 1.0f32) / 2.0f32;
            v = f32::clamp(v, 0.0f32, 1.0f32);
        }
        output[i] = v;
    }
}

/// The sizes the stack kernel is compiled for (one set per model).
#[derive(Debug, Clone, Copy)]
struct KernelShape {
    tile: usize,
    rows_per_unit: usize,
    cols_per_unit: usize,
    k_unroll: usize,
    dim: usize,
    half: usize,
    width: usize,
    hidden: usize,
    res_blocks: usize,
    linears: usize,
}

/// One sub-layer: its kernel's sizes, blocks per image and where its
/// halves start.
#[derive(Debug, Clone, Copy)]
struct Sublayer {
    shape: KernelShape,
    blocks: usize,
    halves: usize,
    weight_base: usize,
    index_base: usize,
}

/// An [`RgFlow`]'s inverse as fused kernels on a CubeCL device (see the
/// module docs). Build it once per model; it holds the packed weights on
/// the device.
pub struct GpuDecoder {
    client: Client,
    num_dims: usize,
    logit_constraint: f32,
    /// Forward order.
    sublayers: Vec<Sublayer>,
    /// Every half's networks, flattened.
    weights: Handle,
    /// Every half's conditioning and updated positions, then every gather's
    /// source positions.
    indices: Handle,
    /// Where each of the inverse pass's gathers starts in `indices`.
    gather_bases: Vec<usize>,
    /// Launch the stack kernel with bounds checks (tests; slower).
    checked: bool,
}

impl std::fmt::Debug for GpuDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuDecoder").field("sublayers", &self.sublayers).finish()
    }
}

fn read_error(e: cubecl::server::ServerError) -> Error {
    Error::Device(format!("reading the decoded images back from the GPU failed: {e}"))
}

/// The CubeCL client of `device`, if it is a CubeCL device.
fn cube_client(device: &Device) -> Option<Client> {
    use burn::backend::DispatchDevice;
    match device.as_dispatch() {
        DispatchDevice::Cube(device) => Some(device.client()),
        #[allow(unreachable_patterns)]
        _ => None,
    }
}

impl GpuDecoder {
    /// The decoder for `flow` on `device` when it is a CubeCL device
    /// (`None` elsewhere).
    pub fn for_device(flow: &RgFlow, device: &Device) -> Result<Option<Arc<Self>>> {
        cube_client(device).map(|client| Self::build(flow, client, false).map(Arc::new)).transpose()
    }

    /// Packs `flow`'s weights (read once) onto `device`, a CubeCL device.
    /// The weights are read synchronously from `flow`'s own device: in a
    /// browser, where WebGPU cannot block, pass a copy of the flow loaded
    /// on the CPU (`Device::flex()`).
    pub fn new(flow: &RgFlow, device: &Device) -> Result<Arc<Self>> {
        let client = cube_client(device)
            .ok_or_else(|| Error::Device(format!("the GPU decoder runs on a CubeCL (wgpu) device, not {device:?}")))?;
        Self::build(flow, client, false).map(Arc::new)
    }

    /// [`Self::new`] on `client`'s device, its stack kernel launched with
    /// bounds checks or not.
    fn build(flow: &RgFlow, client: Client, checked: bool) -> Result<Self> {
        let config = flow.config();
        let max_shared = client.properties().hardware.max_shared_memory_size;
        let lattice = flow.lattice();
        let (mut weights, mut indices) = (Vec::<f32>::new(), Vec::<u32>::new());
        let mut sublayers = Vec::new();
        for (stack, sub) in flow.layers.iter().zip(&lattice.sublayers) {
            let shape = kernel_shape(stack.layout(), max_shared)?;
            let half = shape.half;
            let halves = inverse_halves(stack);
            sublayers.push(Sublayer {
                shape,
                blocks: sub.num_blocks,
                halves: halves.len(),
                weight_base: weights.len(),
                index_base: indices.len(),
            });
            for h in &halves {
                assert!(h.conditioning.len() == half && h.updated.len() == half, "a checkerboard half is D/2");
                indices.extend(h.conditioning.iter().chain(&h.updated).map(|&i| i as u32));
                push_half(&mut weights, h);
            }
        }
        let num_dims = config.num_dims();
        let mut gather_bases = Vec::new();
        for gather in lattice.inverse_transitions(config.channels) {
            gather_bases.push(indices.len());
            indices.extend(gather.iter().map(|&i| i as u32));
        }
        Ok(Self {
            num_dims,
            logit_constraint: config.logit_constraint as f32,
            sublayers,
            weights: client.create_from_slice(f32::as_bytes(&weights)),
            indices: client.create_from_slice(u32::as_bytes(&indices)),
            gather_bases,
            client,
            checked,
        })
    }

    /// Block rows per workgroup of each sub-layer (set by the device's
    /// workgroup memory and the sub-layer's widths).
    pub fn tile_rows(&self) -> Vec<usize> {
        self.sublayers.iter().map(|s| s.shape.tile).collect()
    }

    /// Launches per batch: a gather and a stack per sub-layer, a last gather.
    pub fn launches_per_batch(&self) -> usize {
        2 * self.sublayers.len() + 1
    }

    /// Latents to `[0, 1]` pixels (clamped), on host values: `z: [B, C·L²]`
    /// (canonical `[C, L, L]` order per image) `-> [B, C·L²]`.
    pub fn pixels(&self, z: &[f32]) -> Result<Vec<f32>> {
        self.read(self.launch(z, true))
    }

    /// The inverse flow on host values: `z: [B, C·L²]` (canonical order per
    /// image) `-> x: [B, C·L²]` in logit space (as [`RgFlow::inverse`]).
    pub fn inverse(&self, z: &[f32]) -> Result<Vec<f32>> {
        self.read(self.launch(z, false))
    }

    fn read(&self, output: Handle) -> Result<Vec<f32>> {
        crate::dispatch::note_host_read();
        let bytes = self.client.read_one(output).map_err(read_error)?;
        Ok(f32::from_bytes(&bytes).to_vec())
    }

    /// [`Self::pixels`] with an asynchronous read back (what the browser needs).
    pub async fn pixels_async(&self, z: &[f32]) -> Result<Vec<f32>> {
        let output = self.launch(z, true);
        crate::dispatch::note_host_read();
        let mut bytes = self.client.read_async(vec![output]).await.map_err(read_error)?;
        Ok(f32::from_bytes(&bytes.remove(0)).to_vec())
    }

    /// Latents to `[0, 1]` images (clamped), as [`RgFlow::decode`]:
    /// `z: [B, C, L, L] -> [B, C, L, L]` on `z`'s device (through the host:
    /// `z` is read back, the pixels uploaded).
    pub fn decode(&self, z: Tensor<4>) -> Result<Tensor<4>> {
        let (dims, device) = (z.dims(), z.device());
        let z = z.into_data().try_into_vec_as::<f32>().expect("a float tensor converts to f32");
        Ok(Tensor::from_data(burn::tensor::TensorData::new(self.pixels(&z)?, dims), &device))
    }

    /// Every launch of a batch; returns the handle of the pixels (or, without
    /// `to_pixels`, of the logits).
    fn launch(&self, z: &[f32], to_pixels: bool) -> Handle {
        let n = self.num_dims;
        assert_eq!(z.len() % n, 0, "latents are not [B, {n}]");
        let total = z.len();
        let batch = total / n;
        let client = &self.client;
        let mut state = client.create_from_slice(f32::as_bytes(z));
        let mut spare = client.empty(size_of_val(z));
        let depth = self.sublayers.len();
        for j in 0..=depth {
            self.gather(&state, &spare, self.gather_bases[j], total, to_pixels && j == depth);
            std::mem::swap(&mut state, &mut spare);
            if j == depth {
                break;
            }
            let sub = self.sublayers[depth - 1 - j];
            let s = sub.shape;
            let rows = batch * sub.blocks;
            let tiles = rows.div_ceil(s.tile);
            macro_rules! launch_stack {
                ($launch:path) => {
                    $launch(
                        client,
                        cube_count(tiles),
                        CubeDim::new_1d(UNITS),
                        BufferArg::from_raw_parts(state.clone(), total),
                        BufferArg::from_raw_parts(self.weights.clone(), self.weights.size() as usize / 4),
                        BufferArg::from_raw_parts(self.indices.clone(), self.indices.size() as usize / 4),
                        sub.weight_base,
                        sub.index_base,
                        sub.halves,
                        sub.blocks,
                        n,
                        rows,
                        s.tile,
                        s.dim,
                        s.half,
                        s.width,
                        s.hidden,
                        s.res_blocks,
                        s.linears,
                        s.rows_per_unit,
                        s.cols_per_unit,
                        s.k_unroll,
                    )
                };
            }
            // SAFETY: the buffers hold exactly the values given (`state` made
            // above from `z`, `weights` and `indices` in `new`); every index
            // the kernel forms is in range by construction — rows past
            // `rows` are neither read nor written, weight and index offsets
            // follow the packing of `new`, shared-memory indices stay under
            // `tile × width` — and `checked` launches (the tests) run the
            // same kernel with bounds checks.
            unsafe {
                if self.checked {
                    launch_stack!(invert_stack_kernel::launch);
                } else {
                    launch_stack!(invert_stack_kernel::launch_unchecked);
                }
            }
        }
        state
    }

    fn gather(&self, input: &Handle, output: &Handle, index_base: usize, total: usize, to_pixels: bool) {
        // SAFETY: `input` and `output` hold `total` f32 values (made in
        // `launch`), `indices` as many u32 as it says; the kernel reads
        // `input` at its own image's gathered positions, all under `total`.
        unsafe {
            gather_kernel::launch(
                &self.client,
                cube_count(total.div_ceil(UNITS as usize)),
                CubeDim::new_1d(UNITS),
                BufferArg::from_raw_parts(input.clone(), total),
                BufferArg::from_raw_parts(output.clone(), total),
                BufferArg::from_raw_parts(self.indices.clone(), self.indices.size() as usize / 4),
                index_base,
                self.num_dims,
                total,
                self.logit_constraint,
                to_pixels,
            );
        }
    }
}

/// The stack kernel's sizes for `layout`, with the most rows per tile that
/// fit `max_shared` bytes of workgroup memory.
fn kernel_shape(layout: crate::kernels::StackLayout, max_shared: usize) -> Result<KernelShape> {
    let (dim, hidden) = (layout.dim(), layout.nhidden);
    let half = dim / 2;
    let width = dim.max(hidden);
    let per_row = 4 * (2 * dim + 2 * width + half);
    let (rows_per_unit, cols_per_unit, k_unroll) = (ROWS_PER_UNIT, COLS_PER_UNIT, K_UNROLL);
    let mut tile = MAX_TILE;
    while tile > rows_per_unit && tile * per_row > max_shared {
        tile /= 2;
    }
    if tile * per_row > max_shared {
        return Err(Error::Device(format!(
            "a tile of {tile} block rows needs {} bytes of workgroup memory; this device has {max_shared}",
            tile * per_row
        )));
    }
    Ok(KernelShape {
        tile,
        rows_per_unit,
        cols_per_unit,
        k_unroll,
        dim,
        half,
        width,
        hidden,
        res_blocks: layout.nresblocks,
        linears: layout.linears(),
    })
}

/// `cubes` workgroups, spread over two dimensions past the 65,535 a
/// dimension allows (`CUBE_POS` counts them in order; extras leave at once).
pub(crate) fn cube_count(cubes: usize) -> CubeCount {
    const MAX: usize = 65_535;
    let cubes = cubes.max(1);
    if cubes <= MAX {
        CubeCount::Static(cubes as u32, 1, 1)
    } else {
        CubeCount::Static(MAX as u32, cubes.div_ceil(MAX) as u32, 1)
    }
}

/// A half's two networks onto `weights`, in the kernel's reading order: per
/// network, per layer `β [K]`, weight `[K, N]`, bias `[N]`; then the net's
/// scale `[U]`.
fn push_half(weights: &mut Vec<f32>, half: &PlainHalf) {
    let push_net = |weights: &mut Vec<f32>, net: &PlainNet| {
        for layer in net.blocks.iter().flatten() {
            weights.extend(&layer.beta);
            weights.extend(&layer.weight);
            weights.extend(&layer.bias);
        }
        weights.extend(&net.scale);
    };
    push_net(weights, &half.s);
    push_net(weights, &half.t);
}

#[cfg(test)]
mod tests {
    use burn::prelude::*;

    use super::GpuDecoder;
    use crate::config::RgFlowConfig;
    use crate::testing::{host_uniform, jitter_parameters};

    fn host(t: Tensor<4>) -> Vec<f32> {
        t.into_data().try_into_vec_as::<f32>().unwrap()
    }

    /// More workgroups than one grid dimension holds (65,535) spread over two,
    /// each position still visited once.
    #[test]
    fn launches_past_one_grid_dimension_cover_every_position() {
        use cubecl::prelude::*;
        let client = super::cube_client(&Device::wgpu(Default::default())).unwrap();
        let total = 65_536 * super::UNITS as usize + 7;
        let input: Vec<f32> = (0..total).map(|i| (i % 1000) as f32).collect();
        let (input_h, output_h) =
            (client.create_from_slice(f32::as_bytes(&input)), client.empty(total * size_of::<f32>()));
        let indices = client.create_from_slice(u32::as_bytes(&[0]));
        // SAFETY: each buffer holds the number of values given.
        unsafe {
            super::gather_kernel::launch(
                &client,
                super::cube_count(total.div_ceil(super::UNITS as usize)),
                CubeDim::new_1d(super::UNITS),
                BufferArg::from_raw_parts(input_h, total),
                BufferArg::from_raw_parts(output_h.clone(), total),
                BufferArg::from_raw_parts(indices, 1),
                0,
                1,
                total,
                1.0,
                false,
            );
        }
        let output = client.read_one(output_h).unwrap();
        assert!(f32::from_bytes(&output) == input.as_slice());
    }

    /// The fused GPU decoder against the flow's own decode on the CPU, for
    /// per-level depths, a batch that leaves a tile short, one and several
    /// residual blocks and linear layers, widths under and over `D`.
    #[test]
    fn gpu_decoder_matches_the_flow() {
        let cpu = Device::flex();
        let gpu = Device::wgpu(Default::default());
        // The CPU decoder's shapes, and wide layers (the register-tiled
        // product) whose width the columns per unit do not divide.
        let wide = [(8, 1, "2", "2", "1", "129")];
        for &(size, channels, nlayers, nres, nmlp, nhidden) in super::super::tests::SHAPES.iter().chain(&wide) {
            let config = RgFlowConfig::from_level_specs(size, channels, nlayers, nres, nmlp, nhidden).unwrap();
            let flow = jitter_parameters(config.init(&cpu), 0.1, 5);
            let z = host_uniform([3, channels, size, size], -2.0, 2.0, 9, &cpu);
            let want = host(flow.decode(z.clone()));
            let decoder = GpuDecoder::new(&flow, &gpu).unwrap();
            let got = decoder.pixels(&host(z.clone())).unwrap();
            let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
            assert!(worst < 1e-5, "L{size} C{channels} {nlayers}/{nres}/{nmlp}/{nhidden}: {worst}");
            // The launches without bounds checks read and write only in
            // bounds: with checks (out-of-bounds reads give 0, writes are
            // dropped) the numbers are the same.
            let client = super::cube_client(&gpu).unwrap();
            let checked = GpuDecoder::build(&flow, client, true).unwrap().pixels(&host(z.clone())).unwrap();
            assert_eq!(checked, got, "L{size}: checked and unchecked launches differ");
            let identity = host(crate::preprocess::logit_to_pixels(z, config.logit_constraint).clamp(0.0, 1.0));
            let moved = identity.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
            assert!(moved > 1e-2, "the flow is the identity");
        }
        assert!(
            GpuDecoder::new(&RgFlowConfig::from_level_specs(8, 1, "1", "1", "1", "4").unwrap().init(&cpu), &cpu)
                .is_err_and(|e| e.to_string().contains("CubeCL"))
        );
    }
}
