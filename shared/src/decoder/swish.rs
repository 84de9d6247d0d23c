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

    use super::super::matmul::Bf16;

    /// `u · σ(β u)` for 16 lanes, accurate to ~1e-4 relative: ample for a
    /// result rounded to bf16's 8 bits, and half the instructions of the f32
    /// kernel's. `e^{−βu} = 2^n e^r` with `|r| ≤ ln 2 / 2` and a degree-4
    /// Taylor polynomial for `e^r`; `vscalefps` applies `2^n` (0 or ∞ at the
    /// extremes, so no clamp is needed); `σ` uses the 14-bit reciprocal
    /// estimate.
    #[target_feature(enable = "avx512f")]
    fn swish(u: __m512, beta: __m512) -> __m512 {
        let x = _mm512_mul_ps(beta, u);
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm512_mul_ps(
            x,
            _mm512_set1_ps(-std::f32::consts::LOG2_E),
        ));
        // r = −x − n ln 2
        let r = _mm512_fnmsub_ps(n, _mm512_set1_ps(std::f32::consts::LN_2), x);
        let mut p = _mm512_set1_ps(1.0 / 24.0);
        for c in [1.0 / 6.0, 0.5, 1.0, 1.0] {
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
        }
        let e = _mm512_scalef_ps(p, n);
        _mm512_mul_ps(u, _mm512_rcp14_ps(_mm512_add_ps(e, _mm512_set1_ps(1.0))))
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
                let lanes = (k - j).min(32);
                // Lanes past `k` load as zero, and are not stored.
                let mask = if lanes == 32 { u32::MAX } else { (1u32 << lanes) - 1 };
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
    use crate::decoder::matmul::{Bf16, Isa};

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
