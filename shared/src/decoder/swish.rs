//! Swish into the next layer's operand: `operand[r, j] = u · σ(β_j u)` with
//! `u = h[r, j]`, rounded to the operand type, padding columns zeroed.
//!
//! Shapes: `h: [R, h_stride]`, `beta: [K]`, `operand: [R, k_stride]`.

use multiversion::multiversion;
use multiversion::target::target_cfg_f;

use super::matmul::Operand;
use crate::kernels::cpu::sigmoid;

/// Any CPU: plain loops the compiler vectorises.
#[multiversion(targets("x86_64+avx512f+avx512vl+avx512dq+avx512bw+fma", "x86_64+avx2+fma"))]
pub(super) fn swish_rows<E: Operand>(h: &[f32], h_stride: usize, beta: &[f32], operand: &mut [E], k_stride: usize) {
    const FMA: bool = target_cfg_f!(target_feature = "fma");
    let k = beta.len();
    for (h, a) in h.chunks_exact(h_stride).zip(operand.chunks_exact_mut(k_stride)) {
        for ((&u, &b), a) in h[..k].iter().zip(beta).zip(&mut a[..k]) {
            *a = E::from_f32(u * sigmoid::<FMA>(b * u));
        }
        a[k..].fill(E::default());
    }
}

#[cfg(target_arch = "x86_64")]
pub(super) mod avx512 {
    use std::arch::x86_64::*;

    use super::super::matmul::{Bf16, SwishBackward, first_lanes_16, first_lanes_32};

    /// `σ(x)` for 16 lanes, accurate to ~1e-4 relative: ample next to
    /// bf16's 8 bits, and half the instructions of the f32 kernels'.
    /// `e^{−x} = 2^n e^r` with `|r| ≤ ln 2 / 2` and a degree-4 Taylor
    /// polynomial for `e^r`; `vscalefps` applies `2^n` (0 or ∞ at the
    /// extremes, so no clamp is needed); the 14-bit reciprocal estimate
    /// divides.
    #[target_feature(enable = "avx512f")]
    fn sigmoid(x: __m512) -> __m512 {
        _mm512_rcp14_ps(one_plus_exp_neg::<4>(x))
    }

    /// `1 + e^{−x}` for 16 lanes, `e^r` by its Taylor polynomial of
    /// `DEGREE` (4: ~4e-5 relative; 6: ~2e-7).
    #[target_feature(enable = "avx512f")]
    #[inline]
    fn one_plus_exp_neg<const DEGREE: usize>(x: __m512) -> __m512 {
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm512_mul_ps(
            x,
            _mm512_set1_ps(-std::f32::consts::LOG2_E),
        ));
        // r = −x − n ln 2
        let r = _mm512_fnmsub_ps(n, _mm512_set1_ps(std::f32::consts::LN_2), x);
        // Horner from 1/DEGREE! down to 1.
        let mut p = _mm512_set1_ps(1.0 / factorial(DEGREE));
        for d in (0..DEGREE).rev() {
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0 / factorial(d)));
        }
        _mm512_add_ps(_mm512_scalef_ps(p, n), _mm512_set1_ps(1.0))
    }

    /// `d!` (exact in f32 for the degrees used).
    const fn factorial(d: usize) -> f32 {
        let mut product = 1.0;
        let mut i = 2;
        while i <= d {
            product *= i as f32;
            i += 1;
        }
        product
    }

    /// `u · σ(β u)` for 16 lanes, to [`sigmoid`]'s accuracy.
    #[target_feature(enable = "avx512f")]
    fn swish(u: __m512, beta: __m512) -> __m512 {
        _mm512_mul_ps(u, sigmoid(_mm512_mul_ps(beta, u)))
    }

    /// `σ(x)` for 16 lanes near f32's accuracy (a few ulp): `x` clamped to
    /// `[−87, 88]` as the exact kernel's `exp` clamps (past it `1 + e^{−x}`
    /// would be ∞ and the Newton step ∞ · 0; `max` and `min` keep a NaN),
    /// the degree-6 polynomial, and the reciprocal estimate refined by one
    /// Newton step, `s = s₀ (2 − d s₀)`: no division.
    #[target_feature(enable = "avx512f")]
    #[inline]
    fn sigmoid_fine(x: __m512) -> __m512 {
        let clamped = _mm512_min_ps(_mm512_set1_ps(88.0), _mm512_max_ps(_mm512_set1_ps(-87.0), x));
        let d = one_plus_exp_neg::<6>(clamped);
        let s0 = _mm512_rcp14_ps(d);
        _mm512_mul_ps(s0, _mm512_fnmadd_ps(d, s0, _mm512_set1_ps(2.0)))
    }

    /// The f32 operand without a division ([`sigmoid_fine`]; within 2e-6
    /// of the exact kernel, `fast_f32_swish_matches_the_exact_one`), the
    /// same σ the training backward's [`swish_backward_rows_fast`]
    /// recomputes. 16 columns per step, the last masked.
    ///
    /// # Safety
    /// AVX-512F; `h` must hold rows of `h_stride ≥ β.len()` values and
    /// `operand` as many rows of `k_stride ≥ β.len()`.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn swish_rows_f32_fast(h: &[f32], h_stride: usize, beta: &[f32], operand: &mut [f32], k_stride: usize) {
        let k = beta.len();
        for (h, a) in h.chunks_exact(h_stride).zip(operand.chunks_exact_mut(k_stride)) {
            let (h, (a, padding)) = (&h[..k], a.split_at_mut(k));
            for j in (0..k).step_by(16) {
                let mask = first_lanes_16(k - j);
                // SAFETY: the mask keeps every access inside `h[j..k]`,
                // `beta[j..k]` and `a[j..k]`.
                unsafe {
                    let u = _mm512_maskz_loadu_ps(mask, h.as_ptr().add(j));
                    let b = _mm512_maskz_loadu_ps(mask, beta.as_ptr().add(j));
                    let y = _mm512_mul_ps(u, sigmoid_fine(_mm512_mul_ps(b, u)));
                    _mm512_mask_storeu_ps(a.as_mut_ptr().add(j), mask, y);
                }
            }
            padding.fill(0.0);
        }
    }

    /// The Swish's backward ([`SwishBackward`]) for training on AVX-512, f32
    /// and bf16 alike, near f32's accuracy (a few ulp: [`sigmoid_fine`]'s
    /// degree-6 polynomial and Newton-refined reciprocal estimate) at a
    /// fraction of the exact kernel's cost (no division). 16 columns per
    /// step, the last masked.
    ///
    /// # Safety
    /// AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn swish_backward_rows_fast(tile: SwishBackward<'_>) {
        let SwishBackward { input, input_stride: stride, beta, grad, grad_stride, activation, grad_beta } = tile;
        let k = beta.len();
        assert!(stride >= k && grad_stride >= k && grad_beta.len() == k, "swish backward: shapes");
        let rows =
            input.chunks_exact(stride).zip(grad.chunks_exact_mut(grad_stride)).zip(activation.chunks_exact_mut(k));
        for ((u_row, g_row), a_row) in rows {
            for j in (0..k).step_by(16) {
                let mask = first_lanes_16(k - j);
                // SAFETY: the mask keeps every access inside the first `k`
                // values of the rows and of `beta` and `grad_beta`.
                unsafe {
                    let u = _mm512_maskz_loadu_ps(mask, u_row.as_ptr().add(j));
                    let b = _mm512_maskz_loadu_ps(mask, beta.as_ptr().add(j));
                    let g = _mm512_maskz_loadu_ps(mask, g_row.as_ptr().add(j));
                    let bu = _mm512_mul_ps(b, u);
                    let s = sigmoid_fine(bu);
                    let ds = _mm512_fnmadd_ps(s, s, s);
                    _mm512_mask_storeu_ps(a_row.as_mut_ptr().add(j), mask, _mm512_mul_ps(u, s));
                    let gb = _mm512_maskz_loadu_ps(mask, grad_beta.as_ptr().add(j));
                    let gu = _mm512_mul_ps(g, _mm512_mul_ps(u, u));
                    _mm512_mask_storeu_ps(grad_beta.as_mut_ptr().add(j), mask, _mm512_fmadd_ps(gu, ds, gb));
                    _mm512_mask_storeu_ps(
                        g_row.as_mut_ptr().add(j),
                        mask,
                        _mm512_mul_ps(g, _mm512_fmadd_ps(bu, ds, s)),
                    );
                }
            }
        }
    }

    /// The bf16 operand, 32 columns per step (two vectors into one
    /// `vcvtne2ps2bf16`), the last step masked.
    ///
    /// # Safety
    /// The CPU must have AVX-512F/BW and AVX512-BF16; `h` must hold rows of
    /// `h_stride ≥ β.len()` values and `operand` the same number of rows of
    /// `k_stride ≥ β.len()`.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub unsafe fn swish_rows_bf16(h: &[f32], h_stride: usize, beta: &[f32], operand: &mut [Bf16], k_stride: usize) {
        let k = beta.len();
        for (h, a) in h.chunks_exact(h_stride).zip(operand.chunks_exact_mut(k_stride)) {
            let (h, a) = (&h[..k], &mut a[..k]);
            for j in (0..k).step_by(32) {
                // Lanes past `k` load as zero, and are not stored.
                let mask = first_lanes_32(k - j);
                let (m0, m1) = (mask as u16, (mask >> 16) as u16);
                // SAFETY: the masks keep every access inside `h[j..k]`, `beta[j..k]`, `a[j..k]`.
                unsafe {
                    let u0 = _mm512_maskz_loadu_ps(m0, h.as_ptr().add(j));
                    let u1 = _mm512_maskz_loadu_ps(m1, h.as_ptr().add(j).wrapping_add(16));
                    let b0 = _mm512_maskz_loadu_ps(m0, beta.as_ptr().add(j));
                    let b1 = _mm512_maskz_loadu_ps(m1, beta.as_ptr().add(j).wrapping_add(16));
                    let y = _mm512_cvtne2ps_pbh(swish(u1, b1), swish(u0, b0));
                    _mm512_mask_storeu_epi16(
                        a.as_mut_ptr().add(j).cast(),
                        mask,
                        std::mem::transmute::<__m512bh, __m512i>(y),
                    );
                }
            }
        }
        for a in operand.chunks_exact_mut(k_stride) {
            a[k..].fill(Bf16::default());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decoder::matmul::{Bf16, Isa, SwishBackward};

    /// The fast Swish backward of training on AVX-512 matches the exact one to
    /// ~1e-6, activations, input gradients and `β`'s, for widths with and
    /// without a masked tail and saturated inputs.
    #[test]
    fn fast_swish_backward_matches_the_exact_one() {
        if !matches!(Isa::detect(), Isa::Avx512 | Isa::Avx512Bf16 | Isa::Amx) {
            return;
        }
        for k in [24, 128, 7] {
            let (rows, stride, grad_stride) = (6, k + 5, k + 3);
            let mut input: Vec<f32> = (0..rows * stride).map(|i| ((i * 37 % 201) as f32 - 100.0) / 9.0).collect();
            // Saturated far past the exponent's range, both ways.
            for (at, value) in [(1, -200.0), (k - 1, 200.0), (stride + 2, -1e4), (2 * stride, 1e4)] {
                input[at] = value;
            }
            let beta: Vec<f32> = (0..k).map(|j| 0.2 + j as f32 * 0.05).collect();
            let grad: Vec<f32> = (0..rows * grad_stride).map(|i| ((i * 13 % 41) as f32 - 20.0) / 10.0).collect();
            let run = |fast: bool| {
                let (mut g, mut a, mut gb) = (grad.clone(), vec![0.0f32; rows * k], vec![0.5f32; k]);
                let tile = SwishBackward {
                    input: &input,
                    input_stride: stride,
                    beta: &beta,
                    grad: &mut g,
                    grad_stride,
                    activation: &mut a,
                    grad_beta: &mut gb,
                };
                if fast {
                    // SAFETY: AVX-512F was detected.
                    unsafe { avx512::swish_backward_rows_fast(tile) };
                } else {
                    crate::kernels::cpu::stack::swish_backward_rows(tile);
                }
                (g, a, gb)
            };
            let (exact, fast) = (run(false), run(true));
            // Element by element; `β`'s gradient, a sum over rows with
            // cancellation, against its largest value.
            let close = |x: &[f32], y: &[f32], what: &str, sum: bool| {
                let scale = x.iter().fold(1f32, |m, v| m.max(v.abs()));
                for (i, (p, q)) in x.iter().zip(y).enumerate() {
                    let tol = 2e-6 * if sum { scale } else { 1.0 + p.abs() };
                    assert!((p - q).abs() <= tol, "k {k}, {what} {i}: {p} vs {q}");
                }
            };
            close(&exact.0, &fast.0, "input gradient", false);
            close(&exact.1, &fast.1, "activation", false);
            close(&exact.2, &fast.2, "β gradient", true);
        }
    }

    /// The division-free f32 Swish of AVX-512 matches the exact one to
    /// ~1e-6 relative, for widths with and without a masked tail, saturated
    /// inputs and padding columns (zeroed), and a NaN stays a NaN.
    #[test]
    fn fast_f32_swish_matches_the_exact_one() {
        if !matches!(Isa::detect(), Isa::Avx512 | Isa::Avx512Bf16 | Isa::Amx) {
            return;
        }
        for k in [24, 48, 128, 7] {
            let (rows, h_stride, k_stride) = (5, k + 3, k + 9);
            let mut h: Vec<f32> = (0..rows * h_stride).map(|i| ((i * 37 % 201) as f32 - 100.0) / 9.0).collect();
            for (at, value) in [(1, -200.0), (k - 1, 200.0), (h_stride + 2, -1e4), (2 * h_stride, 1e4)] {
                h[at] = value;
            }
            h[3 * h_stride + 1] = f32::NAN;
            let beta: Vec<f32> = (0..k).map(|j| 0.2 + j as f32 * 0.05).collect();
            let mut want = vec![f32::MAX; rows * k_stride];
            let mut got = want.clone();
            swish_rows(&h, h_stride, &beta, &mut want, k_stride);
            // SAFETY: AVX-512F was detected above; `h` and `got` hold `rows`
            // rows at their strides, both at least `k`.
            unsafe { avx512::swish_rows_f32_fast(&h, h_stride, &beta, &mut got, k_stride) };
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                if w.is_nan() {
                    assert!(g.is_nan(), "k {k}, element {i}: {g} for a NaN");
                } else {
                    assert!((g - w).abs() <= 2e-6 * (1.0 + w.abs()), "k {k}, element {i}: {g} vs {w}");
                }
            }
        }
    }

    /// The AVX-512 bf16 Swish rounds to the same bf16 value as the portable
    /// one, or to a neighbour (the reciprocal estimate), for widths with
    /// and without a masked tail.
    #[test]
    fn bf16_swish_matches_the_portable_one() {
        if !Isa::detect().native_bf16() {
            return;
        }
        for k in [24, 48, 128, 7] {
            let (rows, h_stride, k_stride) = (5, k + 3, k + k % 2);
            let h: Vec<f32> = (0..rows * h_stride).map(|i| ((i * 37 % 201) as f32 - 100.0) / 9.0).collect();
            let beta: Vec<f32> = (0..k).map(|j| 0.2 + j as f32 * 0.05).collect();
            let mut want = vec![Bf16(0xFFFF); rows * k_stride];
            let mut got = want.clone();
            swish_rows(&h, h_stride, &beta, &mut want, k_stride);
            // SAFETY: AVX512-BF16 was detected above; `h` and `got` hold `rows`
            // rows at their strides, both at least `k`.
            unsafe { avx512::swish_rows_bf16(&h, h_stride, &beta, &mut got, k_stride) };
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!(g.0.abs_diff(w.0) <= 1, "k {k}, element {i}: {:?} vs {:?}", g.to_f32(), w.to_f32());
            }
        }
    }
}
