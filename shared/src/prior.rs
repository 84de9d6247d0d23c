//! The factorised sparse prior over latents, with a temperature per level.

use burn::prelude::*;
use rand::Rng;

use crate::config::PriorKind;

const LN_2PI: f64 = 1.8378770664093453;

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
}
