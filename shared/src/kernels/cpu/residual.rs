//! The residual sum with the branch's last bias, forward and backward.

use std::mem::MaybeUninit;

use multiversion::multiversion;

use super::for_rows;

/// The residual connection with the branch's last bias,
/// `(x + h + bias) / √2`: `x, h: [M, F]`, `bias: [F]` -> `[M, F]`.
pub fn residual(x: &[f32], h: &[f32], bias: &[f32]) -> Vec<f32> {
    let f = bias.len();
    assert!(
        x.len().is_multiple_of(f) && h.len() == x.len(),
        "residual: x, h [M, {f}], got {} and {}",
        x.len(),
        h.len()
    );
    // SAFETY: `residual_rows` writes one value per element of `x`'s and `h`'s
    // rows, and the chunk of rows `rows` holds exactly those (the shapes
    // checked above).
    let ([y], _) = unsafe {
        for_rows(x.len() / f, [f], 0, |rows, [y], _| {
            let span = rows.start * f..rows.end * f;
            residual_rows(&x[span.clone()], &h[span], bias, y);
        })
    };
    y
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
    assert!(g.len().is_multiple_of(features), "residual backward: g [M, {features}], got {} values", g.len());
    // SAFETY: `residual_backward_rows` writes one value per element of `g`'s
    // rows, and the chunk of rows `rows` holds exactly those.
    let ([scaled], grad_bias) = unsafe {
        for_rows(g.len() / features, [features], features, |rows, [scaled], grad_bias| {
            residual_backward_rows(&g[rows.start * features..rows.end * features], scaled, grad_bias);
        })
    };
    (scaled, grad_bias)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::cpu::test_values::{close, values};

    #[test]
    fn residual_and_its_gradients() {
        let f = 7;
        let (x, h, bias, g) =
            (values(f * 300, 1, 2.0), values(f * 300, 2, 2.0), values(f, 3, 1.0), values(f * 300, 4, 1.0));
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

    /// The row kernels zip their inputs, so a short input would leave output
    /// values unwritten: the shapes are refused before any is handed out.
    #[test]
    #[should_panic(expected = "residual: x, h [M, 7]")]
    fn a_short_input_is_refused_not_read_as_output() {
        let f = 7;
        let _ = residual(&values(f * 600, 1, 1.0), &values(f * 599, 2, 1.0), &values(f, 3, 1.0));
    }
}
