//! A tile of block rows through a whole inverse coupling stack, every
//! intermediate staying in this thread's cache.
//!
//! Shapes: a tile is `R` rows (blocks); `z` and the residual state `x` are
//! `[R, D]` (`D = C·K²`), the networks' outputs `[R, U]` over the updated
//! half, the operand and product buffers `[R, stride]` of the layer at hand.

use multiversion::multiversion;
use multiversion::target::target_cfg_f;

use super::matmul::{Isa, Operand, TileKernels};
use super::pack::{PackedHalf, PackedNet, PackedStack};
use crate::kernels::cpu::{exp, tanh};

/// Scratch buffers for one tile, reused across tiles of a thread.
pub(super) struct Workspace<E> {
    x: Vec<f32>,
    operand: Vec<E>,
    product: Vec<f32>,
    s: Vec<f32>,
    t: Vec<f32>,
}

impl<E: Operand> Workspace<E> {
    pub fn new() -> Self {
        Self { x: Vec::new(), operand: Vec::new(), product: Vec::new(), s: Vec::new(), t: Vec::new() }
    }
}

/// Inverts `stack` on the tile `z: [rows, D]` in place (`rows` a multiple
/// of the micro-kernel's rows).
pub(super) fn invert_tile<E: TileKernels>(
    isa: Isa,
    stack: &PackedStack<E>,
    z: &mut [f32],
    rows: usize,
    ws: &mut Workspace<E>,
) {
    let d = stack.dim;
    assert_eq!(z.len(), rows * d, "tile is not [{rows}, {d}]");
    for half in &stack.halves {
        let u = half.updated.len();
        let [mut s, mut t] = [std::mem::take(&mut ws.s), std::mem::take(&mut ws.t)];
        s.resize(rows * u, 0.0);
        t.resize(rows * u, 0.0);
        run_net(isa, &half.s, half, z, rows, d, ws, &mut s);
        run_net(isa, &half.t, half, z, rows, d, ws, &mut t);
        inverse_affine(&mut s, &mut t, &half.s.scale, &half.t.scale);
        scatter_update(z, d, &half.updated, &s, &t);
        [ws.s, ws.t] = [s, t];
    }
}

/// One network on the tile's conditioning half: `out: [rows, U]`, its raw
/// output over the updated half (before the final scale).
#[allow(clippy::too_many_arguments)]
fn run_net<E: TileKernels>(
    isa: Isa,
    net: &PackedNet<E>,
    half: &PackedHalf<E>,
    z: &[f32],
    rows: usize,
    d: usize,
    ws: &mut Workspace<E>,
    out: &mut [f32],
) {
    // The conditioner: z on the conditioning half, zero on the other.
    ws.x.clear();
    ws.x.resize(rows * d, 0.0);
    for (x, z) in ws.x.chunks_exact_mut(d).zip(z.chunks_exact(d)) {
        for &i in &half.conditioning {
            x[i] = z[i];
        }
    }
    let last_block = net.blocks.len() - 1;
    for (b, layers) in net.blocks.iter().enumerate() {
        let mut previous_stride = 0;
        for (l, layer) in layers.iter().enumerate() {
            let m = &layer.matrix;
            ws.operand.resize(rows * m.k_stride, E::default());
            if l > 0 {
                E::swish(isa, &ws.product, previous_stride, &layer.beta, &mut ws.operand, m.k_stride);
            } else if b > 0 {
                E::swish(isa, &ws.x, d, &layer.beta, &mut ws.operand, m.k_stride);
            } else {
                swish_gathered(
                    isa,
                    &ws.x,
                    d,
                    &half.conditioning,
                    &layer.beta,
                    &mut ws.product,
                    &mut ws.operand,
                    m.k_stride,
                );
            }
            ws.product.resize(rows * m.n_stride, 0.0);
            E::matmul(isa, &ws.operand, m, rows, &mut ws.product);
            previous_stride = m.n_stride;
        }
        if b == last_block {
            residual_gathered(&ws.x, d, &half.updated, &ws.product, previous_stride, out);
        } else {
            residual_rows(&mut ws.x, d, &ws.product, previous_stride);
        }
    }
}

/// The Swish of the columns `columns` of `x: [R, D]`, gathered into
/// `scratch` first so that it runs on contiguous rows.
#[allow(clippy::too_many_arguments)]
fn swish_gathered<E: TileKernels>(
    isa: Isa,
    x: &[f32],
    d: usize,
    columns: &[usize],
    beta: &[f32],
    scratch: &mut Vec<f32>,
    operand: &mut [E],
    k_stride: usize,
) {
    let u = columns.len();
    scratch.clear();
    for x in x.chunks_exact(d) {
        scratch.extend(columns.iter().map(|&c| x[c]));
    }
    E::swish(isa, scratch, u, beta, operand, k_stride);
}

/// `x ← (x + h) / √2` (the bias is in `h` already): `x: [R, D]`, `h: [R, h_stride]`.
#[multiversion(targets("x86_64+avx512f+avx512vl+avx512dq+fma", "x86_64+avx2+fma"))]
fn residual_rows(x: &mut [f32], d: usize, h: &[f32], h_stride: usize) {
    for (x, h) in x.chunks_exact_mut(d).zip(h.chunks_exact(h_stride)) {
        for (x, &h) in x.iter_mut().zip(&h[..d]) {
            *x = (*x + h) * std::f32::consts::FRAC_1_SQRT_2;
        }
    }
}

/// The last block's residual over the updated half only:
/// `out[r, j] = (x[r, updated[j]] + h[r, j]) / √2`.
fn residual_gathered(x: &[f32], d: usize, updated: &[usize], h: &[f32], h_stride: usize, out: &mut [f32]) {
    let u = updated.len();
    for ((x, h), out) in x.chunks_exact(d).zip(h.chunks_exact(h_stride)).zip(out.chunks_exact_mut(u)) {
        for ((&c, &h), out) in updated.iter().zip(&h[..u]).zip(out) {
            *out = (x[c] + h) * std::f32::consts::FRAC_1_SQRT_2;
        }
    }
}

/// The inverse affine update's factors, in place over `[R, U]`:
/// `s ← e^{−tanh(s·s_scale)}`, `t ← t·t_scale`.
#[multiversion(targets("x86_64+avx512f+avx512vl+avx512dq+fma", "x86_64+avx2+fma"))]
fn inverse_affine(s: &mut [f32], t: &mut [f32], s_scale: &[f32], t_scale: &[f32]) {
    const FMA: bool = target_cfg_f!(target_feature = "fma");
    let u = s_scale.len();
    for (s, t) in s.chunks_exact_mut(u).zip(t.chunks_exact_mut(u)) {
        for (s, &scale) in s.iter_mut().zip(s_scale) {
            *s = exp::<FMA>(-tanh::<FMA>(*s * scale));
        }
        for (t, &scale) in t.iter_mut().zip(t_scale) {
            *t *= scale;
        }
    }
}

/// `z[r, updated[j]] ← (z[r, updated[j]] − t[r, j]) · s[r, j]`, with the
/// factors of [`inverse_affine`].
fn scatter_update(z: &mut [f32], d: usize, updated: &[usize], s: &[f32], t: &[f32]) {
    let u = updated.len();
    for ((z, s), t) in z.chunks_exact_mut(d).zip(s.chunks_exact(u)).zip(t.chunks_exact(u)) {
        for ((&c, &s), &t) in updated.iter().zip(s).zip(t) {
            z[c] = (z[c] - t) * s;
        }
    }
}
