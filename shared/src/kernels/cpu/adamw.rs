//! One AdamW update of a parameter tensor in place, in a single pass over
//! memory.

use multiversion::multiversion;

use crate::kernels::{AdamWScalars, AdamWStep};

/// AdamW on `param` with gradient `grad · grad_scale` and moments
/// `moment_1`, `moment_2` (all of one length), overwriting the parameter and
/// the moments; each element is computed with the same operations, in the
/// same order, as the composed reference.
pub fn adamw_update(
    param: &mut [f32],
    grad: &[f32],
    moment_1: &mut [f32],
    moment_2: &mut [f32],
    grad_scale: f32,
    step: &AdamWStep,
) {
    let n = param.len();
    assert!(grad.len() == n && moment_1.len() == n && moment_2.len() == n, "AdamW: tensors of different lengths");
    update(param, grad, moment_1, moment_2, grad_scale, &step.scalars());
}

#[multiversion(targets("x86_64+avx512f+avx512vl+avx512dq+fma", "x86_64+avx2+fma"))]
fn update(
    param: &mut [f32],
    grad: &[f32],
    moment_1: &mut [f32],
    moment_2: &mut [f32],
    grad_scale: f32,
    s: &AdamWScalars,
) {
    for ((p, &g), (m, v)) in param.iter_mut().zip(grad).zip(moment_1.iter_mut().zip(moment_2.iter_mut())) {
        let g = g * grad_scale;
        *m = *m * s.beta_1 + g * s.one_minus_beta_1;
        *v = *v * s.beta_2 + g * g * s.one_minus_beta_2;
        let delta = (*m / s.correction_1) / ((*v / s.correction_2).sqrt() + s.epsilon);
        *p = *p * s.keep - delta * s.lr;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::cpu::test_values::{close, values};

    /// One element against the formula in f64.
    #[test]
    fn the_update_follows_adamw() {
        let n = 1000;
        let (param, grad, m) = (values(n, 1, 1.0), values(n, 2, 0.1), values(n, 3, 0.01));
        let v: Vec<f32> = values(n, 4, 1e-3).iter().map(|x| x.abs()).collect();
        let step = AdamWStep { lr: 1e-2, beta_1: 0.9, beta_2: 0.999, epsilon: 1e-8, weight_decay: 0.05, time: 7 };
        let (mut p1, mut m1, mut v1) = (param.clone(), m.clone(), v.clone());
        adamw_update(&mut p1, &grad, &mut m1, &mut v1, 0.5, &step);

        let i = 17;
        let g = f64::from(grad[i]) * 0.5;
        let m_new = 0.9 * f64::from(m[i]) + 0.1 * g;
        let v_new = 0.999 * f64::from(v[i]) + 0.001 * g * g;
        let delta = (m_new / (1.0 - 0.9f64.powi(7))) / ((v_new / (1.0 - 0.999f64.powi(7))).sqrt() + 1e-8);
        let want = f64::from(param[i]) * (1.0 - 1e-2 * 0.05) - 1e-2 * delta;
        assert!(close(p1[i], want, 1e-6) && close(m1[i], m_new, 1e-6) && close(v1[i], v_new, 1e-6));
    }
}
