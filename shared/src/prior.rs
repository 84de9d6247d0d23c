//! The factorised sparse prior over latents, with a temperature per level.

use burn::prelude::*;
use rand::Rng;
use statrs::function::erf::{erfc, erfc_inv};

use crate::config::PriorKind;

const LN_2PI: f64 = 1.8378770664093453;

/// Where [`Prior::to_gaussian`] clips a Laplace latent, in scales: `exp(-700)`
/// is still a normal `f64`, and such a latent has prior probability `e^-700`.
const MAX_LAPLACE_TAIL: f64 = 700.0;

/// The prior `p(z) = Π p(z_k)` of the latents.
///
/// At temperature `T` the Laplace prior has scale `T/√2` (variance `T²`) and
/// the Gaussian standard deviation `T`, as in the authors' `get_prior`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Prior {
    /// Laplace or Gaussian.
    pub kind: PriorKind,
}

impl Prior {
    /// The prior of the given kind.
    pub fn new(kind: PriorKind) -> Self {
        Self { kind }
    }

    /// The distribution's scale at temperature `t` (`T/√2` or `T`).
    pub fn scale(&self, temperature: f64) -> f64 {
        match self.kind {
            PriorKind::Laplace => temperature * std::f64::consts::FRAC_1_SQRT_2,
            PriorKind::Gaussian => temperature,
        }
    }

    /// `log p(z)` summed over all but the batch axis, at temperature 1.
    ///
    /// `z: [B, ...] -> [B]`.
    pub fn log_prob<const D: usize>(&self, z: Tensor<D>) -> Tensor<1> {
        let [batch] = [z.dims()[0]];
        let z = z.reshape([batch as i64, -1]);
        let n = z.dims()[1] as f64;
        let s = self.scale(1.0);
        let per_batch = match self.kind {
            PriorKind::Laplace => z.abs().sum_dim(1).mul_scalar(-1.0 / s).add_scalar(-n * (2.0 * s).ln()),
            PriorKind::Gaussian => {
                z.square().sum_dim(1).mul_scalar(-0.5 / (s * s)).add_scalar(-n * (s.ln() + 0.5 * LN_2PI))
            }
        };
        per_batch.squeeze_dim(1)
    }

    /// `log p_t(z)` of one latent under the prior at temperature `t > 0`.
    pub fn log_density(&self, z: f64, t: f64) -> f64 {
        let s = self.scale(t);
        match self.kind {
            PriorKind::Laplace => -z.abs() / s - (2.0 * s).ln(),
            PriorKind::Gaussian => -0.5 * (z / s).powi(2) - s.ln() - 0.5 * LN_2PI,
        }
    }

    /// Maps a latent drawn from this prior at temperature `t > 0` to a
    /// standard normal value with the same quantile: `Φ⁻¹(F_t(z))`.
    ///
    /// Moves that preserve a standard normal (a Crank–Nicolson step
    /// `√(1-β²)·w + β·ξ`) then preserve the prior once mapped back with
    /// [`Self::from_gaussian`]. The Laplace tails are computed from
    /// `P(|Z| > |z|) = exp(-|z|/s)`, so large latents keep their precision.
    pub fn to_gaussian(&self, z: f64, t: f64) -> f64 {
        match self.kind {
            PriorKind::Laplace => {
                let a = (z.abs() / self.scale(t)).min(MAX_LAPLACE_TAIL);
                z.signum() * std::f64::consts::SQRT_2 * erfc_inv((-a).exp())
            }
            PriorKind::Gaussian => z / t,
        }
    }

    /// The inverse of [`Self::to_gaussian`]: `F_t⁻¹(Φ(w))`.
    pub fn from_gaussian(&self, w: f64, t: f64) -> f64 {
        match self.kind {
            PriorKind::Laplace => {
                let a = -erfc(w.abs() * std::f64::consts::FRAC_1_SQRT_2).ln();
                w.signum() * self.scale(t) * a.min(MAX_LAPLACE_TAIL)
            }
            PriorKind::Gaussian => w * t,
        }
    }

    /// One draw at temperature 1, computed on the host so that every backend
    /// (and the browser) sees the same numbers for the same seed.
    pub fn sample_unit<R: Rng + ?Sized>(&self, rng: &mut R) -> f32 {
        let s = self.scale(1.0);
        match self.kind {
            PriorKind::Laplace => {
                // Inverse CDF as the authors: u ∈ (-1, 1), z = s·sign(u)·log(1 - |u|).
                let u: f64 = rng.random_range(f64::EPSILON - 1.0..1.0);
                (s * u.signum() * (-u.abs()).ln_1p()) as f32
            }
            PriorKind::Gaussian => {
                // Box–Muller.
                let u1: f64 = 1.0 - rng.random::<f64>();
                let u2: f64 = rng.random::<f64>();
                (s * (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn unit_samples_have_unit_variance() {
        for kind in [PriorKind::Laplace, PriorKind::Gaussian] {
            let prior = Prior::new(kind);
            let mut rng = rand::rngs::StdRng::seed_from_u64(1);
            let n = 200_000;
            let xs: Vec<f64> = (0..n).map(|_| prior.sample_unit(&mut rng) as f64).collect();
            let mean = xs.iter().sum::<f64>() / n as f64;
            let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
            assert!(mean.abs() < 0.01 && (var - 1.0).abs() < 0.02, "{kind:?}: mean {mean}, var {var}");
        }
    }

    #[test]
    fn gaussian_map_is_a_quantile_map_and_inverts() {
        for kind in [PriorKind::Laplace, PriorKind::Gaussian] {
            let prior = Prior::new(kind);
            for t in [0.3, 1.0] {
                for z in [-40.0, -3.0, -0.2, 0.0, 1e-9, 0.5, 2.0, 25.0] {
                    let w = prior.to_gaussian(z, t);
                    let back = prior.from_gaussian(w, t);
                    assert!((back - z).abs() <= 1e-9 * z.abs().max(1.0), "{kind:?} t {t}: {z} -> {w} -> {back}");
                }
            }
            // Prior draws map to standard normal values.
            let mut rng = rand::rngs::StdRng::seed_from_u64(3);
            let n = 100_000;
            let ws: Vec<f64> =
                (0..n).map(|_| prior.to_gaussian(0.5 * prior.sample_unit(&mut rng) as f64, 0.5)).collect();
            let var = ws.iter().map(|w| w * w).sum::<f64>() / n as f64;
            let tail = ws.iter().filter(|w| w.abs() > 1.959964).count() as f64 / n as f64;
            assert!((var - 1.0).abs() < 0.02 && (tail - 0.05).abs() < 0.004, "{kind:?}: var {var}, tail {tail}");
        }
        // The Laplace median maps to 0 and its quartile to Φ⁻¹(0.75).
        let laplace = Prior::new(PriorKind::Laplace);
        let quartile = laplace.scale(1.0) * 2f64.ln();
        assert!((laplace.to_gaussian(quartile, 1.0) - 0.6744897501960817).abs() < 1e-12);
    }
}
