//! Weight normalisation, forward and backward.

/// The weight-normalised matrix `W = g · v / ‖v‖`, norms per output column:
/// `v: [I, O]` (row-major), `g: [O]` -> `[I, O]`. Small (weights, not
/// activations), so one thread.
pub fn weight_norm(v: &[f32], g: &[f32]) -> Vec<f32> {
    let scale: Vec<f32> = column_norms(v, g.len()).iter().zip(g).map(|(n, g)| g / n).collect();
    // Row by row in place: a `flat_map` into `collect` neither sizes nor
    // vectorises (a third of a model load in the browser).
    let mut w = v.to_vec();
    for row in w.chunks_exact_mut(g.len()) {
        row.iter_mut().zip(&scale).for_each(|(w, s)| *w *= s);
    }
    w
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::cpu::test_values::{close, values};

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
        let (v64, g64): (Vec<f64>, Vec<f64>) =
            (v.iter().map(|&x| x.into()).collect(), g.iter().map(|&x| x.into()).collect());
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
}
