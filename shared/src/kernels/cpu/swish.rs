//! Swish of a biased input, forward and backward.

use std::mem::MaybeUninit;

use multiversion::multiversion;
use multiversion::target::target_cfg_f;

use super::{for_rows, sigmoid};

/// Swish of a biased input, `y = u · σ(β u)` with `u = x + bias`:
/// `x: [M, F]`, `bias, beta: [F]` -> `[M, F]`.
pub fn swish(x: &[f32], bias: &[f32], beta: &[f32]) -> Vec<f32> {
    let f = beta.len();
    assert!(
        bias.len() == f && x.len().is_multiple_of(f),
        "swish: x [M, {f}] and bias [{f}], got {} and {}",
        x.len(),
        bias.len()
    );
    // SAFETY: `swish_rows` writes one value per element of `x`'s rows, and
    // the chunk of rows `rows` holds exactly those (the shapes checked above).
    let ([y], _) = unsafe {
        for_rows(x.len() / f, [f], 0, |rows, [y], _| {
            swish_rows(&x[rows.start * f..rows.end * f], bias, beta, y);
        })
    };
    y
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
    assert!(
        bias.len() == f && x.len().is_multiple_of(f) && g.len() == x.len(),
        "swish backward: x, g [M, {f}] and bias [{f}], got {}, {} and {}",
        x.len(),
        g.len(),
        bias.len()
    );
    // SAFETY: `swish_backward_rows` writes one value per element of `x`'s and
    // `g`'s rows, and the chunk of rows `rows` holds exactly those (the shapes
    // checked above).
    let ([grad_x], mut sums) = unsafe {
        for_rows(x.len() / f, [f], 2 * f, |rows, [grad_x], sums| {
            let span = rows.start * f..rows.end * f;
            let (grad_bias, grad_beta) = sums.split_at_mut(f);
            swish_backward_rows(&x[span.clone()], bias, beta, &g[span], grad_x, grad_bias, grad_beta);
        })
    };
    let grad_beta = sums.split_off(f);
    (grad_x, sums, grad_beta)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::cpu::test_values::{close, values};

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
            let (u, b, g) =
                (f64::from(x[i]) + f64::from(bias[i % features]), f64::from(beta[i % features]), f64::from(g[i]));
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
}
