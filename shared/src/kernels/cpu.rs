//! Slice kernels behind the CPU backends' fused ops.
//!
//! The hot loops are written as plain per-element arithmetic with no branches
//! and no libm calls, so the compiler vectorises them; `multiversion` compiles
//! each one for AVX-512 and AVX2 and picks at run time (glibc's scalar `expf`
//! was a fifth of a training step before these kernels). Rows are split
//! across the thread pool; outputs are written once, never zero-filled first.
//!
//! Shapes: `[M, F]` tensors are row-major slices of `M · F` values, per-feature
//! vectors have `F` values.

use std::mem::MaybeUninit;
use std::ops::Range;

use multiversion::multiversion;
use multiversion::target::target_cfg_f;

/// `e^x` in f32 to within 2 ulp, branch-free (Cephes' `expf`): `x = n ln 2 + r`
/// with `|r| ≤ ln 2 / 2`, a degree-6 polynomial for `e^r`, and `2^n` built in
/// the exponent bits. Inputs are clamped to `[-87, 88]`, so the result is
/// finite and non-zero for every number (`e^{-87} ≈ 1.6e-38`) and NaN for
/// NaN; every caller either
/// feeds it bounded values or uses it inside `1 / (1 + e^x)`, where that is
/// exact to f32 precision.
#[inline(always)]
pub(crate) fn exp<const FMA: bool>(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split so that `n · LN2_HI` is exact.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding 1.5·2^23 rounds to the nearest integer in the default rounding mode.
    const ROUND: f32 = 12_582_912.0;
    // `clamp`, unlike `max`/`min`, keeps a NaN a NaN, so a diverging model
    // still shows up in its loss.
    let x = x.clamp(-87.0, 88.0);
    let n = mul_add::<FMA>(x, LOG2E, ROUND) - ROUND;
    let r = mul_add::<FMA>(n, -LN2_LO, mul_add::<FMA>(n, -LN2_HI, x));
    let p = 1.987_569_1e-4;
    let p = mul_add::<FMA>(p, r, 1.398_199_9e-3);
    let p = mul_add::<FMA>(p, r, 8.333_452e-3);
    let p = mul_add::<FMA>(p, r, 4.166_579_6e-2);
    let p = mul_add::<FMA>(p, r, 1.666_666_5e-1);
    let p = mul_add::<FMA>(p, r, 0.5);
    let er = mul_add::<FMA>(p, r * r, r + 1.0);
    // `n + 127` lands in the low mantissa bits of `n + 127 + 2^23`; shifting
    // them into the exponent field gives `2^n` (n ∈ [-126, 127] here).
    let two_n = f32::from_bits((n + 8_388_735.0).to_bits() << 23);
    er * two_n
}

/// `a · b + c`, fused where the running kernel was compiled with FMA (the
/// `multiversion` kernels pass `FMA` from the target they were built for; a
/// fused multiply-add without hardware support would be a slow libm call).
#[inline(always)]
fn mul_add<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA { a.mul_add(b, c) } else { a * b + c }
}

/// `σ(v) = 1 / (1 + e^{-v})`.
#[inline(always)]
fn sigmoid<const FMA: bool>(v: f32) -> f32 {
    1.0 / (1.0 + exp::<FMA>(-v))
}

/// `tanh(u) = 1 − 2 / (1 + e^{2u})`, exact in the limits.
#[inline(always)]
fn tanh<const FMA: bool>(u: f32) -> f32 {
    1.0 - 2.0 / (1.0 + exp::<FMA>(2.0 * u))
}

// ---------------------------------------------------------------- Swish --

/// Swish of a biased input, `y = u · σ(β u)` with `u = x + bias`:
/// `x: [M, F]`, `bias, beta: [F]` -> `[M, F]`.
pub fn swish(x: &[f32], bias: &[f32], beta: &[f32]) -> Vec<f32> {
    let f = beta.len();
    let y = Output::new(x.len());
    for_rows(x.len() / f, 0, |rows, _| {
        let span = rows.start * f..rows.end * f;
        swish_rows(&x[span.clone()], bias, beta, unsafe { y.slice(span) });
    });
    y.finish()
}

#[multiversion(targets("x86_64+avx512f+avx512vl+avx512dq+fma", "x86_64+avx2+fma"))]
fn swish_rows(x: &[f32], bias: &[f32], beta: &[f32], y: &mut [MaybeUninit<f32>]) {
    const FMA: bool = target_cfg_f!(target_feature = "fma");
    for (x, y) in x.chunks_exact(beta.len()).zip(y.chunks_exact_mut(beta.len())) {
        for (((&x, &c), &b), y) in x.iter().zip(bias).zip(beta).zip(y) {
            let u = x + c;
            y.write(u * sigmoid::<FMA>(b * u));
        }
    }
}

/// Gradients of [`swish`] given the output gradient `g: [M, F]`: with
/// `σ = σ(β u)`, `∂L/∂x = g (σ + β u σ (1 − σ))` (`[M, F]`), `∂L/∂bias` its
/// sum over rows and `∂L/∂β = Σ_rows g u² σ (1 − σ)` (both `[F]`).
pub fn swish_backward(x: &[f32], bias: &[f32], beta: &[f32], g: &[f32]) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let f = beta.len();
    let grad_x = Output::new(x.len());
    let mut sums = for_rows(x.len() / f, 2 * f, |rows, sums| {
        let span = rows.start * f..rows.end * f;
        let (grad_bias, grad_beta) = sums.split_at_mut(f);
        let grad_x = unsafe { grad_x.slice(span.clone()) };
        swish_backward_rows(&x[span.clone()], bias, beta, &g[span], grad_x, grad_bias, grad_beta);
    });
    let grad_beta = sums.split_off(f);
    (grad_x.finish(), sums, grad_beta)
}

#[multiversion(targets("x86_64+avx512f+avx512vl+avx512dq+fma", "x86_64+avx2+fma"))]
fn swish_backward_rows(
    x: &[f32],
    bias: &[f32],
    beta: &[f32],
    g: &[f32],
    grad_x: &mut [MaybeUninit<f32>],
    grad_bias: &mut [f32],
    grad_beta: &mut [f32],
) {
    const FMA: bool = target_cfg_f!(target_feature = "fma");
    let f = beta.len();
    let (bias, grad_bias, grad_beta) = (&bias[..f], &mut grad_bias[..f], &mut grad_beta[..f]);
    for ((x, g), gx) in x.chunks_exact(f).zip(g.chunks_exact(f)).zip(grad_x.chunks_exact_mut(f)) {
        for i in 0..f {
            let (u, b, g) = (x[i] + bias[i], beta[i], g[i]);
            let s = sigmoid::<FMA>(b * u);
            let ds = s * (1.0 - s);
            let gu = g * (s + b * u * ds);
            gx[i].write(gu);
            grad_bias[i] += gu;
            grad_beta[i] += g * u * u * ds;
        }
    }
}

// ------------------------------------------------------------- Residual --

/// The residual connection with the branch's last bias,
/// `(x + h + bias) / √2`: `x, h: [M, F]`, `bias: [F]` -> `[M, F]`.
pub fn residual(x: &[f32], h: &[f32], bias: &[f32]) -> Vec<f32> {
    let f = bias.len();
    let y = Output::new(x.len());
    for_rows(x.len() / f, 0, |rows, _| {
        let span = rows.start * f..rows.end * f;
        residual_rows(&x[span.clone()], &h[span.clone()], bias, unsafe { y.slice(span) });
    });
    y.finish()
}

#[multiversion(targets("x86_64+avx512f+avx512vl+avx512dq+fma", "x86_64+avx2+fma"))]
fn residual_rows(x: &[f32], h: &[f32], bias: &[f32], y: &mut [MaybeUninit<f32>]) {
    let f = bias.len();
    for ((x, h), y) in x.chunks_exact(f).zip(h.chunks_exact(f)).zip(y.chunks_exact_mut(f)) {
        for (((x, h), b), y) in x.iter().zip(h).zip(bias).zip(y) {
            y.write((x + h + b) * std::f32::consts::FRAC_1_SQRT_2);
        }
    }
}

/// Gradients of [`residual`] given `g: [M, F]`: `g / √2`, which is the
/// gradient of both `x` and `h`, and its sum over rows for the bias (`[F]`).
pub fn residual_backward(g: &[f32], features: usize) -> (Vec<f32>, Vec<f32>) {
    let scaled = Output::new(g.len());
    let grad_bias = for_rows(g.len() / features, features, |rows, grad_bias| {
        let span = rows.start * features..rows.end * features;
        residual_backward_rows(&g[span.clone()], unsafe { scaled.slice(span) }, grad_bias);
    });
    (scaled.finish(), grad_bias)
}

#[multiversion(targets("x86_64+avx512f+avx512vl+avx512dq+fma", "x86_64+avx2+fma"))]
fn residual_backward_rows(g: &[f32], scaled: &mut [MaybeUninit<f32>], grad_bias: &mut [f32]) {
    let f = grad_bias.len();
    for (g, out) in g.chunks_exact(f).zip(scaled.chunks_exact_mut(f)) {
        for ((g, out), gb) in g.iter().zip(out).zip(grad_bias.iter_mut()) {
            let v = g * std::f32::consts::FRAC_1_SQRT_2;
            out.write(v);
            *gb += v;
        }
    }
}

// ------------------------------------------------------------- Coupling --

/// The inputs of one affine coupling update, all `f32` slices:
/// `x, s_raw, t_raw: [M, F]`, `s_scale, t_scale, mask: [F]`.
///
/// The update acts where `mask = 1`: `s = tanh(s_raw · s_scale) · mask`,
/// `t = t_raw · t_scale · mask`, and `y = x · e^s + t` (or, inverse,
/// `y = (x − t) · e^{−s}`).
#[derive(Clone, Copy)]
pub struct Coupling<'a> {
    pub x: &'a [f32],
    pub s_raw: &'a [f32],
    pub t_raw: &'a [f32],
    pub s_scale: &'a [f32],
    pub t_scale: &'a [f32],
    pub mask: &'a [f32],
    pub inverse: bool,
}

impl Coupling<'_> {
    fn features(&self) -> usize {
        self.mask.len()
    }

    fn rows(&self, span: Range<usize>) -> Self {
        Self { x: &self.x[span.clone()], s_raw: &self.s_raw[span.clone()], t_raw: &self.t_raw[span], ..*self }
    }
}

/// Gradients of a coupling update: `[M, F]` for `x`, `s_raw`, `t_raw`, `[F]`
/// for `s_scale`, `t_scale`.
pub struct CouplingGrads {
    pub x: Vec<f32>,
    pub s_raw: Vec<f32>,
    pub t_raw: Vec<f32>,
    pub s_scale: Vec<f32>,
    pub t_scale: Vec<f32>,
}

/// `y: [M, F]` of a coupling update.
pub fn coupling_update(c: Coupling<'_>) -> Vec<f32> {
    let f = c.features();
    let y = Output::new(c.x.len());
    for_rows(c.x.len() / f, 0, |rows, _| {
        let span = rows.start * f..rows.end * f;
        coupling_rows(c.rows(span.clone()), unsafe { y.slice(span) });
    });
    y.finish()
}

#[multiversion(targets("x86_64+avx512f+avx512vl+avx512dq+fma", "x86_64+avx2+fma"))]
fn coupling_rows<'a>(c: Coupling<'a>, y: &mut [MaybeUninit<f32>]) {
    const FMA: bool = target_cfg_f!(target_feature = "fma");
    let f = c.features();
    let per_feature = || c.s_scale.iter().zip(c.t_scale).zip(c.mask);
    let rows = c.x.chunks_exact(f).zip(c.s_raw.chunks_exact(f)).zip(c.t_raw.chunks_exact(f)).zip(y.chunks_exact_mut(f));
    // Two loops rather than a branch per element, so each vectorises.
    if c.inverse {
        for (((x, sr), tr), y) in rows {
            for ((((x, sr), tr), y), ((a, b), m)) in x.iter().zip(sr).zip(tr).zip(y).zip(per_feature()) {
                let t = tr * b * m;
                y.write((x - t) * exp::<FMA>(-tanh::<FMA>(sr * a) * m));
            }
        }
    } else {
        for (((x, sr), tr), y) in rows {
            for ((((x, sr), tr), y), ((a, b), m)) in x.iter().zip(sr).zip(tr).zip(y).zip(per_feature()) {
                y.write(x * exp::<FMA>(tanh::<FMA>(sr * a) * m) + tr * b * m);
            }
        }
    }
}

/// Gradients of [`coupling_update`] given `grad_y: [M, F]`.
pub fn coupling_update_backward(c: Coupling<'_>, grad_y: &[f32]) -> CouplingGrads {
    let f = c.features();
    let n = c.x.len();
    let (gx, gs, gt) = (Output::new(n), Output::new(n), Output::new(n));
    let scales = for_rows(n / f, 2 * f, |rows, scales| {
        let span = rows.start * f..rows.end * f;
        let (gs_scale, gt_scale) = scales.split_at_mut(f);
        let outs = unsafe { [gx.slice(span.clone()), gs.slice(span.clone()), gt.slice(span.clone())] };
        coupling_backward_rows(c.rows(span.clone()), &grad_y[span], outs, gs_scale, gt_scale);
    });
    CouplingGrads {
        x: gx.finish(),
        s_raw: gs.finish(),
        t_raw: gt.finish(),
        s_scale: scales[..f].to_vec(),
        t_scale: scales[f..].to_vec(),
    }
}

#[multiversion(targets("x86_64+avx512f+avx512vl+avx512dq+fma", "x86_64+avx2+fma"))]
fn coupling_backward_rows<'a>(
    c: Coupling<'a>,
    grad_y: &[f32],
    [gx, gs, gt]: [&mut [MaybeUninit<f32>]; 3],
    gs_scale: &mut [f32],
    gt_scale: &mut [f32],
) {
    const FMA: bool = target_cfg_f!(target_feature = "fma");
    let f = c.features();
    let (s_scale, t_scale, mask) = (&c.s_scale[..f], &c.t_scale[..f], &c.mask[..f]);
    let (gs_scale, gt_scale) = (&mut gs_scale[..f], &mut gt_scale[..f]);
    for row in 0..grad_y.len() / f {
        // Row slices of length `f`, so the loop below has no bounds checks.
        let span = row * f..(row + 1) * f;
        let (x, sr, tr, gy) = (&c.x[span.clone()], &c.s_raw[span.clone()], &c.t_raw[span.clone()], &grad_y[span.clone()]);
        let (gx, gs, gt) = (&mut gx[span.clone()], &mut gs[span.clone()], &mut gt[span]);
        for i in 0..f {
            let (x, sr, tr, m, gy) = (x[i], sr[i], tr[i], mask[i], gy[i]);
            let (a, b) = (s_scale[i], t_scale[i]);
            let th = tanh::<FMA>(sr * a);
            let s = th * m;
            let t = tr * b * m;
            // ∂y/∂x, and ∂L/∂s and ∂L/∂t for each direction.
            let (dx, g_s, g_t) = if c.inverse {
                let e = exp::<FMA>(-s);
                let y = (x - t) * e;
                (e, -gy * y, -gy * e)
            } else {
                let e = exp::<FMA>(s);
                (e, gy * x * e, gy)
            };
            gx[i].write(gy * dx);
            // s = tanh::<FMA>(s_raw a) m, t = t_raw b m.
            let du = g_s * (1.0 - th * th) * m;
            gs[i].write(du * a);
            gs_scale[i] += du * sr;
            gt[i].write(g_t * m * b);
            gt_scale[i] += g_t * m * tr;
        }
    }
}

/// `Σ_f tanh(s_raw · s_scale) · mask` per row: the log-determinant of a
/// forward coupling update. `s_raw: [M, F]`, `s_scale, mask: [F]` -> `[M]`.
pub fn coupling_log_scale(s_raw: &[f32], s_scale: &[f32], mask: &[f32]) -> Vec<f32> {
    let f = mask.len();
    let out = Output::new(s_raw.len() / f);
    for_rows(s_raw.len() / f, 0, |rows, _| {
        let span = rows.start * f..rows.end * f;
        log_scale_rows(&s_raw[span], s_scale, mask, unsafe { out.slice(rows) });
    });
    out.finish()
}

#[multiversion(targets("x86_64+avx512f+avx512vl+avx512dq+fma", "x86_64+avx2+fma"))]
fn log_scale_rows(s_raw: &[f32], s_scale: &[f32], mask: &[f32], out: &mut [MaybeUninit<f32>]) {
    const FMA: bool = target_cfg_f!(target_feature = "fma");
    // A row's sum is accumulated in `LANES` independent partial sums (one
    // vector register), since a plain running sum cannot be vectorised
    // without reordering the additions.
    const LANES: usize = 16;
    let f = mask.len();
    let whole = f - f % LANES;
    for (sr, out) in s_raw.chunks_exact(f).zip(out) {
        let mut lanes = [0.0f32; LANES];
        for ((sr, a), m) in sr[..whole].chunks_exact(LANES).zip(s_scale.chunks_exact(LANES)).zip(mask.chunks_exact(LANES)) {
            for j in 0..LANES {
                lanes[j] += tanh::<FMA>(sr[j] * a[j]) * m[j];
            }
        }
        let tail: f32 = (whole..f).map(|i| tanh::<FMA>(sr[i] * s_scale[i]) * mask[i]).sum();
        out.write(lanes.iter().sum::<f32>() + tail);
    }
}

/// Gradients of [`coupling_log_scale`] given `grad: [M]`:
/// `(∂L/∂s_raw: [M, F], ∂L/∂s_scale: [F])`.
pub fn coupling_log_scale_backward(s_raw: &[f32], s_scale: &[f32], mask: &[f32], grad: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let f = mask.len();
    let gs = Output::new(s_raw.len());
    let g_scale = for_rows(grad.len(), f, |rows, g_scale| {
        let span = rows.start * f..rows.end * f;
        log_scale_backward_rows(&s_raw[span.clone()], s_scale, mask, &grad[rows], unsafe { gs.slice(span) }, g_scale);
    });
    (gs.finish(), g_scale)
}

#[multiversion(targets("x86_64+avx512f+avx512vl+avx512dq+fma", "x86_64+avx2+fma"))]
fn log_scale_backward_rows(
    s_raw: &[f32],
    s_scale: &[f32],
    mask: &[f32],
    grad: &[f32],
    gs: &mut [MaybeUninit<f32>],
    g_scale: &mut [f32],
) {
    const FMA: bool = target_cfg_f!(target_feature = "fma");
    let f = mask.len();
    for ((sr, gs), &g) in s_raw.chunks_exact(f).zip(gs.chunks_exact_mut(f)).zip(grad) {
        for i in 0..f {
            let th = tanh::<FMA>(sr[i] * s_scale[i]);
            let du = g * (1.0 - th * th) * mask[i];
            gs[i].write(du * s_scale[i]);
            g_scale[i] += du * sr[i];
        }
    }
}

// ---------------------------------------------------------- Weight norm --

/// The weight-normalised matrix `W = g · v / ‖v‖`, norms per output column:
/// `v: [I, O]` (row-major), `g: [O]` -> `[I, O]`. Small (weights, not
/// activations), so one thread.
pub fn weight_norm(v: &[f32], g: &[f32]) -> Vec<f32> {
    let scale: Vec<f32> = column_norms(v, g.len()).iter().zip(g).map(|(n, g)| g / n).collect();
    v.chunks_exact(g.len()).flat_map(|row| row.iter().zip(&scale).map(|(v, s)| v * s)).collect()
}

/// Gradients of [`weight_norm`] given `grad: [I, O]`: with `n = ‖v‖` and
/// `c = Σ_rows grad · v`, `∂L/∂v = (g / n) (grad − v c / n²)` (`[I, O]`) and
/// `∂L/∂g = c / n` (`[O]`).
pub fn weight_norm_backward(v: &[f32], g: &[f32], grad: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let out = g.len();
    let norms = column_norms(v, out);
    let mut c = vec![0.0f32; out];
    for (v, gw) in v.chunks_exact(out).zip(grad.chunks_exact(out)) {
        c.iter_mut().zip(v).zip(gw).for_each(|((c, v), gw)| *c += v * gw);
    }
    let grad_g: Vec<f32> = c.iter().zip(&norms).map(|(c, n)| c / n).collect();
    let (a, b): (Vec<f32>, Vec<f32>) =
        norms.iter().zip(g).zip(&c).map(|((n, g), c)| (g / n, g * c / (n * n * n))).unzip();
    let mut grad_v = Vec::with_capacity(v.len());
    for (v, gw) in v.chunks_exact(out).zip(grad.chunks_exact(out)) {
        grad_v.extend((0..out).map(|o| a[o] * gw[o] - b[o] * v[o]));
    }
    (grad_v, grad_g)
}

/// `‖v[:, o]‖` for each of the `out` columns of a row-major `[I, out]`.
fn column_norms(v: &[f32], out: usize) -> Vec<f32> {
    let mut sums = vec![0.0f32; out];
    for row in v.chunks_exact(out) {
        sums.iter_mut().zip(row).for_each(|(s, v)| *s += v * v);
    }
    sums.iter().map(|s| s.sqrt()).collect()
}

// ------------------------------------------------------------ Threading --

/// Rows handed to one task: big enough that the pool's overhead (µs) is
/// small next to the work, small enough to split a batch across threads.
#[cfg(feature = "parallel")]
const ROWS_PER_TASK: usize = 512;

/// Runs `task(rows, partials)` over `0..m` in row ranges, on the thread pool
/// when there is more than one range. Each task accumulates into its own
/// zeroed `partials` of `partial_len` values; returns their sum.
fn for_rows(m: usize, partial_len: usize, task: impl Fn(Range<usize>, &mut [f32]) + Sync) -> Vec<f32> {
    #[cfg(feature = "parallel")]
    if m > ROWS_PER_TASK {
        use rayon::prelude::*;
        let ranges: Vec<Range<usize>> =
            (0..m).step_by(ROWS_PER_TASK).map(|start| start..(start + ROWS_PER_TASK).min(m)).collect();
        return ranges
            .into_par_iter()
            .map(|rows| {
                let mut partials = vec![0.0; partial_len];
                task(rows, &mut partials);
                partials
            })
            .reduce(
                || vec![0.0; partial_len],
                |mut a, b| {
                    a.iter_mut().zip(&b).for_each(|(a, b)| *a += b);
                    a
                },
            );
    }
    let mut partials = vec![0.0; partial_len];
    task(0..m, &mut partials);
    partials
}

/// An output buffer that tasks fill in disjoint ranges, without zeroing it
/// first.
struct Output {
    values: Vec<MaybeUninit<f32>>,
}

// SAFETY: tasks only touch disjoint ranges (see `slice`).
unsafe impl Sync for Output {}

impl Output {
    fn new(len: usize) -> Self {
        let mut values = Vec::with_capacity(len);
        values.resize_with(len, MaybeUninit::uninit);
        Self { values }
    }

    /// A mutable view of `range`.
    ///
    /// # Safety
    /// No two live views may overlap; `for_rows` hands every task its own rows.
    #[allow(clippy::mut_from_ref)]
    unsafe fn slice(&self, range: Range<usize>) -> &mut [MaybeUninit<f32>] {
        assert!(range.end <= self.values.len());
        unsafe { std::slice::from_raw_parts_mut(self.values.as_ptr().add(range.start).cast_mut(), range.len()) }
    }

    /// The values, once every one has been written.
    fn finish(self) -> Vec<f32> {
        let mut values = std::mem::ManuallyDrop::new(self.values);
        // SAFETY: every kernel writes each element of its range, and the
        // ranges cover the buffer; `MaybeUninit<f32>` has `f32`'s layout.
        unsafe { Vec::from_raw_parts(values.as_mut_ptr().cast::<f32>(), values.len(), values.capacity()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ulp_error(ours: f32, exact: f64) -> f64 {
        let ulp = f64::from(f32::EPSILON) * exact.abs();
        (f64::from(ours) - exact).abs() / ulp
    }

    fn close(ours: f32, want: f64, tol: f64) -> bool {
        (f64::from(ours) - want).abs() <= tol * (1.0 + want.abs())
    }

    /// Deterministic test values in about `[-scale, scale]`.
    fn values(n: usize, seed: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|i| (((i * 7919 + seed * 104_729) % 2001) as f32 / 1000.0 - 1.0) * scale).collect()
    }

    #[test]
    fn exp_is_within_two_ulp_over_the_clamped_range() {
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x <= 88.0 {
            worst = worst.max(ulp_error(exp::<false>(x), f64::from(x).exp()));
            worst = worst.max(ulp_error(exp::<true>(x), f64::from(x).exp()));
            x += 0.001_3;
        }
        assert!(worst < 2.0, "worst error {worst} ulp");
        assert_eq!(exp::<false>(0.0), 1.0);
        assert_eq!(exp::<true>(0.0), 1.0);
        // Clamped, never infinite or zero.
        assert!(exp::<false>(1000.0).is_finite() && exp::<false>(-1000.0) > 0.0);
        assert!(exp::<false>(f32::NAN).is_nan() && exp::<true>(f32::NAN).is_nan());
        assert!(tanh::<false>(f32::NAN).is_nan() && sigmoid::<true>(f32::NAN).is_nan());
        assert_eq!(tanh::<false>(100.0), 1.0);
        assert_eq!(tanh::<true>(-100.0), -1.0);
    }

    #[test]
    fn swish_and_its_gradients_match_f64_formulas() {
        let features = 5;
        let beta = [1.0f32, 0.5, -0.7, 2.0, 0.0];
        let bias = [0.3f32, -1.0, 0.0, 2.0, -0.5];
        // 300 rows: more than one task.
        let x = values(features * 300, 1, 7.0);
        let g = values(x.len(), 2, 1.6);
        let y = swish(&x, &bias, &beta);
        let (grad_x, grad_bias, grad_beta) = swish_backward(&x, &bias, &beta, &g);

        let mut want_bias = vec![0.0f64; features];
        let mut want_beta = vec![0.0f64; features];
        for i in 0..x.len() {
            let (u, b, g) = (f64::from(x[i]) + f64::from(bias[i % features]), f64::from(beta[i % features]), f64::from(g[i]));
            let s = 1.0 / (1.0 + (-b * u).exp());
            assert!(close(y[i], u * s, 1e-5), "y[{i}]");
            let gu = g * (s + b * u * s * (1.0 - s));
            assert!(close(grad_x[i], gu, 1e-5), "grad_x[{i}]");
            want_bias[i % features] += gu;
            want_beta[i % features] += g * u * u * s * (1.0 - s);
        }
        for (ours, want) in grad_bias.iter().zip(&want_bias).chain(grad_beta.iter().zip(&want_beta)) {
            assert!(close(*ours, *want, 1e-4), "{ours} vs {want}");
        }
    }

    #[test]
    fn residual_and_its_gradients() {
        let f = 7;
        let (x, h, bias, g) = (values(f * 300, 1, 2.0), values(f * 300, 2, 2.0), values(f, 3, 1.0), values(f * 300, 4, 1.0));
        let y = residual(&x, &h, &bias);
        let (scaled, grad_bias) = residual_backward(&g, f);
        let mut want_bias = vec![0.0f64; f];
        for i in 0..x.len() {
            let want = (f64::from(x[i]) + f64::from(h[i]) + f64::from(bias[i % f])) / 2f64.sqrt();
            assert!(close(y[i], want, 1e-6), "y[{i}]");
            assert!(close(scaled[i], f64::from(g[i]) / 2f64.sqrt(), 1e-6), "∂[{i}]");
            want_bias[i % f] += f64::from(g[i]) / 2f64.sqrt();
        }
        for (ours, want) in grad_bias.iter().zip(&want_bias) {
            assert!(close(*ours, *want, 1e-4), "{ours} vs {want}");
        }
    }

    #[test]
    fn weight_norm_and_its_gradients_match_differences() {
        let (i, o) = (5, 4);
        let (v, g, gw) = (values(i * o, 1, 2.0), values(o, 2, 1.5), values(i * o, 3, 1.0));
        let w = weight_norm(&v, &g);
        let (grad_v, grad_g) = weight_norm_backward(&v, &g, &gw);
        // f64 model: L = Σ gw · W(v, g).
        let loss = |v: &[f64], g: &[f64]| -> f64 {
            (0..o)
                .map(|c| {
                    let n = (0..i).map(|r| v[r * o + c].powi(2)).sum::<f64>().sqrt();
                    (0..i).map(|r| f64::from(gw[r * o + c]) * g[c] * v[r * o + c] / n).sum::<f64>()
                })
                .sum()
        };
        let (v64, g64): (Vec<f64>, Vec<f64>) = (v.iter().map(|&x| x.into()).collect(), g.iter().map(|&x| x.into()).collect());
        for r in 0..i {
            for c in 0..o {
                let n = (0..i).map(|r| v64[r * o + c].powi(2)).sum::<f64>().sqrt();
                assert!(close(w[r * o + c], g64[c] * v64[r * o + c] / n, 1e-6));
            }
        }
        let h = 1e-6;
        for k in 0..v.len() {
            let (mut up, mut down) = (v64.clone(), v64.clone());
            up[k] += h;
            down[k] -= h;
            assert!(close(grad_v[k], (loss(&up, &g64) - loss(&down, &g64)) / (2.0 * h), 1e-4), "∂v[{k}]");
        }
        for k in 0..o {
            let (mut up, mut down) = (g64.clone(), g64.clone());
            up[k] += h;
            down[k] -= h;
            assert!(close(grad_g[k], (loss(&v64, &up) - loss(&v64, &down)) / (2.0 * h), 1e-4), "∂g[{k}]");
        }
    }

    /// The coupling update, its log-scale and all their gradients against
    /// central differences of an f64 model of the same formulas.
    #[test]
    fn coupling_kernels_match_f64_formulas_and_differences() {
        let f = 6;
        let m = 200;
        let (x, s_raw, t_raw) = (values(m * f, 3, 2.0), values(m * f, 4, 3.0), values(m * f, 5, 2.0));
        let (s_scale, t_scale) = (values(f, 6, 0.8), values(f, 7, 1.5));
        let mask = [1.0, 0.0, 1.0, 0.0, 1.0, 0.0];
        let gy = values(m * f, 8, 1.0);
        let gl = values(m, 9, 1.0);

        for inverse in [false, true] {
            let c = Coupling { x: &x, s_raw: &s_raw, t_raw: &t_raw, s_scale: &s_scale, t_scale: &t_scale, mask: &mask, inverse };
            let y = coupling_update(c);
            let log_scale = coupling_log_scale(&s_raw, &s_scale, &mask);
            let grads = coupling_update_backward(c, &gy);
            let (gs_log, g_scale_log) = coupling_log_scale_backward(&s_raw, &s_scale, &mask, &gl);

            // f64 model of one element: (y, s).
            let model = |x: f64, sr: f64, tr: f64, a: f64, b: f64, m: f64| {
                let s = (sr * a).tanh() * m;
                let t = tr * b * m;
                if inverse { ((x - t) * (-s).exp(), s) } else { (x * s.exp() + t, s) }
            };
            let h = 1e-6;
            let mut want_a = vec![0.0f64; f];
            let mut want_b = vec![0.0f64; f];
            let mut want_a_log = vec![0.0f64; f];
            for r in 0..m {
                let mut row_sum = 0.0;
                for i in 0..f {
                    let k = r * f + i;
                    let args = [x[k], s_raw[k], t_raw[k], s_scale[i], t_scale[i], mask[i]].map(f64::from);
                    let eval = |j: usize, d: f64| {
                        let mut a = args;
                        a[j] += d;
                        model(a[0], a[1], a[2], a[3], a[4], a[5])
                    };
                    let (want_y, s) = eval(0, 0.0);
                    row_sum += s;
                    assert!(close(y[k], want_y, 1e-5), "y[{k}] inverse={inverse}");
                    let dy = |j| (eval(j, h).0 - eval(j, -h).0) / (2.0 * h);
                    let ds = |j| (eval(j, h).1 - eval(j, -h).1) / (2.0 * h);
                    let g = f64::from(gy[k]);
                    assert!(close(grads.x[k], g * dy(0), 1e-4), "∂x[{k}]");
                    assert!(close(grads.s_raw[k], g * dy(1), 1e-4), "∂s_raw[{k}]");
                    assert!(close(grads.t_raw[k], g * dy(2), 1e-4), "∂t_raw[{k}]");
                    want_a[i] += g * dy(3);
                    want_b[i] += g * dy(4);
                    let gl = f64::from(gl[r]);
                    assert!(close(gs_log[k], gl * ds(1), 1e-4), "log-scale ∂s_raw[{k}]");
                    want_a_log[i] += gl * ds(3);
                }
                assert!(close(log_scale[r], row_sum, 1e-5), "log-scale[{r}]");
            }
            for i in 0..f {
                assert!(close(grads.s_scale[i], want_a[i], 1e-3), "∂s_scale[{i}] inverse={inverse}");
                assert!(close(grads.t_scale[i], want_b[i], 1e-3), "∂t_scale[{i}]");
                assert!(close(g_scale_log[i], want_a_log[i], 1e-3), "log-scale ∂s_scale[{i}]");
            }
        }
    }
}
