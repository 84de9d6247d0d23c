//! One AdamW update of a parameter tensor in a single pass over memory.

use std::mem::MaybeUninit;

use multiversion::multiversion;

use crate::kernels::{AdamWScalars, AdamWStep};

/// AdamW on `param` with gradient `grad · grad_scale` and moments
/// `moment_1`, `moment_2` (all of one length): the new
/// `(param, moment_1, moment_2)`, each element computed with the same
/// operations, in the same order, as the composed reference.
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
        let g = g * grad_scale;
        let m = m * s.beta_1 + g * s.one_minus_beta_1;
        let v = v * s.beta_2 + g * g * s.one_minus_beta_2;
        let delta = (m / s.correction_1) / ((v / s.correction_2).sqrt() + s.epsilon);
        p_out.write(p * s.keep - delta * s.lr);
        m_out.write(m);
        v_out.write(v);
    }
}
