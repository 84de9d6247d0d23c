//! The affine coupling update and its log-determinant, forward and backward.

use std::mem::MaybeUninit;
use std::ops::Range;

use multiversion::multiversion;
use multiversion::target::target_cfg_f;

use super::{exp, for_rows, tanh};
use crate::flow::Direction;

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
    pub direction: Direction,
}

impl Coupling<'_> {
    fn features(&self) -> usize {
        self.mask.len()
    }

    /// Panics unless the slices have the shapes above; returns `M`.
    fn check_shapes(&self) -> usize {
        let f = self.features();
        assert!(
            self.x.len().is_multiple_of(f)
                && self.s_raw.len() == self.x.len()
                && self.t_raw.len() == self.x.len()
                && self.s_scale.len() == f
                && self.t_scale.len() == f,
            "coupling: x, s_raw, t_raw [M, {f}] and s_scale, t_scale [{f}], got {}, {}, {}, {} and {}",
            self.x.len(),
            self.s_raw.len(),
            self.t_raw.len(),
            self.s_scale.len(),
            self.t_scale.len()
        );
        self.x.len() / f
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
    let (f, m) = (c.features(), c.check_shapes());
    // SAFETY: `coupling_rows` writes one value per element of its inputs'
    // rows, and the chunk of rows `rows` holds exactly those (the shapes
    // checked above).
    let ([y], _) = unsafe {
        for_rows(m, [f], 0, |rows, [y], _| {
            coupling_rows(c.rows(rows.start * f..rows.end * f), y);
        })
    };
    y
}

#[multiversion(targets("x86_64+avx512f+avx512vl+avx512dq+fma", "x86_64+avx2+fma"))]
fn coupling_rows<'a>(c: Coupling<'a>, y: &mut [MaybeUninit<f32>]) {
    const FMA: bool = target_cfg_f!(target_feature = "fma");
    let f = c.features();
    let per_feature = || c.s_scale.iter().zip(c.t_scale).zip(c.mask);
    let rows = c.x.chunks_exact(f).zip(c.s_raw.chunks_exact(f)).zip(c.t_raw.chunks_exact(f)).zip(y.chunks_exact_mut(f));
    // Two loops rather than a branch per element, so each vectorises.
    if c.direction == Direction::Inverse {
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
    let (f, m) = (c.features(), c.check_shapes());
    assert_eq!(grad_y.len(), c.x.len(), "coupling backward: grad_y has x's shape [M, {f}]");
    // SAFETY: `coupling_backward_rows` writes each of its three outputs once
    // per element of `grad_y`'s rows, and each chunk of rows `rows` holds
    // exactly those (the shapes checked above).
    let ([gx, gs, gt], scales) = unsafe {
        for_rows(m, [f; 3], 2 * f, |rows, outs, scales| {
            let span = rows.start * f..rows.end * f;
            let (gs_scale, gt_scale) = scales.split_at_mut(f);
            coupling_backward_rows(c.rows(span.clone()), &grad_y[span], outs, gs_scale, gt_scale);
        })
    };
    CouplingGrads { x: gx, s_raw: gs, t_raw: gt, s_scale: scales[..f].to_vec(), t_scale: scales[f..].to_vec() }
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
        let (x, sr, tr, gy) =
            (&c.x[span.clone()], &c.s_raw[span.clone()], &c.t_raw[span.clone()], &grad_y[span.clone()]);
        let (gx, gs, gt) = (&mut gx[span.clone()], &mut gs[span.clone()], &mut gt[span]);
        for i in 0..f {
            let (x, sr, tr, m, gy) = (x[i], sr[i], tr[i], mask[i], gy[i]);
            let (a, b) = (s_scale[i], t_scale[i]);
            let th = tanh::<FMA>(sr * a);
            let s = th * m;
            let t = tr * b * m;
            // ∂y/∂x, and ∂L/∂s and ∂L/∂t for each direction.
            let (dx, g_s, g_t) = if c.direction == Direction::Inverse {
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
    assert!(
        s_raw.len().is_multiple_of(f) && s_scale.len() == f,
        "coupling log-scale: s_raw [M, {f}] and s_scale [{f}], got {} and {}",
        s_raw.len(),
        s_scale.len()
    );
    // SAFETY: `log_scale_rows` writes one value per row of `s_raw`, and the
    // chunk of rows `rows` holds one value per row (the shapes checked above).
    let ([out], _) = unsafe {
        for_rows(s_raw.len() / f, [1], 0, |rows, [out], _| {
            log_scale_rows(&s_raw[rows.start * f..rows.end * f], s_scale, mask, out);
        })
    };
    out
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
        for ((sr, a), m) in
            sr[..whole].chunks_exact(LANES).zip(s_scale.chunks_exact(LANES)).zip(mask.chunks_exact(LANES))
        {
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
    assert!(
        s_raw.len() == grad.len() * f && s_scale.len() == f,
        "coupling log-scale backward: s_raw [M, {f}], s_scale [{f}] and grad [M], got {}, {} and {}",
        s_raw.len(),
        s_scale.len(),
        grad.len()
    );
    // SAFETY: `log_scale_backward_rows` writes one value per element of
    // `s_raw`'s rows, and the chunk of rows `rows` holds exactly those (the
    // shapes checked above).
    let ([gs], g_scale) = unsafe {
        for_rows(grad.len(), [f], f, |rows, [gs], g_scale| {
            log_scale_backward_rows(&s_raw[rows.start * f..rows.end * f], s_scale, mask, &grad[rows], gs, g_scale);
        })
    };
    (gs, g_scale)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::cpu::test_values::{close, values};

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

        for direction in [Direction::Forward, Direction::Inverse] {
            let inverse = direction == Direction::Inverse;
            let c = Coupling {
                x: &x,
                s_raw: &s_raw,
                t_raw: &t_raw,
                s_scale: &s_scale,
                t_scale: &t_scale,
                mask: &mask,
                direction,
            };
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
