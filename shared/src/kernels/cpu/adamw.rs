//! One AdamW update of a parameter tensor in a single pass over memory.

use std::mem::MaybeUninit;

use multiversion::multiversion;

use crate::kernels::{AdamWScalars, AdamWStep};

/// One element's update: `(param, moment_1, moment_2)` from the old ones and
/// the gradient, with the same operations, in the same order, as the
/// composed reference.
#[inline(always)]
fn element(p: f32, g: f32, m: f32, v: f32, grad_scale: f32, s: &AdamWScalars) -> (f32, f32, f32) {
    let g = g * grad_scale;
    let m = m * s.beta_1 + g * s.one_minus_beta_1;
    let v = v * s.beta_2 + g * g * s.one_minus_beta_2;
    let delta = (m / s.correction_1) / ((v / s.correction_2).sqrt() + s.epsilon);
    (p * s.keep - delta * s.lr, m, v)
}

/// AdamW on `param` with gradient `grad · grad_scale` and moments
/// `moment_1`, `moment_2` (all of one length): the new
/// `(param, moment_1, moment_2)`.
pub fn adamw_update(
    param: &[f32],
    grad: &[f32],
    moment_1: &[f32],
    moment_2: &[f32],
    grad_scale: f32,
    step: &AdamWStep,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let n = param.len();
    assert!(grad.len() == n && moment_1.len() == n && moment_2.len() == n, "AdamW: tensors of different lengths");
    let [mut p, mut m, mut v] = [(); 3].map(|_| Vec::<f32>::with_capacity(n));
    update(
        [param, grad, moment_1, moment_2],
        grad_scale,
        &step.scalars(),
        [&mut p.spare_capacity_mut()[..n], &mut m.spare_capacity_mut()[..n], &mut v.spare_capacity_mut()[..n]],
    );
    // SAFETY: `update` wrote all `n` values of each output (one per input
    // element; the inputs have `n` each, checked above).
    unsafe {
        p.set_len(n);
        m.set_len(n);
        v.set_len(n);
    }
    (p, m, v)
}

/// [`adamw_update`] in place: the parameter and moments overwritten (no
/// allocation, and no fresh pages for the kernel to fault in).
pub fn adamw_update_in_place(
    param: &mut [f32],
    grad: &[f32],
    moment_1: &mut [f32],
    moment_2: &mut [f32],
    grad_scale: f32,
    step: &AdamWStep,
) {
    let n = param.len();
    assert!(grad.len() == n && moment_1.len() == n && moment_2.len() == n, "AdamW: tensors of different lengths");
    update_in_place(param, grad, moment_1, moment_2, grad_scale, &step.scalars());
}

#[multiversion(targets("x86_64+avx512f+avx512vl+avx512dq+fma", "x86_64+avx2+fma"))]
fn update(
    [param, grad, moment_1, moment_2]: [&[f32]; 4],
    grad_scale: f32,
    s: &AdamWScalars,
    [p_out, m_out, v_out]: [&mut [MaybeUninit<f32>]; 3],
) {
    let inputs = param.iter().zip(grad).zip(moment_1.iter().zip(moment_2));
    let outputs = p_out.iter_mut().zip(m_out.iter_mut().zip(v_out.iter_mut()));
    for (((&p, &g), (&m, &v)), (p_out, (m_out, v_out))) in inputs.zip(outputs) {
        let (p, m, v) = element(p, g, m, v, grad_scale, s);
        p_out.write(p);
        m_out.write(m);
        v_out.write(v);
    }
}

#[multiversion(targets("x86_64+avx512f+avx512vl+avx512dq+fma", "x86_64+avx2+fma"))]
fn update_in_place(
    param: &mut [f32],
    grad: &[f32],
    moment_1: &mut [f32],
    moment_2: &mut [f32],
    grad_scale: f32,
    s: &AdamWScalars,
) {
    for ((p, &g), (m, v)) in param.iter_mut().zip(grad).zip(moment_1.iter_mut().zip(moment_2.iter_mut())) {
        (*p, *m, *v) = element(*p, g, *m, *v, grad_scale, s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::cpu::test_values::{close, values};

    /// Both forms give the same bits, and one element against the formula
    /// in f64.
    #[test]
    fn in_place_and_allocating_updates_agree() {
        let n = 1000;
        let (param, grad, m) = (values(n, 1, 1.0), values(n, 2, 0.1), values(n, 3, 0.01));
        let v: Vec<f32> = values(n, 4, 1e-3).iter().map(|x| x.abs()).collect();
        let step = AdamWStep { lr: 1e-2, beta_1: 0.9, beta_2: 0.999, epsilon: 1e-8, weight_decay: 0.05, time: 7 };
        let (p1, m1, v1) = adamw_update(&param, &grad, &m, &v, 0.5, &step);
        let (mut p2, mut m2, mut v2) = (param.clone(), m.clone(), v.clone());
        adamw_update_in_place(&mut p2, &grad, &mut m2, &mut v2, 0.5, &step);
        assert!(p1 == p2 && m1 == m2 && v1 == v2);

        let i = 17;
        let g = f64::from(grad[i]) * 0.5;
        let m_new = 0.9 * f64::from(m[i]) + 0.1 * g;
        let v_new = 0.999 * f64::from(v[i]) + 0.001 * g * g;
        let delta = (m_new / (1.0 - 0.9f64.powi(7))) / ((v_new / (1.0 - 0.999f64.powi(7))).sqrt() + 1e-8);
        let want = f64::from(param[i]) * (1.0 - 1e-2 * 0.05) - 1e-2 * delta;
        assert!(close(p1[i], want, 1e-6) && close(m1[i], m_new, 1e-6) && close(v1[i], v_new, 1e-6));
    }
}
