//! Slice kernels behind the CPU backends' fused ops.
//!
//! The hot loops are written as plain per-element arithmetic with no branches
//! and no libm calls, so the compiler vectorises them; `multiversion` compiles
//! each one for AVX-512 and AVX2 and picks at run time (glibc's scalar `expf`
//! was a fifth of a training step before these kernels).

use multiversion::multiversion;

/// Rows handed to one thread at a time: big enough that the thread pool's
/// overhead (~µs) is small next to the work, small enough to split a batch.
#[cfg(feature = "parallel")]
const ROWS_PER_TASK: usize = 64;

/// `e^x` in f32 to within 2 ulp, branch-free (Cephes' `expf`): `x = n ln 2 + r`
/// with `|r| ≤ ln 2 / 2`, a degree-6 polynomial for `e^r`, and `2^n` built in
/// the exponent bits. Inputs are clamped to `[-87, 88]`, so the result is
/// always finite and non-zero (`e^{-87} ≈ 1.6e-38`): the callers only use it
/// inside `1 / (1 + e^x)`, where that is exact to f32 precision.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split so that `n · LN2_HI` is exact.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding 1.5·2^23 rounds to the nearest integer in the default rounding mode.
    const ROUND: f32 = 12_582_912.0;
    let x = x.max(-87.0).min(88.0);
    let n = (x * LOG2E + ROUND) - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.987_569_1e-4;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 5.000_000_1e-1;
    let er = p * r * r + r + 1.0;
    // `n + 127` lands in the low mantissa bits of `n + 127 + 2^23`; shifting
    // them into the exponent field gives `2^n` (n ∈ [-126, 127] here).
    let two_n = f32::from_bits((n + 8_388_735.0).to_bits() << 23);
    er * two_n
}

/// `σ(v) = 1 / (1 + e^{-v})`.
#[inline(always)]
fn sigmoid(v: f32) -> f32 {
    1.0 / (1.0 + exp(-v))
}

/// Swish `y = x · σ(β x)` over rows of `beta.len()` features.
pub fn swish(x: &[f32], beta: &[f32], y: &mut [f32]) {
    for_row_chunks(x, beta.len(), y, |x, y| swish_rows(x, beta, y));
}

#[multiversion(targets("x86_64+avx512f+avx512vl+avx512dq+fma", "x86_64+avx2+fma"))]
fn swish_rows(x: &[f32], beta: &[f32], y: &mut [f32]) {
    for (x, y) in x.chunks_exact(beta.len()).zip(y.chunks_exact_mut(beta.len())) {
        for ((&x, &b), y) in x.iter().zip(beta).zip(y) {
            *y = x * sigmoid(b * x);
        }
    }
}

/// Gradients of Swish given the output gradient `g`:
/// `∂y/∂x = σ + β x σ (1 − σ)` into `grad_x`, and `∂y/∂β = x² σ (1 − σ)`
/// summed over rows, returned.
pub fn swish_backward(x: &[f32], beta: &[f32], g: &[f32], grad_x: &mut [f32]) -> Vec<f32> {
    let features = beta.len();
    let task = |x: &[f32], g: &[f32], grad_x: &mut [f32]| {
        let mut grad_beta = vec![0.0; features];
        swish_backward_rows(x, beta, g, grad_x, &mut grad_beta);
        grad_beta
    };
    #[cfg(feature = "parallel")]
    {
        use rayon::prelude::*;
        let chunk = ROWS_PER_TASK * features;
        if x.len() > chunk {
            return x
                .par_chunks(chunk)
                .zip(g.par_chunks(chunk))
                .zip(grad_x.par_chunks_mut(chunk))
                .map(|((x, g), grad_x)| task(x, g, grad_x))
                .reduce(|| vec![0.0; features], |a, b| a.iter().zip(&b).map(|(a, b)| a + b).collect());
        }
    }
    task(x, g, grad_x)
}

#[multiversion(targets("x86_64+avx512f+avx512vl+avx512dq+fma", "x86_64+avx2+fma"))]
fn swish_backward_rows(x: &[f32], beta: &[f32], g: &[f32], grad_x: &mut [f32], grad_beta: &mut [f32]) {
    let f = beta.len();
    for ((x, g), gx) in x.chunks_exact(f).zip(g.chunks_exact(f)).zip(grad_x.chunks_exact_mut(f)) {
        for i in 0..f {
            let (x, b, g) = (x[i], beta[i], g[i]);
            let s = sigmoid(b * x);
            let ds = s * (1.0 - s);
            gx[i] = g * (s + b * x * ds);
            grad_beta[i] += g * x * x * ds;
        }
    }
}

/// Runs `rows(x_chunk, y_chunk)` over whole rows of `features`, split across
/// the thread pool when there is enough work.
fn for_row_chunks(x: &[f32], features: usize, y: &mut [f32], rows: impl Fn(&[f32], &mut [f32]) + Sync) {
    debug_assert_eq!(x.len(), y.len());
    debug_assert_eq!(x.len() % features.max(1), 0);
    #[cfg(feature = "parallel")]
    {
        use rayon::prelude::*;
        let chunk = ROWS_PER_TASK * features;
        if x.len() > chunk {
            x.par_chunks(chunk).zip(y.par_chunks_mut(chunk)).for_each(|(x, y)| rows(x, y));
            return;
        }
    }
    rows(x, y)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ulp_error(ours: f32, exact: f64) -> f64 {
        let ulp = f64::from(f32::EPSILON) * exact.abs();
        (f64::from(ours) - exact).abs() / ulp
    }

    #[test]
    fn exp_is_within_two_ulp_over_the_clamped_range() {
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x <= 88.0 {
            worst = worst.max(ulp_error(exp(x), f64::from(x).exp()));
            x += 0.001_3;
        }
        assert!(worst < 2.0, "worst error {worst} ulp");
        assert_eq!(exp(0.0), 1.0);
        // Clamped, never infinite or zero.
        assert!(exp(1000.0).is_finite() && exp(-1000.0) > 0.0);
    }

    #[test]
    fn swish_and_its_gradients_match_f64_formulas() {
        let features = 5;
        let beta = [1.0f32, 0.5, -0.7, 2.0, 0.0];
        let x: Vec<f32> = (0..features * 300).map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0).collect();
        let g: Vec<f32> = (0..x.len()).map(|i| ((i * 13 % 17) as f32 - 8.0) / 5.0).collect();
        let mut y = vec![0.0; x.len()];
        swish(&x, &beta, &mut y);
        let mut grad_x = vec![0.0; x.len()];
        let grad_beta = swish_backward(&x, &beta, &g, &mut grad_x);

        let mut want_beta = vec![0.0f64; features];
        for i in 0..x.len() {
            let (x, b, g) = (f64::from(x[i]), f64::from(beta[i % features]), f64::from(g[i]));
            let s = 1.0 / (1.0 + (-b * x).exp());
            assert!((f64::from(y[i]) - x * s).abs() < 1e-5 * (1.0 + x.abs()), "y[{i}]");
            let want_gx = g * (s + b * x * s * (1.0 - s));
            assert!((f64::from(grad_x[i]) - want_gx).abs() < 1e-5 * (1.0 + want_gx.abs()), "grad_x[{i}]");
            want_beta[i % features] += g * x * x * s * (1.0 - s);
        }
        for (ours, want) in grad_beta.iter().zip(&want_beta) {
            assert!((f64::from(*ours) - want).abs() < 1e-4 * (1.0 + want.abs()), "{ours} vs {want}");
        }
    }
}
