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

mod adamw;
mod coupling;
mod residual;
pub mod stack;
mod swish;
mod weight_norm;

pub use adamw::adamw_update;
pub use coupling::{
    Coupling, coupling_log_scale, coupling_log_scale_backward, coupling_update, coupling_update_backward,
};
pub use residual::{residual, residual_backward};
pub use swish::{swish, swish_backward};
pub use weight_norm::{weight_norm, weight_norm_backward};

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
pub(crate) fn sigmoid<const FMA: bool>(v: f32) -> f32 {
    1.0 / (1.0 + exp::<FMA>(-v))
}

/// `tanh(u) = 1 − 2 / (1 + e^{2u})`, exact in the limits.
#[inline(always)]
pub(crate) fn tanh<const FMA: bool>(u: f32) -> f32 {
    1.0 - 2.0 / (1.0 + exp::<FMA>(2.0 * u))
}

// ------------------------------------------------------------ Threading --

/// Rows handed to one task: big enough that the pool's overhead (µs) is
/// small next to the work, small enough to split a batch across threads.
const ROWS_PER_TASK: usize = 512;

/// One task's rows of an output, not yet written.
type Chunk<'a> = &'a mut [MaybeUninit<f32>];

/// Runs `task(rows, outputs, partials)` over `0..m` in fixed ranges of
/// [`ROWS_PER_TASK`] rows, on the thread pool when there is more than one.
///
/// The task fills its rows of `N` outputs of `m` rows (output `i` with
/// `widths[i]` values a row), which are not zeroed first: it gets the
/// still-uninitialised chunk of each output that holds its rows. It also
/// accumulates into its own zeroed `partials` of `partial_len` values; they
/// are summed in row order, so the result is the same whatever the pool's
/// scheduling, thread count or build (training resumes exactly). Returns the
/// outputs and the summed partials.
///
/// # Safety
///
/// `task` must write every element of every chunk it is handed (or panic):
/// the outputs are returned as initialised values. The callers' row kernels
/// zip their inputs with the chunks, so each caller first asserts that its
/// inputs hold all `m` rows.
unsafe fn for_rows<const N: usize>(
    m: usize,
    widths: [usize; N],
    partial_len: usize,
    task: impl Fn(Range<usize>, [Chunk<'_>; N], &mut [f32]) + Sync,
) -> ([Vec<f32>; N], Vec<f32>) {
    assert!(widths.iter().all(|&w| w > 0), "an output row holds at least one value");
    let mut outputs: [Vec<f32>; N] = widths.map(|w| Vec::with_capacity(m * w));
    let partials: Vec<Vec<f32>> = {
        let mut chunks: Vec<_> = outputs
            .iter_mut()
            .zip(widths)
            .map(|(out, w)| out.spare_capacity_mut()[..m * w].chunks_mut(ROWS_PER_TASK * w))
            .collect();
        // Every output has one chunk per range of rows.
        let tasks: Vec<(Range<usize>, [Chunk<'_>; N])> = (0..m)
            .step_by(ROWS_PER_TASK)
            .map(|start| {
                let rows = start..(start + ROWS_PER_TASK).min(m);
                (rows, std::array::from_fn(|i| chunks[i].next().expect("a chunk per range of rows")))
            })
            .collect();
        let run = |(rows, outs): (Range<usize>, [Chunk<'_>; N])| {
            let mut partials = vec![0.0; partial_len];
            task(rows, outs, &mut partials);
            partials
        };
        #[cfg(feature = "parallel")]
        let partials = if m > ROWS_PER_TASK {
            use rayon::prelude::*;
            tasks.into_par_iter().map(run).collect()
        } else {
            tasks.into_iter().map(run).collect()
        };
        #[cfg(not(feature = "parallel"))]
        let partials = tasks.into_iter().map(run).collect();
        partials
    };
    for (out, w) in outputs.iter_mut().zip(widths) {
        // SAFETY: the chunks above cover the first `m · w` values of `out`'s
        // capacity, and every task has written each element of its chunks
        // (this function's contract; a panicking task never gets here).
        unsafe { out.set_len(m * w) };
    }
    let mut sum = vec![0.0; partial_len];
    for partial in &partials {
        sum.iter_mut().zip(partial).for_each(|(s, p)| *s += p);
    }
    (outputs, sum)
}

#[cfg(test)]
pub(crate) mod test_values {
    pub fn ulp_error(ours: f32, exact: f64) -> f64 {
        let ulp = f64::from(f32::EPSILON) * exact.abs();
        (f64::from(ours) - exact).abs() / ulp
    }

    pub fn close(ours: f32, want: f64, tol: f64) -> bool {
        (f64::from(ours) - want).abs() <= tol * (1.0 + want.abs())
    }

    /// Deterministic test values in about `[-scale, scale]`.
    pub fn values(n: usize, seed: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|i| (((i * 7919 + seed * 104_729) % 2001) as f32 / 1000.0 - 1.0) * scale).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::test_values::{ulp_error, values};
    use super::*;

    /// Per-feature sums come out bit-identical however the pool ran the
    /// tasks (here: many tasks, repeated).
    #[test]
    fn row_reductions_are_deterministic() {
        let features = 64;
        let (x, g) = (values(features * 20_000, 1, 3.0), values(features * 20_000, 2, 1.0));
        let (bias, beta) = (values(features, 3, 1.0), values(features, 4, 2.0));
        let first = swish_backward(&x, &bias, &beta, &g);
        for _ in 0..5 {
            let again = swish_backward(&x, &bias, &beta, &g);
            assert_eq!(first.1, again.1);
            assert_eq!(first.2, again.2);
        }
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
}
