//! bf16 tile products on Intel AMX (Advanced Matrix Extensions, Sapphire
//! Rapids and later): eight tile registers of 16 rows × 64 bytes and one
//! instruction, `tdpbf16ps`, that adds a `[16, 32] · [32, 16]` product of
//! bf16 pairs into a `[16, 16]` f32 tile — 16,384 FLOP, ~16× the AVX-512
//! FMA rate of a core. Stable Rust has no AMX intrinsics, so the
//! instructions are inline assembly, and the feature is found from `cpuid`
//! and the kernel's permission (Linux hands out the tile state per process
//! on request, `arch_prctl(ARCH_REQ_XCOMP_PERM)`).
//!
//! The forward product computes each output row from its own input row
//! alone (a tile row's dot products never mix rows), so a row's values are
//! the same bits whatever rows share a call, as the other kernels promise.
//! (The weight-gradient product sums over rows, as its counterparts do.)
//!
//! Layouts: the left operand is row-major bf16 `[rows, k_stride]` with
//! `k_stride` a multiple of [`TILE_K`]; the right one is the
//! [`PackedMatrix`] panel layout, whose row pairs interleaved per column are
//! exactly AMX's "VNNI" layout, so a tile of it loads with a stride.

use std::arch::asm;
use std::arch::x86_64::*;
use std::cell::Cell;
use std::sync::OnceLock;

use super::matmul::{Bf16, PANEL, PackedMatrix, Prefetch};

/// Rows of a tile register.
const ROWS: usize = 16;
/// Inner-dimension values (bf16) one left-operand tile holds per row: the
/// packed matrices' `k_stride` is a multiple of it.
pub(super) const TILE_K: usize = 32;
/// f32 columns of an accumulator tile.
const COLS: usize = 16;

/// Whether this CPU and OS run AMX-BF16: `cpuid` says AMX-TILE and
/// AMX-BF16, and Linux grants this process the tile data state.
pub(super) fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        // CPUID.(EAX=7, ECX=0):EDX bit 22 is AMX-BF16, bit 24 AMX-TILE.
        let leaf7 = __cpuid_count(7, 0);
        let cpu = leaf7.edx >> 22 & 1 == 1 && leaf7.edx >> 24 & 1 == 1;
        cpu && request_tile_data()
    })
}

/// Asks Linux for the AMX tile data state (XFEATURE 18) for the whole
/// process; without it the first tile instruction faults.
#[cfg(target_os = "linux")]
fn request_tile_data() -> bool {
    const SYS_ARCH_PRCTL: i64 = 158;
    const ARCH_REQ_XCOMP_PERM: i64 = 0x1023;
    const XFEATURE_XTILEDATA: i64 = 18;
    let result: i64;
    // SAFETY: `arch_prctl(ARCH_REQ_XCOMP_PERM, 18)` only changes which
    // register state this process may use; the syscall instruction clobbers
    // rcx and r11, declared, and touches no memory of ours.
    unsafe {
        asm!(
            "syscall",
            inlateout("rax") SYS_ARCH_PRCTL => result,
            in("rdi") ARCH_REQ_XCOMP_PERM,
            in("rsi") XFEATURE_XTILEDATA,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    result == 0
}

#[cfg(not(target_os = "linux"))]
fn request_tile_data() -> bool {
    false
}

/// The tile configuration every kernel here uses (palette 1): eight tiles
/// of 16 rows × 64 bytes. A 64-byte block as `ldtilecfg` reads it.
#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    bytes_per_row: [u16; 16],
    rows: [u8; 16],
}

thread_local! {
    /// Whether this thread's tile registers hold [`TileConfig`]'s shapes
    /// (the OS keeps them across context switches; nothing else in the
    /// program configures tiles).
    static CONFIGURED: Cell<bool> = const { Cell::new(false) };
}

/// Configures this thread's tiles, once.
fn configure() {
    if CONFIGURED.get() {
        return;
    }
    let mut config = TileConfig { palette: 1, start_row: 0, reserved: [0; 14], bytes_per_row: [0; 16], rows: [0; 16] };
    config.bytes_per_row[..8].fill(64);
    config.rows[..8].fill(ROWS as u8);
    // SAFETY: `available()` was true (every caller checks it through its
    // `Isa`), so the tile state is enabled; the config is a valid palette-1
    // block of 64 aligned bytes.
    unsafe { asm!("ldtilecfg [{0}]", in(reg) &config, options(nostack, readonly, preserves_flags)) };
    CONFIGURED.set(true);
}

// The tile instructions. Tile registers are named by constants; Rust has no
// register class for them, and nothing but this module uses them, so no
// clobber is declared. Each block has side effects (not `pure`), so the
// compiler keeps their order.

/// `tmm{T}` ← 16 rows of 64 bytes at `ptr`, `stride` bytes apart.
///
/// # Safety
/// Tiles configured; the 16 rows must be readable.
#[inline(always)]
unsafe fn load<const T: u8>(ptr: *const u8, stride: usize) {
    // SAFETY: as the caller promises.
    unsafe {
        asm!("tileloadd tmm{t}, [{p} + {s}*1]", t = const T, p = in(reg) ptr, s = in(reg) stride,
             options(nostack, readonly, preserves_flags))
    };
}

/// 16 rows of 64 bytes at `ptr`, `stride` bytes apart ← `tmm{T}`.
///
/// # Safety
/// Tiles configured; the 16 rows must be writable.
#[inline(always)]
unsafe fn store<const T: u8>(ptr: *mut u8, stride: usize) {
    // SAFETY: as the caller promises.
    unsafe {
        asm!("tilestored [{p} + {s}*1], tmm{t}", t = const T, p = in(reg) ptr, s = in(reg) stride,
             options(nostack, preserves_flags))
    };
}

/// `tmm{C} += tmm{A} · tmm{B}` in bf16 pairs, f32 accumulation.
///
/// # Safety
/// Tiles configured.
#[inline(always)]
unsafe fn dot<const C: u8, const A: u8, const B: u8>() {
    // SAFETY: registers only.
    unsafe {
        asm!("tdpbf16ps tmm{c}, tmm{a}, tmm{b}", c = const C, a = const A, b = const B,
             options(nomem, nostack, preserves_flags))
    };
}

// ----------------------------------------------------------- Products --

/// `out = a · w + bias` (see `TileKernels::matmul`): rows in blocks of 32
/// (four accumulator tiles per panel of 32 columns), then 16, then the
/// last few through a zero-padded block of 16.
///
/// # Safety
/// [`available`]; `w.k_stride` a multiple of [`TILE_K`]; `a` holds `rows`
/// rows of `w.k_stride` values and `out` `rows` rows of `w.n_stride`.
pub(super) unsafe fn matmul_bf16(a: &[Bf16], w: &PackedMatrix<Bf16>, rows: usize, out: &mut [f32], ahead: Prefetch) {
    assert!(w.k_stride.is_multiple_of(TILE_K) && a.len() >= rows * w.k_stride && out.len() >= rows * w.n_stride);
    configure();
    // The product is short next to a trip to memory: everything the caller
    // reads next is asked for at once (spread over the product as the
    // AVX-512 kernels do measured no better).
    ahead.all();
    let full = rows / ROWS * ROWS;
    let mut i0 = 0;
    while i0 < full {
        let pair = i0 + 2 * ROWS <= full;
        // SAFETY: rows `i0..i0 + 16 or 32 ≤ rows` of `a` and `out`.
        unsafe { row_block(a[i0 * w.k_stride..].as_ptr(), w, out[i0 * w.n_stride..].as_mut_ptr(), pair) };
        i0 += if pair { 2 * ROWS } else { ROWS };
    }
    let rest = rows - full;
    if rest > 0 {
        // A tile loads 16 rows: the last few go through zero-padded copies.
        let mut a_pad = vec![Bf16::default(); ROWS * w.k_stride];
        a_pad[..rest * w.k_stride].copy_from_slice(&a[full * w.k_stride..rows * w.k_stride]);
        let mut out_pad = vec![0.0f32; ROWS * w.n_stride];
        // SAFETY: both padded copies hold 16 rows.
        unsafe { row_block(a_pad.as_ptr(), w, out_pad.as_mut_ptr(), false) };
        out[full * w.n_stride..rows * w.n_stride].copy_from_slice(&out_pad[..rest * w.n_stride]);
    }
}

/// 16 rows (32 with `pair`) of the product, every panel.
///
/// # Safety
/// As [`matmul_bf16`], for the 16 or 32 rows at `a` and `out`.
unsafe fn row_block(a: *const Bf16, w: &PackedMatrix<Bf16>, out: *mut f32, pair: bool) {
    let (k_stride, n_stride) = (w.k_stride, w.n_stride);
    let (a_bytes, out_bytes) = (2 * k_stride, 4 * n_stride);
    // A panel's row pair g holds 32 columns × 2 values: 128 bytes.
    let w_bytes = 2 * 2 * PANEL;
    let a2 = a.wrapping_add(ROWS * k_stride);
    let out2 = out.wrapping_add(ROWS * n_stride);
    for p in 0..n_stride / PANEL {
        let bias = w.bias[p * PANEL..].as_ptr();
        let panel = w.panel(p).as_ptr();
        let out_p = out.wrapping_add(p * PANEL);
        let out2_p = out2.wrapping_add(p * PANEL);
        // SAFETY: the caller's rows; the bias holds `n_stride` values and the
        // panel `k_stride · PANEL` (its 16-pair tiles, 64 bytes of 128 each).
        unsafe {
            // Accumulators start at the bias: one row loaded 16 times.
            load::<0>(bias.cast(), 0);
            load::<1>(bias.wrapping_add(COLS).cast(), 0);
            if pair {
                load::<2>(bias.cast(), 0);
                load::<3>(bias.wrapping_add(COLS).cast(), 0);
            }
            for kt in 0..k_stride / TILE_K {
                load::<4>(a.wrapping_add(kt * TILE_K).cast(), a_bytes);
                // Pairs kt·16.. of the panel, columns 0..16 and 16..32.
                let b = panel.wrapping_add(kt * TILE_K * PANEL);
                load::<6>(b.cast(), w_bytes);
                load::<7>(b.wrapping_add(2 * COLS).cast(), w_bytes);
                dot::<0, 4, 6>();
                dot::<1, 4, 7>();
                if pair {
                    load::<5>(a2.wrapping_add(kt * TILE_K).cast(), a_bytes);
                    dot::<2, 5, 6>();
                    dot::<3, 5, 7>();
                }
            }
            store::<0>(out_p.cast(), out_bytes);
            store::<1>(out_p.wrapping_add(COLS).cast(), out_bytes);
            if pair {
                store::<2>(out2_p.cast(), out_bytes);
                store::<3>(out2_p.wrapping_add(COLS).cast(), out_bytes);
            }
        }
    }
}

/// `c[i, j] += Σ_r a[r, i] · b[r, j]` for `i < k`, `j < n` with `a: [rows,
/// k]`, `b: [rows, n]` (f32, rounded to bf16 here) and `c: [k, c_stride]`:
/// `aᵀ` is made (`[k↑16, rows↑32]`, rows as pairs) into `scratch.0` and `b`
/// interleaved by row pairs (`[rows↑32 / 2, n↑16, 2]`) into `scratch.1`.
///
/// # Safety
/// [`available`] (AVX-512 BW and BF16 come with AMX); `a` and `b` hold
/// `rows` rows and `c` holds `k` rows of `n ≤ c_stride` values.
pub(super) unsafe fn outer_bf16(
    (a, k): (&[f32], usize),
    (b, n): (&[f32], usize),
    rows: usize,
    (c, c_stride): (&mut [f32], usize),
    scratch: &mut (Vec<Bf16>, Vec<Bf16>),
) {
    assert!(a.len() >= rows * k && b.len() >= rows * n && c_stride >= n);
    assert!(k == 0 || c.len() >= (k - 1) * c_stride + n);
    configure();
    let (rows_up, k_up, n_up) = (rows.div_ceil(2 * ROWS) * 2 * ROWS, k.div_ceil(ROWS) * ROWS, n.div_ceil(COLS) * COLS);
    let (at, pairs) = scratch;
    at.resize(k_up * rows_up, Bf16::default());
    pairs.resize(rows_up * n_up, Bf16::default());
    // SAFETY: AVX-512 BW and BF16 (with AMX); the buffers were sized above.
    unsafe {
        transpose_pairs(a, k, rows, rows_up, k_up, at);
        interleave_pairs(b, n, rows, rows_up, n_up, pairs);
    }
    let (at_bytes, pair_bytes) = (2 * rows_up, 2 * 2 * n_up);
    // One pointer for every access to `c` below (tiles and edge copies).
    let c = c.as_mut_ptr();
    // An accumulator tile of `c`, or a padded copy of its edge.
    let mut edges = [[0.0f32; ROWS * COLS]; 4];
    for i0 in (0..k_up).step_by(2 * ROWS) {
        for j0 in (0..n_up).step_by(2 * COLS) {
            let tiles = [(i0, j0), (i0, j0 + COLS), (i0 + ROWS, j0), (i0 + ROWS, j0 + COLS)];
            let real = tiles.map(|(i, j)| i < k_up && j < n_up);
            let full = tiles.map(|(i, j)| i + ROWS <= k && j + COLS <= n);
            // Where each accumulator tile lives: `c` itself or its edge copy.
            let mut place = [(std::ptr::null_mut::<f32>(), 0usize); 4];
            for t in 0..4 {
                let (i, j) = tiles[t];
                if !real[t] {
                    continue;
                }
                place[t] = if full[t] {
                    (c.wrapping_add(i * c_stride + j), 4 * c_stride)
                } else {
                    let edge = &mut edges[t];
                    edge.fill(0.0);
                    for r in 0..ROWS.min(k.saturating_sub(i)) {
                        let cols = COLS.min(n.saturating_sub(j));
                        // SAFETY: row `i + r < k`, columns `j..j + cols ≤ n` of `c`.
                        let row = unsafe { std::slice::from_raw_parts(c.add((i + r) * c_stride + j), cols) };
                        edge[r * COLS..r * COLS + cols].copy_from_slice(row);
                    }
                    (edge.as_mut_ptr(), 4 * COLS)
                };
            }
            // SAFETY: every place is 16 rows of 16 f32 (a full tile of `c`
            // inside its `k` rows and `n` columns, or an edge copy); the
            // operand tiles lie inside the buffers sized above.
            unsafe {
                accumulators::<false>(&place, real);
                for r0 in (0..rows_up).step_by(2 * ROWS) {
                    load::<4>(at[i0 * rows_up + r0..].as_ptr().cast(), at_bytes);
                    load::<6>(pairs[r0 * n_up + 2 * j0..].as_ptr().cast(), pair_bytes);
                    dot::<0, 4, 6>();
                    if real[1] {
                        load::<7>(pairs[r0 * n_up + 2 * (j0 + COLS)..].as_ptr().cast(), pair_bytes);
                        dot::<1, 4, 7>();
                    }
                    if real[2] {
                        load::<5>(at[(i0 + ROWS) * rows_up + r0..].as_ptr().cast(), at_bytes);
                        dot::<2, 5, 6>();
                        if real[3] {
                            dot::<3, 5, 7>();
                        }
                    }
                }
                accumulators::<true>(&place, real);
            }
            for t in 0..4 {
                let (i, j) = tiles[t];
                if real[t] && !full[t] {
                    for r in 0..ROWS.min(k.saturating_sub(i)) {
                        let cols = COLS.min(n.saturating_sub(j));
                        // SAFETY: row `i + r < k`, columns `j..j + cols ≤ n` of
                        // `c`; no other reference to `c` is alive.
                        let row = unsafe { std::slice::from_raw_parts_mut(c.add((i + r) * c_stride + j), cols) };
                        row.copy_from_slice(&edges[t][r * COLS..r * COLS + cols]);
                    }
                }
            }
        }
    }
}

/// Loads accumulator tiles 0–3 from their places (`(pointer, row stride
/// in bytes)`), or with `STORE` stores them there, the `real` ones.
///
/// # Safety
/// Tiles configured; each real place is 16 rows of 64 bytes, readable and
/// writable.
#[inline(always)]
unsafe fn accumulators<const STORE: bool>(place: &[(*mut f32, usize); 4], real: [bool; 4]) {
    macro_rules! each {
        ($($t:literal),*) => {$(
            if real[$t] {
                let (at, stride) = place[$t];
                // SAFETY: as the caller promises for real places.
                unsafe {
                    if STORE { store::<$t>(at.cast(), stride) } else { load::<$t>(at.cast(), stride) }
                }
            }
        )*};
    }
    each!(0, 1, 2, 3);
}

/// Rows `2p` and `2p + 1` of `src: [rows, width]` at columns `j..j + 16`,
/// rounded to bf16 and interleaved: lane `c` holds column `j + c` of row
/// `2p` in its low half and of row `2p + 1` in its high half (zero past
/// `rows` or `width`).
///
/// # Safety
/// AVX-512 F, BW and BF16; `src` holds `rows · width` values.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
#[inline]
unsafe fn row_pair(src: &[f32], width: usize, rows: usize, p: usize, j: usize) -> __m512i {
    let mask = super::matmul::first_lanes_16(width.saturating_sub(j));
    let mut x = [_mm512_setzero_ps(); 2];
    for (h, x) in x.iter_mut().enumerate() {
        let r = 2 * p + h;
        if r < rows {
            // SAFETY: the mask keeps the load inside row `r`'s `width` values.
            *x = unsafe { _mm512_maskz_loadu_ps(mask, src.as_ptr().wrapping_add(r * width + j)) };
        }
    }
    // Low 16 bf16: row 2p; high 16: row 2p + 1; then interleaved.
    // SAFETY: both are plain 64-byte vectors.
    let halves: __m512i = unsafe { std::mem::transmute(_mm512_cvtne2ps_pbh(x[1], x[0])) };
    let order = _mm512_set_epi16(
        31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1,
        16, 0,
    );
    _mm512_permutexvar_epi16(order, halves)
}

/// `out: [rows_up / 2, n_up, 2]` ← `b: [rows, n]` in bf16, row pairs
/// interleaved per column (AMX's layout of a right operand), zero-padded.
///
/// # Safety
/// AVX-512 F, BW and BF16; `b` holds `rows · n` values.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn interleave_pairs(b: &[f32], n: usize, rows: usize, rows_up: usize, n_up: usize, out: &mut [Bf16]) {
    assert!(out.len() >= rows_up * n_up && rows_up >= rows && n_up.is_multiple_of(16) && n_up >= n);
    for p in 0..rows_up / 2 {
        for j in (0..n_up).step_by(16) {
            // SAFETY: AVX-512 as the caller promises; 32 values at `(p · n_up
            // + j) · 2`, inside `out` (asserted).
            unsafe {
                let v = row_pair(b, n, rows, p, j);
                _mm512_storeu_si512(out.as_mut_ptr().wrapping_add((p * n_up + j) * 2).cast(), v);
            }
        }
    }
}

/// `out: [k_up, rows_up]` ← `aᵀ` in bf16 for `a: [rows, k]`, zero-padded:
/// row `i` of `out` is column `i` of `a`, a left operand whose inner
/// dimension is `a`'s rows. 32 rows × 16 columns at a time: 16 row pairs
/// (each lane a column's two values) transposed as 16 × 16 32-bit lanes.
///
/// # Safety
/// AVX-512 F, BW and BF16; `a` holds `rows · k` values.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn transpose_pairs(a: &[f32], k: usize, rows: usize, rows_up: usize, k_up: usize, out: &mut [Bf16]) {
    assert!(out.len() >= k_up * rows_up && rows_up.is_multiple_of(2 * ROWS) && k_up.is_multiple_of(16));
    for r0 in (0..rows_up).step_by(2 * ROWS) {
        for j in (0..k_up).step_by(16) {
            let mut block = [_mm512_setzero_si512(); 16];
            for (p, v) in block.iter_mut().enumerate() {
                // SAFETY: AVX-512 as the caller promises.
                *v = unsafe { row_pair(a, k, rows, r0 / 2 + p, j) };
            }
            for (c, v) in transpose16(block).into_iter().enumerate() {
                // SAFETY: 32 values at `(j + c) · rows_up + r0`, inside `out`.
                unsafe { _mm512_storeu_si512(out.as_mut_ptr().wrapping_add((j + c) * rows_up + r0).cast(), v) };
            }
        }
    }
}

/// The transpose of a 16 × 16 matrix of 32-bit lanes (vector `i`, lane `j`
/// ↦ vector `j`, lane `i`): 2 × 2 and then 4 × 4 blocks inside each 128-bit
/// lane, then the 128-bit lanes across vectors in two steps.
#[target_feature(enable = "avx512f")]
#[inline]
fn transpose16(r: [__m512i; 16]) -> [__m512i; 16] {
    let mut t = [_mm512_setzero_si512(); 16];
    for i in (0..16).step_by(2) {
        t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
    }
    let mut u = [_mm512_setzero_si512(); 16];
    for base in (0..16).step_by(4) {
        for h in 0..2 {
            let (a, b) = (t[base + h], t[base + 2 + h]);
            u[base + 2 * h] = _mm512_unpacklo_epi64(a, b);
            u[base + 2 * h + 1] = _mm512_unpackhi_epi64(a, b);
        }
    }
    let mut v = [_mm512_setzero_si512(); 16];
    for i in 0..16 {
        let (a, b) = (u[(i & 3) + (i & 8)], u[(i & 3) + (i & 8) + 4]);
        v[i] = if i & 4 == 0 { _mm512_shuffle_i32x4::<0x88>(a, b) } else { _mm512_shuffle_i32x4::<0xDD>(a, b) };
    }
    let mut out = [_mm512_setzero_si512(); 16];
    for i in 0..16 {
        let (a, b) = (v[i & 7], v[(i & 7) + 8]);
        out[i] = if i & 8 == 0 { _mm512_shuffle_i32x4::<0x88>(a, b) } else { _mm512_shuffle_i32x4::<0xDD>(a, b) };
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transpose16_transposes() {
        if !std::arch::is_x86_feature_detected!("avx512f") {
            return;
        }
        let rows: [__m512i; 16] = std::array::from_fn(|i| {
            let lanes: [i32; 16] = std::array::from_fn(|j| (i * 16 + j) as i32);
            // SAFETY: plain 64-byte vectors.
            unsafe { std::mem::transmute(lanes) }
        });
        // SAFETY: AVX-512F was detected.
        let columns = unsafe { transpose16(rows) };
        for (j, v) in columns.iter().enumerate() {
            // SAFETY: plain 64-byte vectors.
            let lanes: [i32; 16] = unsafe { std::mem::transmute(*v) };
            let want: [i32; 16] = std::array::from_fn(|i| (i * 16 + j) as i32);
            assert_eq!(lanes, want, "column {j}");
        }
    }
}
