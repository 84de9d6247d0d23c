//! Tile matrix products for the decoder: `out = a · w + bias` for a tile of
//! rows that stays in cache, with the weights packed once per model.
//!
//! Two operand precisions: f32, and bf16 (f32 with its mantissa cut to 8
//! bits) multiplied pairwise and accumulated in f32 — the AVX512-BF16
//! instruction `vdpbf16ps` does 32 such products per instruction, twice the
//! f32 FMA rate. Each has an AVX-512 micro-kernel (8 rows × 32 columns of
//! accumulators in registers) and a portable one for every other CPU; f32
//! also has an AVX2 + FMA micro-kernel (6 rows × 16 columns) for x86 CPUs
//! without AVX-512, and bf16 has AMX tile kernels (`amx.rs`) where the CPU
//! has them.

/// An element of the left operand and of the packed weights.
pub trait Operand: Copy + Default + Send + Sync + 'static {
    /// Values of the inner dimension a micro-kernel step consumes: the packed
    /// layout interleaves this many rows of `w` (2 for bf16 pairs).
    const K_STEP: usize;
    /// What the inner size of a packed matrix (and so the left operand's
    /// row stride) is rounded up to: a whole AMX tile row for bf16.
    const K_ALIGN: usize;
    /// The nearest representable value.
    fn from_f32(x: f32) -> Self;
    /// The value as f32 (exact).
    fn to_f32(self) -> f32;
    /// Rows of `cols` values as a left operand with rows `k_stride` apart
    /// (padding zero): `src` itself for f32, else rounded into `scratch`.
    fn operand_rows<'a>(src: &'a [f32], cols: usize, k_stride: usize, scratch: &'a mut Vec<Self>) -> &'a [Self] {
        portable_operand_rows(src, cols, k_stride, scratch)
    }
}

/// [`Operand::operand_rows`] in plain loops, one `from_f32` per value.
fn portable_operand_rows<'a, E: Operand>(
    src: &[f32],
    cols: usize,
    k_stride: usize,
    scratch: &'a mut Vec<E>,
) -> &'a [E] {
    scratch.clear();
    for row in src.chunks_exact(cols) {
        scratch.extend(row.iter().map(|&x| E::from_f32(x)));
        scratch.resize(scratch.len() + k_stride - cols, E::default());
    }
    scratch
}

impl Operand for f32 {
    const K_STEP: usize = 1;
    const K_ALIGN: usize = 1;
    fn operand_rows<'a>(src: &'a [f32], cols: usize, k_stride: usize, _: &'a mut Vec<Self>) -> &'a [Self] {
        debug_assert_eq!(cols, k_stride, "f32 operands are not padded");
        src
    }
    #[inline(always)]
    fn from_f32(x: f32) -> Self {
        x
    }
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
}

/// bfloat16: the top 16 bits of an f32.
#[derive(Clone, Copy, Default, Debug, PartialEq)]
#[repr(transparent)]
pub struct Bf16(pub u16);

impl Operand for Bf16 {
    const K_STEP: usize = 2;
    const K_ALIGN: usize = 32;
    /// Round to nearest, ties to even (NaN stays NaN: its top mantissa bits
    /// are kept, and the quiet bit is forced on).
    #[inline(always)]
    fn from_f32(x: f32) -> Self {
        let bits = x.to_bits();
        let rounded = (bits.wrapping_add(0x7FFF + ((bits >> 16) & 1))) >> 16;
        // Both computed, then selected: a branch would stop vectorisation.
        let nan = (bits >> 16) | 0x40;
        Bf16(if (bits & 0x7FFF_FFFF) > 0x7F80_0000 { nan } else { rounded } as u16)
    }
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f32::from_bits(u32::from(self.0) << 16)
    }
    /// With AVX512-BF16, 32 values per `vcvtne2ps2bf16` (the backward rounds
    /// every gradient operand: plain loops were 7% of a bf16 step), which
    /// also flushes subnormals to zero.
    fn operand_rows<'a>(src: &'a [f32], cols: usize, k_stride: usize, scratch: &'a mut Vec<Self>) -> &'a [Self] {
        #[cfg(target_arch = "x86_64")]
        if Isa::detect().native_bf16() {
            assert!(k_stride >= cols && src.len().is_multiple_of(cols.max(1)), "operand_rows: shapes");
            let rows = src.len().checked_div(cols).unwrap_or(0);
            // Every value, padding included, is written below.
            scratch.resize(rows * k_stride, Bf16::default());
            // SAFETY: AVX512-BF16 (with F and BW) was detected; `scratch` holds
            // `rows` rows of `k_stride ≥ cols` values.
            unsafe { avx512::round_rows_bf16(src, cols, k_stride, scratch) };
            return &scratch[..rows * k_stride];
        }
        portable_operand_rows(src, cols, k_stride, scratch)
    }
}

/// Output columns per packed panel (two AVX-512 registers).
pub const PANEL: usize = 32;
/// Rows per micro-kernel call; tiles are a multiple of it.
pub const MR: usize = 8;

/// A weight matrix `[K, N]` and its bias `[N]`, packed for the micro-kernels:
/// panels of [`PANEL`] columns (the last zero-padded), each holding rows of
/// `w` in groups of `E::K_STEP` interleaved per column, so one vector load
/// gives a panel row (or row pair).
#[derive(Debug, Clone)]
pub struct PackedMatrix<E: Operand> {
    /// Logical inner size.
    pub k: usize,
    /// Inner size rounded up to `E::K_ALIGN`: the row stride of the left operand.
    pub k_stride: usize,
    /// Logical output columns.
    pub n: usize,
    /// Output columns rounded up to [`PANEL`]: the row stride of the output.
    pub n_stride: usize,
    data: Vec<E>,
    /// `[n_stride]`, zero past `n`.
    pub(super) bias: Vec<f32>,
}

impl<E: Operand> PackedMatrix<E> {
    /// Packs `w: [K, N]` (row-major) and `bias: [N]`.
    pub fn new(w: &[f32], bias: &[f32], k: usize, n: usize) -> Self {
        assert_eq!(w.len(), k * n, "weight matrix is not [{k}, {n}]");
        let mut packed = Self::empty();
        packed.repack(w, n, Some(bias), k, n);
        packed
    }

    /// A `[0, 0]` matrix, to be filled by [`Self::repack`].
    pub fn empty() -> Self {
        Self { k: 0, k_stride: 0, n: 0, n_stride: 0, data: Vec::new(), bias: Vec::new() }
    }

    /// Packs `w: [K, N]` with rows `w_stride` apart, and `bias: [N]` (zero
    /// if `None`), reusing this matrix's buffers (the training path packs
    /// per-tile operands this way, without allocating).
    pub fn repack(&mut self, w: &[f32], w_stride: usize, bias: Option<&[f32]>, k: usize, n: usize) {
        assert!(w_stride >= n && (k == 0 || w.len() >= (k - 1) * w_stride + n), "weight matrix is not [{k}, {n}]");
        let k_stride = k.div_ceil(E::K_ALIGN) * E::K_ALIGN;
        let n_stride = n.div_ceil(PANEL) * PANEL;
        (self.k, self.k_stride, self.n, self.n_stride) = (k, k_stride, n, n_stride);
        self.data.clear();
        self.data.resize(k_stride * n_stride, E::default());
        let groups = k_stride / E::K_STEP;
        for panel in 0..n_stride / PANEL {
            let cols = n.saturating_sub(panel * PANEL).min(PANEL);
            for row in 0..k {
                let (group, lane) = (row / E::K_STEP, row % E::K_STEP);
                let src = &w[row * w_stride + panel * PANEL..][..cols];
                let dst = &mut self.data[(panel * groups + group) * PANEL * E::K_STEP..][..PANEL * E::K_STEP];
                if E::K_STEP == 1 {
                    // f32: a panel row is a run of the source row.
                    dst[..cols].iter_mut().zip(src).for_each(|(d, &s)| *d = E::from_f32(s));
                } else {
                    src.iter().enumerate().for_each(|(c, &s)| dst[c * E::K_STEP + lane] = E::from_f32(s));
                }
            }
        }
        self.bias.clear();
        match bias {
            Some(bias) => {
                assert_eq!(bias.len(), n, "bias is not [{n}]");
                self.bias.extend_from_slice(bias);
            }
            None => self.bias.resize(n, 0.0),
        }
        self.bias.resize(n_stride, 0.0);
    }

    /// The packed values of panel `p`: `k_stride · PANEL` of them.
    pub(super) fn panel(&self, p: usize) -> &[E] {
        let len = self.k_stride * PANEL;
        &self.data[p * len..(p + 1) * len]
    }
}

/// The micro-kernel family a CPU runs, chosen once at run time; ordered as
/// a ladder (a CPU with a family has every one before it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    /// Plain Rust loops (any CPU, wasm included).
    Portable,
    /// AVX2 with FMA for f32 (x86 without AVX-512); bf16 runs the portable
    /// loops, widened to f32.
    Avx2,
    /// AVX-512 FMA for f32; bf16 is widened to f32 (no `vdpbf16ps`).
    Avx512,
    /// AVX-512 with AVX512-BF16 (`vdpbf16ps`).
    Avx512Bf16,
    /// AVX-512 with AMX-BF16 tiles for the bf16 products (`tdpbf16ps`,
    /// Linux only: the process asks the OS for the tile state).
    Amx,
}

impl Isa {
    /// The family the matrix-product kernels run (here and in the fused
    /// training stack): the best this CPU supports, or the one
    /// `RGFLOW_CPU_KERNELS` names (`portable`, `avx2`, `avx512`,
    /// `avx512bf16`, `amx`: to compare kernel families in one binary, as PyTorch's
    /// `ATEN_CPU_CAPABILITY` does). Read once per process; programs call
    /// [`Self::chosen`] at start to report a bad value as an error.
    ///
    /// # Panics
    /// If `RGFLOW_CPU_KERNELS` names an unknown family or one this CPU lacks.
    pub fn detect() -> Self {
        Self::chosen().unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Self::detect`], or why `RGFLOW_CPU_KERNELS` cannot be followed.
    pub fn chosen() -> Result<Self, String> {
        static CHOSEN: std::sync::OnceLock<Result<Isa, String>> = std::sync::OnceLock::new();
        CHOSEN
            .get_or_init(|| {
                let best = Self::best();
                let Ok(name) = std::env::var("RGFLOW_CPU_KERNELS") else { return Ok(best) };
                let supported = Self::supported_below(best);
                let wanted = name.trim().to_lowercase();
                supported.iter().copied().find(|isa| isa.name() == wanted).ok_or_else(|| {
                    let names: Vec<&str> = supported.iter().map(|isa| isa.name()).collect();
                    format!("RGFLOW_CPU_KERNELS={name}: this CPU runs {}", names.join(", "))
                })
            })
            .clone()
    }

    /// The best family this CPU supports.
    fn best() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                if std::arch::is_x86_feature_detected!("avx512bf16") {
                    if std::arch::is_x86_feature_detected!("avx512bw") && super::amx::available() {
                        return Isa::Amx;
                    }
                    return Isa::Avx512Bf16;
                }
                return Isa::Avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                return Isa::Avx2;
            }
        }
        Isa::Portable
    }

    /// The family's name in `RGFLOW_CPU_KERNELS`.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Portable => "portable",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
            Isa::Avx512Bf16 => "avx512bf16",
            Isa::Amx => "amx",
        }
    }

    /// Every family the kernels may run (up to [`Self::detect`]'s), the
    /// portable loops first (the tests compare them).
    pub fn supported() -> Vec<Self> {
        Self::supported_below(Self::detect())
    }

    /// Each family's CPUs run every family before it in the ladder.
    fn supported_below(best: Self) -> Vec<Self> {
        [Isa::Portable, Isa::Avx2, Isa::Avx512, Isa::Avx512Bf16, Isa::Amx]
            .into_iter()
            .filter(|&isa| isa <= best)
            .collect()
    }

    /// Whether the CPU multiplies bf16 natively (AVX512-BF16 or AMX).
    pub fn native_bf16(self) -> bool {
        self >= Isa::Avx512Bf16
    }
}

/// The Swish's backward on a tile of the training stack
/// ([`TileKernels::swish_backward`]): with `u = input[r, j]` and `σ = σ(β
/// u)`, it writes `activation: [R, K] = u σ`, turns `grad[r, j]` (the
/// output's gradient) into u's, `grad · (σ + β u σ(1 − σ))`, and sums `grad
/// · u² σ(1 − σ)` into `grad_beta: [K]`. `K = β.len()`; rows of `input` and
/// `grad` are their strides apart (each at least `K`).
pub(crate) struct SwishBackward<'a> {
    pub input: &'a [f32],
    pub input_stride: usize,
    pub beta: &'a [f32],
    pub grad: &'a mut [f32],
    pub grad_stride: usize,
    pub activation: &'a mut [f32],
    pub grad_beta: &'a mut [f32],
}

/// Operand types with a matrix product (and the Swish that makes its
/// operand, `swish.rs`) per [`Isa`].
pub trait TileKernels: Operand {
    /// `out[i, j] = bias[j] + Σ_k a[i, k] · w[k, j]` for `i < rows`, every
    /// `j < w.n_stride`: `a` is `[rows, w.k_stride]` (padding columns zero),
    /// `out` is `[rows, w.n_stride]`. Any `rows`: groups of [`MR`] run the
    /// full micro-kernel and the rest a narrower one with the same
    /// arithmetic, so each row's values are the same bits whatever rows
    /// share its call.
    fn matmul(isa: Isa, a: &[Self], w: &PackedMatrix<Self>, rows: usize, out: &mut [f32]) {
        Self::matmul_ahead(isa, a, w, rows, out, Prefetch::none());
    }

    /// [`Self::matmul`], asking the caches for `ahead` (what the caller reads
    /// next) a few lines per micro-tile on the way: the training backward
    /// reads its tape from far caches or memory, and spread over a product
    /// the requests wait while it computes (asked all at once, they stall
    /// the core on its few outstanding misses).
    fn matmul_ahead(isa: Isa, a: &[Self], w: &PackedMatrix<Self>, rows: usize, out: &mut [f32], ahead: Prefetch);

    /// `operand[r, j] = swish(h[r, j])` for the `β.len()` columns, padding
    /// columns zero: `h: [R, h_stride]`, `operand: [R, k_stride]`.
    fn swish(isa: Isa, h: &[f32], h_stride: usize, beta: &[f32], operand: &mut [Self], k_stride: usize) {
        let _ = isa;
        super::swish::swish_rows(h, h_stride, beta, operand, k_stride);
    }

    /// The Swish's backward on a tile of the training stack (see
    /// [`SwishBackward`]): on AVX-512 a kernel without a division (degree-6
    /// `exp`, a Newton-refined reciprocal estimate; within 2e-6 of the
    /// exact one, `fast_swish_backward_matches_the_exact_one`, f32
    /// rounding's own size), elsewhere the exact one. The exact kernel was
    /// 7 % of an f32 training step on a Zen 4.
    fn swish_backward(isa: Isa, tile: SwishBackward<'_>) {
        match isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `Isa::detect` found AVX-512F; the kernel checks the shapes.
            Isa::Avx512 | Isa::Avx512Bf16 | Isa::Amx => unsafe { super::swish::avx512::swish_backward_rows_fast(tile) },
            _ => crate::kernels::cpu::stack::swish_backward_rows(tile),
        }
    }

    /// Whether the training stack runs each residual block's layers again
    /// in its backward instead of keeping their pre-activations on the
    /// tape: where products are cheap next to the memory traffic of the
    /// tape (bf16 on AMX). Same values either way.
    fn recomputes(isa: Isa) -> bool {
        let _ = isa;
        false
    }
}

/// The mask of a vector's first `n` of 16 lanes (all of them from 16 on):
/// the tails of the AVX-512 kernels' loads and stores.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(super) const fn first_lanes_16(n: usize) -> u16 {
    if n >= 16 { u16::MAX } else { (1u16 << n) - 1 }
}

/// [`first_lanes_16`] over 32 lanes (16-bit elements, or two f32 vectors).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(super) const fn first_lanes_32(n: usize) -> u32 {
    if n >= 32 { u32::MAX } else { (1u32 << n) - 1 }
}

/// The shapes [`TileKernels::swish`]'s vector kernels rely on: rows of at
/// least `β.len()` values on both sides, as many of `operand` as of `h`.
fn check_swish<E>(h: &[f32], h_stride: usize, beta: &[f32], operand: &[E], k_stride: usize) {
    let k = beta.len();
    assert!(
        h_stride >= k && k_stride >= k && h.len() / h_stride == operand.len() / k_stride,
        "swish: mismatched shapes"
    );
}

impl TileKernels for f32 {
    fn matmul_ahead(isa: Isa, a: &[f32], w: &PackedMatrix<f32>, rows: usize, out: &mut [f32], ahead: Prefetch) {
        check(a, w, rows, out);
        match isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `Isa::detect` found AVX-512F; the slices were checked above.
            Isa::Avx512 | Isa::Avx512Bf16 | Isa::Amx => unsafe { avx512::matmul_f32(a, w, rows, out, ahead) },
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => {
                ahead.all();
                // SAFETY: `Isa::detect` found AVX2 and FMA; the slices were checked above.
                unsafe { avx2::matmul_f32(a, w, rows, out) }
            }
            _ => {
                ahead.all();
                portable_matmul(a, w, rows, out)
            }
        }
    }

    /// On AVX-512 without a division (within 2e-6 of the exact kernel; the
    /// σ the training backward recomputes, so the weight gradients see the
    /// operand the forward multiplied). The exact kernel was 4 % of an f32
    /// training step on a Zen 4, its `vdivps` most of it.
    fn swish(isa: Isa, h: &[f32], h_stride: usize, beta: &[f32], operand: &mut [f32], k_stride: usize) {
        check_swish(h, h_stride, beta, operand, k_stride);
        match isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `Isa::detect` found AVX-512F; shapes checked above.
            Isa::Avx512 | Isa::Avx512Bf16 | Isa::Amx => unsafe {
                super::swish::avx512::swish_rows_f32_fast(h, h_stride, beta, operand, k_stride)
            },
            _ => super::swish::swish_rows(h, h_stride, beta, operand, k_stride),
        }
    }
}

impl TileKernels for Bf16 {
    fn matmul_ahead(isa: Isa, a: &[Bf16], w: &PackedMatrix<Bf16>, rows: usize, out: &mut [f32], ahead: Prefetch) {
        check(a, w, rows, out);
        match isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `Isa::detect` found AVX512-BF16; the slices were checked above.
            Isa::Avx512Bf16 => unsafe { avx512::matmul_bf16(a, w, rows, out, ahead) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `Isa::detect` found AMX-BF16 and the OS granted it; `w`'s
            // inner size is a multiple of a tile row (`K_ALIGN`); the slices
            // were checked above.
            Isa::Amx => unsafe { super::amx::matmul_bf16(a, w, rows, out, ahead) },
            _ => {
                ahead.all();
                portable_matmul(a, w, rows, out)
            }
        }
    }

    fn swish(isa: Isa, h: &[f32], h_stride: usize, beta: &[f32], operand: &mut [Bf16], k_stride: usize) {
        check_swish(h, h_stride, beta, operand, k_stride);
        match isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `Isa::detect` found AVX512-BF16 (with F and BW); shapes checked above.
            Isa::Avx512Bf16 | Isa::Amx => unsafe {
                super::swish::avx512::swish_rows_bf16(h, h_stride, beta, operand, k_stride)
            },
            _ => super::swish::swish_rows(h, h_stride, beta, operand, k_stride),
        }
    }

    /// On AMX: 318 against 260 images/s at the bench config (in f32, where
    /// products are the bottleneck, running the blocks again cost 6%).
    fn recomputes(isa: Isa) -> bool {
        isa == Isa::Amx
    }
}

/// `c[i, j] += Σ_r a[r, i] · b[r, j]` for `i < k`, `j < n`: the product
/// `aᵀ · b` of two row-major tiles, `a: [rows, a_stride]` and `b: [rows,
/// b_stride]`, summed into `c: [k, c_stride]` (a weight gradient, with the
/// tile's rows as the inner dimension). Neither operand is packed or
/// transposed: the micro-kernel broadcasts 8 values of a row of `a` and
/// loads 32 of the same row of `b`.
#[allow(clippy::too_many_arguments)]
pub fn outer_accumulate(
    isa: Isa,
    (a, a_stride): (&[f32], usize),
    (b, b_stride): (&[f32], usize),
    [rows, k, n]: [usize; 3],
    (c, c_stride): (&mut [f32], usize),
) {
    assert!(a_stride >= k && b_stride >= n && c_stride >= n, "outer_accumulate: strides below widths");
    assert!(rows == 0 || (a.len() >= (rows - 1) * a_stride + k && b.len() >= (rows - 1) * b_stride + n));
    assert!(k == 0 || c.len() >= (k - 1) * c_stride + n, "outer_accumulate: output shorter than [{k}, {n}]");
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 | Isa::Avx512Bf16 | Isa::Amx => {
            let full = k / MR * MR;
            // SAFETY: AVX-512F was detected (`isa`); the bounds were checked
            // above and the kernel stays inside rows `0..full` of `c`.
            unsafe { avx512::outer_f32((a, a_stride), (b, b_stride), [rows, full, n], (c, c_stride)) };
            portable_outer((a, a_stride), (b, b_stride), (rows, full..k, n), (c, c_stride));
        }
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX2 and FMA were detected (`isa`); the bounds were checked above.
        Isa::Avx2 => unsafe { avx2::outer_f32((a, a_stride), (b, b_stride), [rows, k, n], (c, c_stride)) },
        _ => portable_outer((a, a_stride), (b, b_stride), (rows, 0..k, n), (c, c_stride)),
    }
}

/// [`outer_accumulate`] with the operands rounded to bf16 and multiplied
/// by `vdpbf16ps` (f32 accumulation), two rows of the tile per step: both
/// tiles are first interleaved by row pairs into `pairs` (`[rows/2, k, 2]`
/// and `[rows/2, n, 2]`). Needs AVX512-BF16 ([`Isa::native_bf16`]); rows of
/// `c` past the last multiple of [`MR`] are summed in f32. With [`Isa::Amx`]
/// AMX tiles multiply every row (`pairs` then holds `aᵀ` and `b`'s pairs).
pub fn outer_accumulate_bf16(
    isa: Isa,
    (a, k): (&[f32], usize),
    (b, n): (&[f32], usize),
    rows: usize,
    (c, c_stride): (&mut [f32], usize),
    pairs: &mut (Vec<Bf16>, Vec<Bf16>),
) {
    assert!(isa.native_bf16(), "bf16 outer products need AVX512-BF16");
    assert!(a.len() >= rows * k && b.len() >= rows * n && c_stride >= n, "outer_accumulate_bf16: shapes");
    assert!(k == 0 || c.len() >= (k - 1) * c_stride + n, "outer_accumulate_bf16: output shorter than [{k}, {n}]");
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Amx {
        // SAFETY: AMX (with AVX-512 BW and BF16) was detected (`isa`); the
        // shapes were checked above.
        unsafe { super::amx::outer_bf16((a, k), (b, n), rows, (c, c_stride), pairs) };
        return;
    }
    let interleave = |src: &[f32], width: usize, out: &mut Vec<Bf16>| {
        out.resize(rows.div_ceil(2) * width * 2, Bf16::default());
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX512-BF16 was detected (asserted above); `src` holds
        // `rows` rows of `width` values (checked above) and `out` their pairs.
        unsafe {
            avx512::interleave_pairs_bf16(src, rows, width, out)
        };
        #[cfg(not(target_arch = "x86_64"))]
        interleave_pairs(src, rows, width, out);
    };
    interleave(a, k, &mut pairs.0);
    interleave(b, n, &mut pairs.1);
    let full = k / MR * MR;
    #[cfg(target_arch = "x86_64")]
    // SAFETY: AVX512-BF16 was detected (asserted above); the pair buffers
    // hold `rows/2` rounded up pairs of `k` and `n` columns, and `c` holds
    // rows `0..full` of `n` values at `c_stride` (checked above).
    unsafe {
        avx512::outer_bf16(&pairs.0, &pairs.1, [rows.div_ceil(2), full, k, n], (c, c_stride))
    };
    portable_outer((a, k), (b, n), (rows, full..k, n), (c, c_stride));
}

/// `out: [⌈rows/2⌉, width, 2]` ← the rows of `src: [rows, width]` rounded to
/// bf16 and interleaved by pairs (an odd last row pairs with zeros), in plain
/// loops: the reference of `avx512::interleave_pairs_bf16`.
#[cfg(any(test, not(target_arch = "x86_64")))]
fn interleave_pairs(src: &[f32], rows: usize, width: usize, out: &mut [Bf16]) {
    for (p, dst) in out.chunks_exact_mut(width * 2).take(rows.div_ceil(2)).enumerate() {
        let first = &src[2 * p * width..][..width];
        let second = (2 * p + 1 < rows).then(|| &src[(2 * p + 1) * width..][..width]);
        for (j, (d, &x0)) in dst.chunks_exact_mut(2).zip(first).enumerate() {
            d[0] = Bf16::from_f32(x0);
            d[1] = second.map_or(Bf16::default(), |second| Bf16::from_f32(second[j]));
        }
    }
}

/// [`outer_accumulate`] over the rows `i ∈ range` of `c`, in plain loops.
#[multiversion::multiversion(targets("x86_64+avx2+fma"))]
fn portable_outer(
    (a, a_stride): (&[f32], usize),
    (b, b_stride): (&[f32], usize),
    (rows, range, n): (usize, std::ops::Range<usize>, usize),
    (c, c_stride): (&mut [f32], usize),
) {
    for i in range {
        let c_row = &mut c[i * c_stride..i * c_stride + n];
        for r in 0..rows {
            let x = a[r * a_stride + i];
            c_row.iter_mut().zip(&b[r * b_stride..r * b_stride + n]).for_each(|(c, &b)| *c += x * b);
        }
    }
}

/// The tile kernel's rate on one thread: GFLOP/s of `[rows, k] × [k, n]`
/// products with everything in cache, timed for about `seconds`.
pub fn tile_gflops<E: TileKernels>(isa: Isa, [rows, k, n]: [usize; 3], seconds: f64) -> f64 {
    let w: Vec<f32> = (0..k * n).map(|i| (i % 7) as f32 * 0.1).collect();
    let packed = PackedMatrix::<E>::new(&w, &vec![0.5; n], k, n);
    let a = vec![E::from_f32(0.3); rows * packed.k_stride];
    let mut out = vec![0.0; rows * packed.n_stride];
    let start = std::time::Instant::now();
    let mut products = 0usize;
    while products < 100 || start.elapsed().as_secs_f64() < seconds {
        for _ in 0..100 {
            E::matmul(isa, &a, &packed, rows, &mut out);
        }
        products += 100;
    }
    2.0 * (rows * k * packed.n_stride * products) as f64 / start.elapsed().as_secs_f64() / 1e9
}

/// The machine's matrix-product roof: [`tile_gflops`] of the model's
/// typical tile (`[64, 128] × [128, 128]`) on every thread of the pool at
/// once, summed. A workload made only of these products cannot beat it.
pub fn machine_gflops<E: TileKernels>(seconds: f64) -> f64 {
    let isa = Isa::detect();
    #[cfg(feature = "parallel")]
    {
        use rayon::prelude::*;
        let threads = rayon::current_num_threads();
        (0..threads).into_par_iter().map(|_| tile_gflops::<E>(isa, [64, 128, 128], seconds)).sum()
    }
    #[cfg(not(feature = "parallel"))]
    tile_gflops::<E>(isa, [64, 128, 128], seconds)
}

/// Memory asked for ahead of use, a few cache lines at a time
/// ([`TileKernels::matmul_ahead`]).
pub(crate) struct Prefetch {
    at: *const u8,
    end: *const u8,
}

impl Prefetch {
    /// Bytes per cache line.
    const LINE: usize = 64;

    /// Nothing to ask for.
    pub(crate) fn none() -> Self {
        Self { at: std::ptr::null(), end: std::ptr::null() }
    }

    /// Every line of `data`.
    pub(crate) fn of<T>(data: &[T]) -> Self {
        let range = data.as_ptr_range();
        Self { at: range.start.cast(), end: range.end.cast() }
    }

    /// Lines left to ask for.
    pub(super) fn lines(&self) -> usize {
        (self.end as usize - self.at as usize).div_ceil(Self::LINE)
    }

    /// Asks for the next `lines` lines (fewer at the end), into L2.
    #[inline]
    pub(super) fn next(&mut self, lines: usize) {
        for _ in 0..lines.min(self.lines()) {
            #[cfg(target_arch = "x86_64")]
            {
                use std::arch::x86_64::{_MM_HINT_T1, _mm_prefetch};
                // SAFETY: a prefetch is a hint: it never faults or writes, and
                // the address is inside the slice `of` was given.
                unsafe { _mm_prefetch::<_MM_HINT_T1>(self.at.cast()) };
            }
            self.at = self.at.wrapping_add(Self::LINE);
        }
    }

    /// Asks for everything left.
    pub(super) fn all(mut self) {
        self.next(usize::MAX);
    }
}

fn check<E: Operand>(a: &[E], w: &PackedMatrix<E>, rows: usize, out: &mut [f32]) {
    assert!(a.len() >= rows * w.k_stride, "left operand shorter than [{rows}, {}]", w.k_stride);
    assert!(out.len() >= rows * w.n_stride, "output shorter than [{rows}, {}]", w.n_stride);
}

/// Any CPU: one panel row of accumulators per output row, which the
/// compiler keeps in vector registers (compiled for AVX2 + FMA too, for x86
/// CPUs without AVX-512).
#[multiversion::multiversion(targets("x86_64+avx2+fma"))]
fn portable_matmul<E: Operand>(a: &[E], w: &PackedMatrix<E>, rows: usize, out: &mut [f32]) {
    let (ks, groups) = (w.k_stride, w.k_stride / E::K_STEP);
    for p in 0..w.n_stride / PANEL {
        let panel = w.panel(p);
        let bias = &w.bias[p * PANEL..(p + 1) * PANEL];
        for i in 0..rows {
            let mut acc = [0.0f32; PANEL];
            acc.copy_from_slice(bias);
            let a_row = &a[i * ks..(i + 1) * ks];
            for g in 0..groups {
                let w_group = &panel[g * PANEL * E::K_STEP..(g + 1) * PANEL * E::K_STEP];
                for lane in 0..E::K_STEP {
                    let x = a_row[g * E::K_STEP + lane].to_f32();
                    for c in 0..PANEL {
                        acc[c] += x * w_group[c * E::K_STEP + lane].to_f32();
                    }
                }
            }
            out[i * w.n_stride + p * PANEL..][..PANEL].copy_from_slice(&acc);
        }
    }
}

/// Calls `$kernel::<R>` for the `$rest` rows a micro-kernel's row groups
/// leave over, `R` one of the listed counts (each a const instance, so its
/// accumulators are registers).
#[cfg(target_arch = "x86_64")]
macro_rules! few_rows {
    ($rest:expr, $kernel:ident, $args:tt, [$($r:literal),+]) => {
        match $rest {
            $($r => $kernel::<$r> $args,)+
            rest => unreachable!("{rest} rows left over"),
        }
    };
}

/// The f32 kernels for x86 CPUs with AVX2 and FMA but not AVX-512: 16
/// vector registers of 8 lanes, so a micro-tile is [`avx2::ROWS`] rows ×
/// half a panel (16 columns): 12 accumulators, two weight vectors and a
/// broadcast. Each row's arithmetic is the same whatever rows share its
/// micro-tile (the bias, then one FMA per input in order).
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{PANEL, PackedMatrix};

    /// Rows per micro-tile.
    pub(super) const ROWS: usize = 6;
    /// Columns per micro-tile: two vectors.
    const COLS: usize = 16;

    /// `out = a · w + bias` (see `TileKernels::matmul`): row groups of
    /// [`ROWS`] (the remainder by a narrower tile) by half panels; a half
    /// panel of padding columns only (an output width of 48 pads to 64) is
    /// written as zeros without multiplying.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA; `a` holds `rows · w.k_stride` values and
    /// `out` `rows · w.n_stride`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn matmul_f32(a: &[f32], w: &PackedMatrix<f32>, rows: usize, out: &mut [f32]) {
        let (k, n_stride) = (w.k_stride, w.n_stride);
        // Half panels holding real columns; the rest are padding only (zero
        // weights and bias), written as zeros.
        let halves = w.n.div_ceil(COLS);
        for row in out.chunks_exact_mut(n_stride).take(rows) {
            row[halves * COLS..].fill(0.0);
        }
        let (a, out) = (a.as_ptr(), out.as_mut_ptr());
        // Row groups outside, half panels inside: a group's rows of `a` stay
        // in L1 while the weights stream from L2 (a 64-row tile of 128
        // inputs alone would fill L1).
        for i0 in (0..rows).step_by(ROWS) {
            let (a, out) = (a.wrapping_add(i0 * k), out.wrapping_add(i0 * n_stride));
            for h in 0..halves {
                let (p, half) = (h * COLS / PANEL, h * COLS % PANEL);
                let panel = w.panel(p).as_ptr().wrapping_add(half);
                let bias = w.bias[h * COLS..].as_ptr();
                let out = out.wrapping_add(h * COLS);
                // SAFETY: rows `i0..` of `a` and `out` (the caller's contract),
                // 16 columns of a panel holding `k · PANEL`.
                unsafe {
                    match rows - i0 {
                        ROWS.. => tile::<ROWS>(a, k, panel, bias, out, n_stride),
                        rest => few_rows!(rest, tile, (a, k, panel, bias, out, n_stride), [1, 2, 3, 4, 5]),
                    }
                }
            }
        }
    }

    /// `R` rows × 16 columns of a panel: `a` rows `k` apart, `panel` rows
    /// [`PANEL`] apart, `out` rows `n_stride` apart.
    ///
    /// # Safety
    /// AVX2 and FMA; `a` holds `R` rows of `k` values, `panel` `k` rows of
    /// 16, `bias` 16, `out` `R` writable rows of 16.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn tile<const R: usize>(
        a: *const f32,
        k: usize,
        panel: *const f32,
        bias: *const f32,
        out: *mut f32,
        n_stride: usize,
    ) {
        // SAFETY: the caller's contract covers every pointer read and written.
        unsafe {
            let (b0, b1) = (_mm256_loadu_ps(bias), _mm256_loadu_ps(bias.wrapping_add(8)));
            let (mut acc0, mut acc1) = ([b0; R], [b1; R]);
            let (mut a_col, mut w_row) = (a, panel);
            for _ in 0..k {
                let w0 = _mm256_loadu_ps(w_row);
                let w1 = _mm256_loadu_ps(w_row.wrapping_add(8));
                for i in 0..R {
                    let x = _mm256_broadcast_ss(&*a_col.wrapping_add(i * k));
                    acc0[i] = _mm256_fmadd_ps(x, w0, acc0[i]);
                    acc1[i] = _mm256_fmadd_ps(x, w1, acc1[i]);
                }
                a_col = a_col.wrapping_add(1);
                w_row = w_row.wrapping_add(PANEL);
            }
            for i in 0..R {
                _mm256_storeu_ps(out.wrapping_add(i * n_stride), acc0[i]);
                _mm256_storeu_ps(out.wrapping_add(i * n_stride + 8), acc1[i]);
            }
        }
    }

    /// Lane masks of a micro-tile's two vectors when only its first `cols`
    /// (≤ 16) columns are real.
    #[target_feature(enable = "avx2")]
    fn masks(cols: usize) -> (__m256i, __m256i) {
        let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        let below = |n: usize| _mm256_cmpgt_epi32(_mm256_set1_epi32(n.min(8) as i32), lanes);
        (below(cols), below(cols.saturating_sub(8)))
    }

    /// `c[i, j] += Σ_r a[r, i] · b[r, j]` for `i < k`, `j < n` (see
    /// `outer_accumulate`): micro-tiles of [`ROWS`] values of `i` × 16 of
    /// `j`, each summing over every row `r` before adding to `c`.
    ///
    /// # Safety
    /// AVX2 and FMA; `a` and `b` hold `rows` rows of `k` and `n` values at
    /// their strides, `c` `k` writable rows of `n` at `c_stride`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn outer_f32(
        (a, a_stride): (&[f32], usize),
        (b, b_stride): (&[f32], usize),
        [rows, k, n]: [usize; 3],
        (c, c_stride): (&mut [f32], usize),
    ) {
        let (full, rest) = (k - k % ROWS, k % ROWS);
        for j0 in (0..n).step_by(COLS) {
            let masks = masks((n - j0).min(COLS));
            let (a, b, c) = (a.as_ptr(), b.as_ptr().wrapping_add(j0), c.as_mut_ptr());
            let at = |i: usize| (a.wrapping_add(i), c.wrapping_add(i * c_stride + j0));
            for i0 in (0..full).step_by(ROWS) {
                let (a, c) = at(i0);
                // SAFETY: columns `i0..i0 + ROWS` of `a`, the masked columns
                // from `j0` of `b`, rows `i0..` of `c` (the caller's contract).
                unsafe { outer_tile::<ROWS>((a, a_stride), (b, b_stride), rows, (c, c_stride), masks) };
            }
            if rest > 0 {
                let (a, c) = at(full);
                // SAFETY: as above, for `i` in `full..k`.
                unsafe {
                    few_rows!(
                        rest,
                        outer_tile,
                        ((a, a_stride), (b, b_stride), rows, (c, c_stride), masks),
                        [1, 2, 3, 4, 5]
                    )
                };
            }
        }
    }

    /// `R` values of `i` × the masked columns of 16 of [`outer_f32`].
    ///
    /// # Safety
    /// AVX2 and FMA; `a` holds `rows` rows of `R` values `a_stride` apart,
    /// `b` `rows` rows of the masked columns, `c` `R` writable rows of them.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn outer_tile<const R: usize>(
        (a, a_stride): (*const f32, usize),
        (b, b_stride): (*const f32, usize),
        rows: usize,
        (c, c_stride): (*mut f32, usize),
        (m0, m1): (__m256i, __m256i),
    ) {
        // SAFETY: the caller's contract; masked lanes are neither read nor
        // written (`vmaskmovps` does not touch them; with every lane set the
        // plain moves touch the same memory).
        unsafe {
            let zero = _mm256_setzero_ps();
            let (mut acc0, mut acc1) = ([zero; R], [zero; R]);
            let (mut a_row, mut b_row) = (a, b);
            // Masked moves only where columns are missing: they cost several
            // times a plain one (a masked store most).
            let full = _mm256_testc_si256(m1, _mm256_set1_epi32(-1)) != 0;
            for _ in 0..rows {
                let (b0, b1) = if full {
                    (_mm256_loadu_ps(b_row), _mm256_loadu_ps(b_row.wrapping_add(8)))
                } else {
                    (_mm256_maskload_ps(b_row, m0), _mm256_maskload_ps(b_row.wrapping_add(8), m1))
                };
                for i in 0..R {
                    let x = _mm256_broadcast_ss(&*a_row.wrapping_add(i));
                    acc0[i] = _mm256_fmadd_ps(x, b0, acc0[i]);
                    acc1[i] = _mm256_fmadd_ps(x, b1, acc1[i]);
                }
                a_row = a_row.wrapping_add(a_stride);
                b_row = b_row.wrapping_add(b_stride);
            }
            for i in 0..R {
                let at = c.wrapping_add(i * c_stride);
                if full {
                    _mm256_storeu_ps(at, _mm256_add_ps(_mm256_loadu_ps(at), acc0[i]));
                    _mm256_storeu_ps(at.wrapping_add(8), _mm256_add_ps(_mm256_loadu_ps(at.wrapping_add(8)), acc1[i]));
                } else {
                    let c0 = _mm256_maskload_ps(at, m0);
                    _mm256_maskstore_ps(at, m0, _mm256_add_ps(c0, acc0[i]));
                    let c1 = _mm256_maskload_ps(at.wrapping_add(8), m1);
                    _mm256_maskstore_ps(at.wrapping_add(8), m1, _mm256_add_ps(c1, acc1[i]));
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{Bf16, MR, PANEL, PackedMatrix, Prefetch};

    /// Runs `$body` once per row of a micro-tile with `$i` a constant
    /// (`0..MR`), so the accumulator arrays become registers whatever the
    /// optimisation level.
    macro_rules! each_row {
        ($i:ident => $body:block) => {{
            const _: () = assert!(MR == 8);
            {
                const $i: usize = 0;
                $body
            }
            {
                const $i: usize = 1;
                $body
            }
            {
                const $i: usize = 2;
                $body
            }
            {
                const $i: usize = 3;
                $body
            }
            {
                const $i: usize = 4;
                $body
            }
            {
                const $i: usize = 5;
                $body
            }
            {
                const $i: usize = 6;
                $body
            }
            {
                const $i: usize = 7;
                $body
            }
        }};
    }

    // The loops below step raw pointers with `wrapping_add` and load through
    // intrinsics only: our dev profile keeps debug assertions, whose checks
    // in `ptr::add` / `read_unaligned` would otherwise sit in the hot loop.

    /// f32: per step, two weight vectors and one broadcast per row.
    ///
    /// # Safety
    /// The CPU has AVX-512 F; `a` holds `rows · w.k_stride` values and `out`
    /// `rows · w.n_stride` (`matmul` checks both).
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn matmul_f32(
        a: &[f32],
        w: &PackedMatrix<f32>,
        rows: usize,
        out: &mut [f32],
        mut ahead: Prefetch,
    ) {
        let (k, n_stride) = (w.k_stride, w.n_stride);
        let (full, rest) = (rows - rows % MR, rows % MR);
        // `ahead`'s lines spread evenly over the micro-tiles.
        let per_tile = ahead.lines().div_ceil((n_stride / PANEL * full / MR).max(1));
        for p in 0..n_stride / PANEL {
            let panel = w.panel(p).as_ptr();
            let bias = &w.bias[p * PANEL..(p + 1) * PANEL];
            if rest > 0 {
                let a = a.as_ptr().wrapping_add(full * k);
                let out = out.as_mut_ptr().wrapping_add(full * n_stride + p * PANEL);
                // SAFETY: rows `full..rows` of `a` and `out`, checked by `matmul`.
                unsafe {
                    few_rows!(rest, rows_f32, (a, k, panel, bias.as_ptr(), out, n_stride), [1, 2, 3, 4, 5, 6, 7])
                };
            }
            // A layer 48 wide ends in a panel whose second half is padding:
            // its zeros are written without multiplying (a quarter of such
            // a layer's multiply-adds).
            let half = w.n <= p * PANEL + 16;
            for i0 in (0..full).step_by(MR) {
                let args = (a.as_ptr().wrapping_add(i0 * k), k, panel, bias.as_ptr());
                let out_tile = out.as_mut_ptr().wrapping_add(i0 * n_stride + p * PANEL);
                // SAFETY: `matmul` checked that `a` holds `rows · k` values
                // and `out` `rows · n_stride`; a panel holds `k · PANEL`.
                unsafe {
                    if half {
                        tile_f32::<true>(args, (out_tile, n_stride));
                    } else {
                        tile_f32::<false>(args, (out_tile, n_stride));
                    }
                }
                ahead.next(per_tile);
            }
        }
        // What a product without full micro-tiles left.
        ahead.all();
    }

    /// One micro-tile of [`matmul_f32`], [`MR`] rows × a panel; with `HALF`
    /// the panel's second half is padding, written as the zeros a full
    /// tile gives (zero weights and bias) without multiplying. A computed
    /// value is the same sum in the same order either way.
    ///
    /// # Safety
    /// `a` must hold [`MR`] rows of `k` values, `panel` `k · PANEL` values,
    /// `bias` `PANEL`, and `out` [`MR`] writable rows of `PANEL` values,
    /// `n_stride` apart.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn tile_f32<const HALF: bool>(
        (a, k, panel, bias): (*const f32, usize, *const f32, *const f32),
        (out, n_stride): (*mut f32, usize),
    ) {
        // SAFETY: the caller's contract covers every pointer read and written.
        unsafe {
            let (mut acc0, mut acc1) = ([_mm512_loadu_ps(bias); MR], [_mm512_loadu_ps(bias.wrapping_add(16)); MR]);
            let (mut a_col, mut w_row) = (a, panel);
            for _ in 0..k {
                let w0 = _mm512_loadu_ps(w_row);
                let w1 = _mm512_loadu_ps(w_row.wrapping_add(16));
                each_row!(I => {
                    let x = _mm512_set1_ps(_mm_cvtss_f32(_mm_load_ss(a_col.wrapping_add(I * k))));
                    acc0[I] = _mm512_fmadd_ps(x, w0, acc0[I]);
                    if !HALF {
                        acc1[I] = _mm512_fmadd_ps(x, w1, acc1[I]);
                    }
                });
                a_col = a_col.wrapping_add(1);
                w_row = w_row.wrapping_add(PANEL);
            }
            each_row!(I => {
                let row = out.wrapping_add(I * n_stride);
                _mm512_storeu_ps(row, acc0[I]);
                _mm512_storeu_ps(row.wrapping_add(16), if HALF { _mm512_setzero_ps() } else { acc1[I] });
            });
        }
    }

    /// bf16: per step, two vectors of 16 column pairs and one broadcast row
    /// pair per row; `vdpbf16ps` adds both products of a pair to each f32
    /// accumulator.
    ///
    /// # Safety
    /// The CPU has AVX-512 F and BF16; `a` holds `rows · w.k_stride` bf16
    /// values and `out` `rows · w.n_stride` (`matmul` checks both).
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn matmul_bf16(
        a: &[Bf16],
        w: &PackedMatrix<Bf16>,
        rows: usize,
        out: &mut [f32],
        mut ahead: Prefetch,
    ) {
        let (k, n_stride) = (w.k_stride, w.n_stride);
        let (full, rest) = (rows - rows % MR, rows % MR);
        // `ahead`'s lines spread evenly over the micro-tiles.
        let per_tile = ahead.lines().div_ceil((n_stride / PANEL * full / MR).max(1));
        for p in 0..n_stride / PANEL {
            let panel = w.panel(p).as_ptr();
            let bias = &w.bias[p * PANEL..(p + 1) * PANEL];
            if rest > 0 {
                let a = a.as_ptr().wrapping_add(full * k);
                let out = out.as_mut_ptr().wrapping_add(full * n_stride + p * PANEL);
                // SAFETY: rows `full..rows` of `a` and `out`, checked by `matmul`.
                unsafe {
                    few_rows!(rest, rows_bf16, (a, k, panel, bias.as_ptr(), out, n_stride), [1, 2, 3, 4, 5, 6, 7])
                };
            }
            // As in `matmul_f32`: a padding-only second half is not multiplied.
            let half = w.n <= p * PANEL + 16;
            for i0 in (0..full).step_by(MR) {
                let args = (a.as_ptr().wrapping_add(i0 * k), k, panel, bias.as_ptr());
                let out_tile = out.as_mut_ptr().wrapping_add(i0 * n_stride + p * PANEL);
                // SAFETY: as in `matmul_f32`, in pairs of bf16.
                unsafe {
                    if half {
                        tile_bf16::<true>(args, (out_tile, n_stride));
                    } else {
                        tile_bf16::<false>(args, (out_tile, n_stride));
                    }
                }
                ahead.next(per_tile);
            }
        }
        // What a product without full micro-tiles left.
        ahead.all();
    }

    /// One micro-tile of [`matmul_bf16`], as [`tile_f32`] (`HALF`: the
    /// panel's second half is padding, written as zeros).
    ///
    /// # Safety
    /// As [`tile_f32`]'s, `a` and `panel` in bf16 (`k` even).
    #[target_feature(enable = "avx512f,avx512bf16")]
    #[inline]
    unsafe fn tile_bf16<const HALF: bool>(
        (a, k, panel, bias): (*const Bf16, usize, *const Bf16, *const f32),
        (out, n_stride): (*mut f32, usize),
    ) {
        // SAFETY: the caller's contract covers every pointer read and written.
        unsafe {
            let (mut acc0, mut acc1) = ([_mm512_loadu_ps(bias); MR], [_mm512_loadu_ps(bias.wrapping_add(16)); MR]);
            // Pair g of a panel is 2 rows × 32 columns, interleaved.
            let (mut a_col, mut w_pair) = (a, panel);
            for _ in 0..k / 2 {
                let w0 = _mm512_castsi512_bh(_mm512_loadu_si512(w_pair.cast()));
                let w1 = _mm512_castsi512_bh(_mm512_loadu_si512(w_pair.wrapping_add(32).cast()));
                each_row!(I => {
                    // Inputs 2g and 2g + 1 of row I, broadcast as one 32-bit lane.
                    let pair = _mm_loadu_si32(a_col.wrapping_add(I * k).cast());
                    let x = _mm512_castsi512_bh(_mm512_broadcastd_epi32(pair));
                    acc0[I] = _mm512_dpbf16_ps(acc0[I], x, w0);
                    if !HALF {
                        acc1[I] = _mm512_dpbf16_ps(acc1[I], x, w1);
                    }
                });
                a_col = a_col.wrapping_add(2);
                w_pair = w_pair.wrapping_add(2 * PANEL);
            }
            each_row!(I => {
                let row = out.wrapping_add(I * n_stride);
                _mm512_storeu_ps(row, acc0[I]);
                _mm512_storeu_ps(row.wrapping_add(16), if HALF { _mm512_setzero_ps() } else { acc1[I] });
            });
        }
    }

    /// `R < MR` rows of one panel, with `matmul_f32`'s arithmetic step for
    /// step (bias, then one FMA per input in order), so a row's values do
    /// not depend on how many rows share its tile.
    ///
    /// # Safety
    /// `a` must hold `R` rows of `k` values, `panel` `k · PANEL` values,
    /// `bias` `PANEL`, and `out` `R` writable rows of `PANEL` values,
    /// `n_stride` apart.
    #[target_feature(enable = "avx512f")]
    unsafe fn rows_f32<const R: usize>(
        a: *const f32,
        k: usize,
        panel: *const f32,
        bias: *const f32,
        out: *mut f32,
        n_stride: usize,
    ) {
        // SAFETY: the caller's contract covers every pointer read and written.
        unsafe {
            let (b0, b1) = (_mm512_loadu_ps(bias), _mm512_loadu_ps(bias.wrapping_add(16)));
            let (mut acc0, mut acc1) = ([b0; R], [b1; R]);
            let (mut a_col, mut w_row) = (a, panel);
            for _ in 0..k {
                let w0 = _mm512_loadu_ps(w_row);
                let w1 = _mm512_loadu_ps(w_row.wrapping_add(16));
                for i in 0..R {
                    let x = _mm512_set1_ps(_mm_cvtss_f32(_mm_load_ss(a_col.wrapping_add(i * k))));
                    acc0[i] = _mm512_fmadd_ps(x, w0, acc0[i]);
                    acc1[i] = _mm512_fmadd_ps(x, w1, acc1[i]);
                }
                a_col = a_col.wrapping_add(1);
                w_row = w_row.wrapping_add(PANEL);
            }
            for i in 0..R {
                _mm512_storeu_ps(out.wrapping_add(i * n_stride), acc0[i]);
                _mm512_storeu_ps(out.wrapping_add(i * n_stride + 16), acc1[i]);
            }
        }
    }

    /// [`rows_f32`] for bf16 pairs, with `matmul_bf16`'s arithmetic.
    ///
    /// # Safety
    /// As [`rows_f32`], with `a` rows of `k` bf16 values and `panel` the
    /// pair-interleaved `k · PANEL` values.
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn rows_bf16<const R: usize>(
        a: *const Bf16,
        k: usize,
        panel: *const Bf16,
        bias: *const f32,
        out: *mut f32,
        n_stride: usize,
    ) {
        // SAFETY: the caller's contract covers every pointer read and written.
        unsafe {
            let (b0, b1) = (_mm512_loadu_ps(bias), _mm512_loadu_ps(bias.wrapping_add(16)));
            let (mut acc0, mut acc1) = ([b0; R], [b1; R]);
            let (mut a_col, mut w_pair) = (a, panel);
            for _ in 0..k / 2 {
                let w0 = _mm512_castsi512_bh(_mm512_loadu_si512(w_pair.cast()));
                let w1 = _mm512_castsi512_bh(_mm512_loadu_si512(w_pair.wrapping_add(32).cast()));
                for i in 0..R {
                    let pair = _mm_loadu_si32(a_col.wrapping_add(i * k).cast());
                    let x = _mm512_castsi512_bh(_mm512_broadcastd_epi32(pair));
                    acc0[i] = _mm512_dpbf16_ps(acc0[i], x, w0);
                    acc1[i] = _mm512_dpbf16_ps(acc1[i], x, w1);
                }
                a_col = a_col.wrapping_add(2);
                w_pair = w_pair.wrapping_add(2 * PANEL);
            }
            for i in 0..R {
                _mm512_storeu_ps(out.wrapping_add(i * n_stride), acc0[i]);
                _mm512_storeu_ps(out.wrapping_add(i * n_stride + 16), acc1[i]);
            }
        }
    }

    /// Lane masks of a panel's two vectors when only its first `cols` (≤
    /// [`PANEL`]) columns are real.
    fn panel_masks(cols: usize) -> (__mmask16, __mmask16) {
        (super::first_lanes_16(cols), super::first_lanes_16(cols.saturating_sub(16)))
    }

    /// `c[I, ..] += (acc0[I], acc1[I])` for the micro-tile's [`MR`] rows
    /// from `c_tile`, `c_stride` apart, the columns `masks` select.
    ///
    /// # Safety
    /// `c_tile` must point at [`MR`] rows of the masked columns, writable.
    #[target_feature(enable = "avx512f")]
    unsafe fn add_tile(
        c_tile: *mut f32,
        c_stride: usize,
        (m0, m1): (__mmask16, __mmask16),
        acc0: &[__m512; MR],
        acc1: &[__m512; MR],
    ) {
        // SAFETY: the caller's contract; masked lanes are not touched.
        unsafe {
            each_row!(I => {
                let at = c_tile.wrapping_add(I * c_stride);
                let c0 = _mm512_maskz_loadu_ps(m0, at);
                _mm512_mask_storeu_ps(at, m0, _mm512_add_ps(c0, acc0[I]));
                let c1 = _mm512_maskz_loadu_ps(m1, at.wrapping_add(16));
                _mm512_mask_storeu_ps(at.wrapping_add(16), m1, _mm512_add_ps(c1, acc1[I]));
            });
        }
    }

    /// `c[i, j] += Σ_r a[r, i] · b[r, j]` for `i < k` (a multiple of
    /// [`MR`]), `j < n`: per row `r`, 8 broadcasts from `a` and two (masked
    /// at the last columns) loads from `b` feed 16 accumulators.
    ///
    /// # Safety
    /// The CPU has AVX-512 F; `a` and `b` hold `rows` rows of `k` and `n`
    /// values at their strides, `c` `k` writable rows of `n` at `c_stride`
    /// (`outer_accumulate` checks them).
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn outer_f32(
        (a, a_stride): (&[f32], usize),
        (b, b_stride): (&[f32], usize),
        [rows, k, n]: [usize; 3],
        (c, c_stride): (&mut [f32], usize),
    ) {
        for j0 in (0..n).step_by(PANEL) {
            let masks = panel_masks((n - j0).min(PANEL));
            for i0 in (0..k).step_by(MR) {
                let a = (a.as_ptr().wrapping_add(i0), a_stride);
                let b = (b.as_ptr().wrapping_add(j0), b_stride);
                let c = (c.as_mut_ptr().wrapping_add(i0 * c_stride + j0), c_stride);
                // SAFETY: `outer_accumulate` checked that `a` and `b` hold
                // `rows` rows of `k` and `n` values at their strides, and `c`
                // `k` rows of `n`.
                unsafe {
                    // A second half of masked columns only is not multiplied.
                    if masks.1 == 0 {
                        outer_tile_f32::<true>(a, b, rows, c, masks);
                    } else {
                        outer_tile_f32::<false>(a, b, rows, c, masks);
                    }
                }
            }
        }
    }

    /// One micro-tile of [`outer_f32`]: [`MR`] values of `i` × the panel
    /// of columns `masks` selects; with `HALF` its second half selects
    /// none and is skipped.
    ///
    /// # Safety
    /// `a` must hold `rows` rows of [`MR`] values, `b` `rows` rows of the
    /// masked columns (at their strides), `c` [`MR`] writable rows of them;
    /// masked lanes are not touched.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn outer_tile_f32<const HALF: bool>(
        (a, a_stride): (*const f32, usize),
        (b, b_stride): (*const f32, usize),
        rows: usize,
        (c, c_stride): (*mut f32, usize),
        masks: (__mmask16, __mmask16),
    ) {
        // SAFETY: the caller's contract covers every pointer read and written.
        unsafe {
            let zero = _mm512_setzero_ps();
            let (mut acc0, mut acc1) = ([zero; MR], [zero; MR]);
            let (mut a_row, mut b_row) = (a, b);
            for _ in 0..rows {
                let b0 = _mm512_maskz_loadu_ps(masks.0, b_row);
                let b1 = _mm512_maskz_loadu_ps(masks.1, b_row.wrapping_add(16));
                each_row!(I => {
                    let x = _mm512_set1_ps(_mm_cvtss_f32(_mm_load_ss(a_row.wrapping_add(I))));
                    acc0[I] = _mm512_fmadd_ps(x, b0, acc0[I]);
                    if !HALF {
                        acc1[I] = _mm512_fmadd_ps(x, b1, acc1[I]);
                    }
                });
                a_row = a_row.wrapping_add(a_stride);
                b_row = b_row.wrapping_add(b_stride);
            }
            add_tile(c, c_stride, masks, &acc0, &acc1);
        }
    }

    /// `c[i, j] += Σ_p Σ_lane a[p, i, lane] · b[p, j, lane]` for `i < k`
    /// (a multiple of [`MR`]), `j < n`, over row pairs `p` interleaved as
    /// `a: [pairs, a_width, 2]`, `b: [pairs, n, 2]` (bf16): per pair, 8
    /// broadcast pairs of `a` and two (masked) vectors of 16 column pairs
    /// of `b` feed 16 `vdpbf16ps` accumulators.
    ///
    /// # Safety
    /// The CPU has AVX-512 F and BF16; `a` and `b` hold `pairs` row pairs of
    /// `a_width` and `n` columns, `c` `k` writable rows of `n` at `c_stride`.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn outer_bf16(
        a: &[Bf16],
        b: &[Bf16],
        [pairs, k, a_width, n]: [usize; 4],
        (c, c_stride): (&mut [f32], usize),
    ) {
        for j0 in (0..n).step_by(PANEL) {
            let masks = panel_masks((n - j0).min(PANEL));
            for i0 in (0..k).step_by(MR) {
                let a = (a.as_ptr().wrapping_add(2 * i0).cast::<i32>(), a_width);
                let b = (b.as_ptr().wrapping_add(2 * j0).cast::<i32>(), n);
                let c = (c.as_mut_ptr().wrapping_add(i0 * c_stride + j0), c_stride);
                // SAFETY: the caller's buffers hold `pairs` pairs of
                // `a_width` and `n` columns (two bf16 = one 32-bit lane), and
                // `c` `k` rows of `n` values.
                unsafe {
                    if masks.1 == 0 {
                        outer_tile_bf16::<true>(a, b, pairs, c, masks);
                    } else {
                        outer_tile_bf16::<false>(a, b, pairs, c, masks);
                    }
                }
            }
        }
    }

    /// One micro-tile of [`outer_bf16`], as [`outer_tile_f32`] over row
    /// pairs (one 32-bit lane holds a pair's two bf16 values).
    ///
    /// # Safety
    /// As [`outer_tile_f32`]'s, `a` and `b` in row pairs `a_width` and `n`
    /// lanes apart.
    #[target_feature(enable = "avx512f,avx512bf16")]
    #[inline]
    unsafe fn outer_tile_bf16<const HALF: bool>(
        (a, a_width): (*const i32, usize),
        (b, n): (*const i32, usize),
        pairs: usize,
        (c, c_stride): (*mut f32, usize),
        masks: (__mmask16, __mmask16),
    ) {
        // SAFETY: the caller's contract covers every pointer read and written.
        unsafe {
            let zero = _mm512_setzero_ps();
            let (mut acc0, mut acc1) = ([zero; MR], [zero; MR]);
            let (mut a_pair, mut b_pair) = (a, b);
            for _ in 0..pairs {
                let b0 = _mm512_castsi512_bh(_mm512_maskz_loadu_epi32(masks.0, b_pair));
                let b1 = _mm512_castsi512_bh(_mm512_maskz_loadu_epi32(masks.1, b_pair.wrapping_add(16)));
                each_row!(I => {
                    let x = _mm512_castsi512_bh(_mm512_set1_epi32(std::ptr::read_unaligned(a_pair.wrapping_add(I))));
                    acc0[I] = _mm512_dpbf16_ps(acc0[I], x, b0);
                    if !HALF {
                        acc1[I] = _mm512_dpbf16_ps(acc1[I], x, b1);
                    }
                });
                a_pair = a_pair.wrapping_add(a_width);
                b_pair = b_pair.wrapping_add(n);
            }
            add_tile(c, c_stride, masks, &acc0, &acc1);
        }
    }

    /// `out: [rows, k_stride]` ← `src: [rows, cols]` rounded to bf16 (to
    /// nearest even), padding columns zero.
    ///
    /// # Safety
    /// AVX-512 F, BW and BF16; `out` holds as many rows of `k_stride ≥ cols`
    /// values as `src` holds of `cols`.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub(super) unsafe fn round_rows_bf16(src: &[f32], cols: usize, k_stride: usize, out: &mut [Bf16]) {
        let mask = super::first_lanes_32;
        for (row, dst) in src.chunks_exact(cols).zip(out.chunks_exact_mut(k_stride)) {
            for j in (0..k_stride).step_by(32) {
                let load = mask(cols.saturating_sub(j));
                let (m0, m1) = (load as u16, (load >> 16) as u16);
                // SAFETY: the masks keep the loads inside `row` and the store
                // inside `dst`; lanes past `cols` load as zero (the padding).
                unsafe {
                    let x0 = _mm512_maskz_loadu_ps(m0, row.as_ptr().wrapping_add(j));
                    let x1 = _mm512_maskz_loadu_ps(m1, row.as_ptr().wrapping_add(j + 16));
                    let y: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(x1, x0));
                    _mm512_mask_storeu_epi16(dst.as_mut_ptr().wrapping_add(j).cast(), mask(k_stride - j), y);
                }
            }
        }
    }

    /// [`super::interleave_pairs`] 16 columns of a row pair per step: one
    /// `vcvtne2ps2bf16` rounds both rows' values (and flushes subnormals to
    /// zero) and one `vpermw` interleaves them (the plain loops, one rounding
    /// at a time, were 9 % of a bf16 training step on a Zen 4).
    ///
    /// # Safety
    /// AVX-512 F, BW and BF16; `src` must hold `rows` rows of `width` values
    /// and `out` `⌈rows/2⌉` pairs of them (`2·width` values each).
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub(super) unsafe fn interleave_pairs_bf16(src: &[f32], rows: usize, width: usize, out: &mut [Bf16]) {
        assert!(src.len() >= rows * width && out.len() >= rows.div_ceil(2) * 2 * width, "interleave: shapes");
        // Lane 2j takes the first row's column j (lane j of the conversion),
        // lane 2j + 1 the second row's (lane 16 + j).
        let order: [i16; 32] = std::array::from_fn(|lane| (lane / 2 + 16 * (lane % 2)) as i16);
        // SAFETY: 32 i16 values are one 64-byte vector.
        let order: __m512i = unsafe { std::mem::transmute(order) };
        for p in 0..rows.div_ceil(2) {
            let first = &src[2 * p * width..][..width];
            let second = (2 * p + 1 < rows).then(|| &src[(2 * p + 1) * width..][..width]);
            let dst = &mut out[2 * p * width..][..2 * width];
            for j in (0..width).step_by(16) {
                let (mask, store) = (super::first_lanes_16(width - j), super::first_lanes_32(2 * (width - j)));
                // SAFETY: the masks keep the loads inside the rows' first
                // `width` values and the store inside `dst`.
                unsafe {
                    let x0 = _mm512_maskz_loadu_ps(mask, first.as_ptr().add(j));
                    let x1 = match second {
                        Some(second) => _mm512_maskz_loadu_ps(mask, second.as_ptr().add(j)),
                        None => _mm512_setzero_ps(),
                    };
                    let both: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(x1, x0));
                    let pairs = _mm512_permutexvar_epi16(order, both);
                    _mm512_mask_storeu_epi16(dst.as_mut_ptr().add(2 * j).cast(), store, pairs);
                }
            }
        }
    }

    /// Reinterprets 32 bf16 values (no conversion).
    #[inline(always)]
    fn _mm512_castsi512_bh(v: __m512i) -> __m512bh {
        // SAFETY: both are 64-byte plain vectors.
        unsafe { std::mem::transmute(v) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: usize) -> Vec<f32> {
        (0..n).map(|i| (((i * 7919 + seed * 104_729) % 2001) as f32 / 1000.0 - 1.0) * 1.7).collect()
    }

    /// Every kernel this CPU runs against an f64 product of the same
    /// (rounded) operands, for shapes with padded rows and columns.
    fn check_kernels<E: TileKernels>(tol: f64) {
        let isas = Isa::supported();
        for (k, n) in [(24, 128), (128, 48), (7, 24), (128, 128), (1, 33), (300, 40)] {
            // Two full micro-kernel groups and a remainder (of both widths).
            let rows = 2 * MR + 5;
            let (w, bias) = (values(k * n, 1), values(n, 2));
            let packed = PackedMatrix::<E>::new(&w, &bias, k, n);
            let mut a = vec![E::default(); rows * packed.k_stride];
            let a_values = values(rows * k, 3);
            for i in 0..rows {
                for j in 0..k {
                    a[i * packed.k_stride + j] = E::from_f32(a_values[i * k + j]);
                }
            }
            for &isa in &isas {
                let mut out = vec![f32::NAN; rows * packed.n_stride];
                E::matmul(isa, &a, &packed, rows, &mut out);
                // Rows grouped differently (3 fewer in front) give the same bits.
                let mut shifted = vec![f32::NAN; (rows - 3) * packed.n_stride];
                E::matmul(isa, &a[3 * packed.k_stride..], &packed, rows - 3, &mut shifted);
                assert!(
                    shifted.iter().zip(&out[3 * packed.n_stride..]).all(|(x, y)| x.to_bits() == y.to_bits()),
                    "{isa:?} [{k}, {n}]: a row's values depend on its neighbours"
                );
                for i in 0..rows {
                    for j in 0..packed.n_stride {
                        let want: f64 = if j < n {
                            f64::from(bias[j])
                                + (0..k)
                                    .map(|l| {
                                        f64::from(a[i * packed.k_stride + l].to_f32())
                                            * f64::from(E::from_f32(w[l * n + j]).to_f32())
                                    })
                                    .sum::<f64>()
                        } else {
                            0.0
                        };
                        let got = f64::from(out[i * packed.n_stride + j]);
                        assert!(
                            (got - want).abs() <= tol * (1.0 + want.abs()),
                            "{isa:?} [{k}, {n}] ({i}, {j}): {got} vs {want}"
                        );
                    }
                }
            }
        }
    }

    /// The weight-gradient product, every family this CPU runs, against
    /// f64 sums, for widths with column and row tails.
    #[test]
    fn outer_products_match_f64_sums() {
        for (rows, k, n) in [(64, 128, 128), (64, 24, 48), (16, 13, 7), (8, 40, 33)] {
            let (a_stride, b_stride, c_stride) = (k + 3, n + 1, n + 5);
            let (a, b) = (values(rows * a_stride, 1), values(rows * b_stride, 2));
            let start = values(k * c_stride, 3);
            for isa in Isa::supported() {
                let mut c = start.clone();
                outer_accumulate(isa, (&a, a_stride), (&b, b_stride), [rows, k, n], (&mut c, c_stride));
                for i in 0..k {
                    for j in 0..c_stride {
                        let at = i * c_stride + j;
                        let want = if j < n {
                            f64::from(start[at])
                                + (0..rows)
                                    .map(|r| f64::from(a[r * a_stride + i]) * f64::from(b[r * b_stride + j]))
                                    .sum::<f64>()
                        } else {
                            f64::from(start[at])
                        };
                        assert!((f64::from(c[at]) - want).abs() < 1e-4 * (1.0 + want.abs()), "{isa:?} [{i}, {j}]");
                    }
                }
            }
        }
    }

    /// The AVX-512 interleave rounds and orders row pairs as the plain
    /// loops do, bit for bit (no subnormals here: the instruction flushes
    /// them), for odd and even row counts and widths with and without a
    /// masked tail, a NaN included.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn vectorised_pair_interleave_matches_the_plain_loops() {
        if !Isa::detect().native_bf16() {
            return;
        }
        for (rows, width) in [(64, 128), (7, 24), (1, 33), (10, 16), (5, 3)] {
            let mut src = values(rows * width, 4);
            src[width / 2] = f32::NAN;
            let len = rows.div_ceil(2) * 2 * width;
            let (mut want, mut got) = (vec![Bf16(0x1234); len], vec![Bf16(0x4321); len]);
            interleave_pairs(&src, rows, width, &mut want);
            // SAFETY: AVX512-BF16 was detected; the buffers have the shapes asked.
            unsafe { avx512::interleave_pairs_bf16(&src, rows, width, &mut got) };
            assert_eq!(want, got, "{rows} rows of {width}");
        }
    }

    /// The bf16 weight-gradient product, every family this CPU runs it
    /// with, against f64 sums of the rounded operands (odd rows, column and
    /// row tails; a scratch dirty from a bigger product).
    #[test]
    fn bf16_outer_products_match_f64_sums_of_the_rounded_operands() {
        let round = |x: f32| f64::from(Bf16::from_f32(x).to_f32());
        let shapes = [(64, 128, 128), (63, 24, 48), (16, 13, 7), (8, 40, 33), (100, 50, 70)];
        for (isa, (rows, k, n)) in Isa::supported()
            .into_iter()
            .filter(|isa| isa.native_bf16())
            .flat_map(|isa| shapes.map(|shape| (isa, shape)))
        {
            let (a, b) = (values(rows * k, 1), values(rows * n, 2));
            let c_stride = n + 5;
            let start = values(k * c_stride, 3);
            let mut c = start.clone();
            let mut pairs = (vec![Bf16(0x7FC0); 40_000], vec![Bf16(0x7FC0); 40_000]);
            outer_accumulate_bf16(isa, (&a, k), (&b, n), rows, (&mut c, c_stride), &mut pairs);
            // The AVX512-BF16 kernel sums rows of `c` past its micro-tiles in f32.
            let rounded_rows = if isa == Isa::Amx { k } else { k / MR * MR };
            for i in 0..k {
                for j in 0..c_stride {
                    let at = i * c_stride + j;
                    let exact = |r: usize| f64::from(a[r * k + i]) * f64::from(b[r * n + j]);
                    let rounded = |r: usize| round(a[r * k + i]) * round(b[r * n + j]);
                    let want = f64::from(start[at])
                        + if j >= n {
                            0.0
                        } else if i < rounded_rows {
                            (0..rows).map(rounded).sum::<f64>()
                        } else {
                            (0..rows).map(exact).sum::<f64>()
                        };
                    assert!(
                        (f64::from(c[at]) - want).abs() < 1e-4 * (1.0 + want.abs()),
                        "{isa:?} [{i}, {j}] of {rows}x{k}x{n}: {} vs {want}",
                        c[at]
                    );
                }
            }
        }
    }

    #[test]
    fn f32_tiles_match_f64_products() {
        check_kernels::<f32>(1e-5);
    }

    #[test]
    fn bf16_tiles_match_f64_products_of_the_rounded_operands() {
        check_kernels::<Bf16>(1e-5);
    }

    /// Rows rounded to a bf16 operand (vectorised where the CPU has
    /// AVX512-BF16) round as `Bf16::from_f32` does, padding zero, over a
    /// dirty scratch. (The vectorised rounding flushes subnormals to zero;
    /// none are tested.)
    #[test]
    fn bf16_operand_rows_round_each_value() {
        for (rows, cols, k_stride) in [(5, 24, 32), (3, 128, 128), (4, 33, 64), (2, 7, 32)] {
            let mut src = values(rows * cols, 4);
            // Ties (1 + 2⁻⁸ rounds to even) and a NaN.
            src[1] = 1.0 + 1.0 / 256.0;
            src[2] = f32::NAN;
            let mut scratch = vec![Bf16(0x1234); 1000];
            let got = Bf16::operand_rows(&src, cols, k_stride, &mut scratch).to_vec();
            assert_eq!(got.len(), rows * k_stride);
            for r in 0..rows {
                for j in 0..k_stride {
                    let g = got[r * k_stride + j];
                    if j >= cols {
                        assert_eq!(g, Bf16(0), "padding ({r}, {j})");
                    } else if src[r * cols + j].is_nan() {
                        assert!(g.to_f32().is_nan());
                    } else {
                        assert_eq!(g, Bf16::from_f32(src[r * cols + j]), "({r}, {j}) of {rows}x{cols}");
                    }
                }
            }
        }
    }

    #[test]
    fn bf16_rounds_to_nearest_even() {
        assert_eq!(Bf16::from_f32(1.0).to_f32(), 1.0);
        // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties to even (1).
        assert_eq!(Bf16::from_f32(1.0 + 1.0 / 256.0).to_f32(), 1.0);
        assert_eq!(Bf16::from_f32(1.0 + 3.0 / 256.0).to_f32(), 1.0 + 4.0 / 256.0);
        assert!((Bf16::from_f32(std::f32::consts::PI).to_f32() - std::f32::consts::PI).abs() < 0.01);
        assert!(Bf16::from_f32(f32::NAN).to_f32().is_nan());
        assert_eq!(Bf16::from_f32(f32::INFINITY).to_f32(), f32::INFINITY);
    }
}

/// A benchmark, not a test: one core's rate on the tile shapes of the paper's
/// networks. `cargo test --workspace --all-features --lib tile_rate -- --ignored --nocapture`
#[cfg(test)]
mod rate {
    use super::*;

    /// [`outer_accumulate`]'s rate: `[rows, k]ᵀ · [rows, n]` into `[k, n]`.
    fn outer_gflops(isa: Isa, [rows, k, n]: [usize; 3], seconds: f64) -> f64 {
        let (a, b) = (vec![0.3f32; rows * k], vec![0.2f32; rows * n]);
        let mut c = vec![0.0f32; k * n];
        let start = std::time::Instant::now();
        let mut products = 0usize;
        while products < 100 || start.elapsed().as_secs_f64() < seconds {
            for _ in 0..100 {
                outer_accumulate(isa, (&a, k), (&b, n), [rows, k, n], (&mut c, n));
            }
            products += 100;
        }
        2.0 * (rows * k * n * products) as f64 / start.elapsed().as_secs_f64() / 1e9
    }

    #[test]
    #[ignore = "benchmark: prints GFLOP/s"]
    fn tile_rate() {
        for isa in Isa::supported().into_iter().rev() {
            println!("{isa:?}, tiles of 64 rows, one core");
            for (k, n) in [(128, 128), (24, 128), (128, 48), (48, 128), (128, 24)] {
                let (f, b) = (tile_gflops::<f32>(isa, [64, k, n], 0.2), tile_gflops::<Bf16>(isa, [64, k, n], 0.2));
                let o = outer_gflops(isa, [64, k, n], 0.2);
                println!("[{k:>3}, {n:>3}]: f32 {f:>4.0} GFLOP/s, bf16 {b:>4.0} GFLOP/s; weight gradient f32 {o:>4.0}");
            }
        }
    }
}
