//! Drawing latents from the prior, with a temperature per level, and turning
//! them into images.

use burn::prelude::*;
use burn::tensor::TensorData;
use rand::SeedableRng;
use rand::rngs::StdRng;

use crate::error::{Error, Result};
use crate::flow::RgFlow;
use crate::preprocess;

/// A temperature for every level (index 0 = finest).
///
/// The paper's "effective temperature" samples fine levels colder than
/// coarse ones, e.g. 0.2 at the bottom and 0.8 at the top.
#[derive(Debug, Clone, PartialEq)]
pub struct LevelTemperatures(pub Vec<f64>);

impl LevelTemperatures {
    /// The same temperature at every level.
    pub fn uniform(levels: usize, temperature: f64) -> Self {
        Self(vec![temperature; levels])
    }

    /// Parses `"0.8"` (every level), `"0.2,0.2,0.8,0.8"` (one per level,
    /// finest first) or `"0.4..1"` (linear from the finest level to the
    /// coarsest, for a model of any depth).
    pub fn parse(text: &str, levels: usize) -> Result<Self> {
        let number = |v: &str| v.trim().parse::<f64>().map_err(|e| Error::Config(format!("temperature `{v}`: {e}")));
        if let Some((fine, coarse)) = text.split_once("..") {
            let (fine, coarse) = (number(fine)?, number(coarse)?);
            let step = if levels > 1 { (coarse - fine) / (levels - 1) as f64 } else { 0.0 };
            return Self::new((0..levels).map(|l| fine + step * l as f64).collect(), levels);
        }
        let values = text
            .split(',')
            .map(|v| v.trim().parse::<f64>().map_err(|e| Error::Config(format!("temperature `{v}`: {e}"))))
            .collect::<Result<Vec<_>>>()?;
        Self::new(values, levels)
    }

    /// One value for every level, or one per level (finest first); each finite and ≥ 0.
    pub fn new(values: Vec<f64>, levels: usize) -> Result<Self> {
        let temps = match values.len() {
            1 => vec![values[0]; levels],
            n if n == levels => values,
            n => return Err(Error::Config(format!("{n} temperatures for a model with {levels} levels"))),
        };
        if let Some(t) = temps.iter().find(|t| !(t.is_finite() && **t >= 0.0)) {
            return Err(Error::Config(format!("temperatures must be finite and non-negative, got {t}")));
        }
        Ok(Self(temps))
    }
}

impl RgFlow {
    /// The temperature of every latent element, `[C, L, L]` flattened.
    pub fn element_temperatures(&self, temps: &LevelTemperatures) -> Result<Vec<f32>> {
        let levels = self.lattice().levels();
        if temps.0.len() != levels {
            return Err(Error::Config(format!("{} temperatures for {levels} levels", temps.0.len())));
        }
        let per_site: Vec<f32> = self.lattice().site_level.iter().map(|&l| temps.0[l] as f32).collect();
        Ok(per_site.repeat(self.config().channels))
    }

    /// `n` latents from the prior at the given level temperatures, drawn on the
    /// host from `seed` (the same numbers on every backend and in the browser).
    ///
    /// Returns `z: [n, C, L, L]`.
    pub fn sample_latents(&self, n: usize, temps: &LevelTemperatures, seed: u64, device: &Device) -> Result<Tensor<4>> {
        let t = self.element_temperatures(temps)?;
        let prior = self.prior();
        let mut rng = StdRng::seed_from_u64(seed);
        let values: Vec<f32> =
            (0..n).flat_map(|_| t.iter().map(|&t| t * prior.sample_unit(&mut rng)).collect::<Vec<_>>()).collect();
        let c = self.config();
        Ok(Tensor::from_data(TensorData::new(values, [n, c.channels, c.image_size, c.image_size]), device))
    }

    /// Maps latents to images in `[0, 1]` (clamped).
    ///
    /// `z: [B, C, L, L] -> [B, C, L, L]`.
    pub fn decode(&self, z: Tensor<4>) -> Tensor<4> {
        let x = self.inverse_without_ldj(z);
        preprocess::logit_to_pixels(x, self.config().logit_constraint).clamp(0.0, 1.0)
    }

    /// Maps `[0, 1]` images (not dequantised) to their latents.
    ///
    /// `x01: [B, C, L, L] -> z: [B, C, L, L]`.
    pub fn encode(&self, x01: Tensor<4>) -> Tensor<4> {
        let (x, _) = preprocess::logit_transform(x01, self.config().logit_constraint);
        self.forward(x).0
    }

    /// `n` images from the prior: [`Self::sample_latents`] then [`Self::decode`].
    pub fn sample(&self, n: usize, temps: &LevelTemperatures, seed: u64, device: &Device) -> Result<Tensor<4>> {
        Ok(self.decode(self.sample_latents(n, temps, seed, device)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RgFlowConfig;

    #[test]
    fn temperatures_follow_levels() {
        let device = Device::flex();
        let flow = RgFlowConfig::from_level_specs(8, 1, "1", "1", "1", "4").unwrap().init(&device);
        let temps = LevelTemperatures::parse("0,2", 2).unwrap();
        let z = flow.sample_latents(3, &temps, 1, &device).unwrap().into_data().try_to_vec::<f32>().unwrap();
        for (i, &v) in z.iter().enumerate() {
            let site = i % 64;
            let top = (site / 8) % 2 == 0 && (site % 8) % 2 == 0;
            assert_eq!(v == 0.0, !top, "site {site}");
        }
        assert!(LevelTemperatures::parse("1,2,3", 2).is_err());
        let ramp = LevelTemperatures::parse("0.4..1", 4).unwrap().0;
        assert!(ramp.iter().zip([0.4, 0.6, 0.8, 1.0]).all(|(a, b)| (a - b).abs() < 1e-12), "{ramp:?}");
        assert_eq!(LevelTemperatures::parse("0.5..0.9", 1).unwrap().0, vec![0.5]);
        assert!(LevelTemperatures::parse("0.4..x", 4).is_err() && LevelTemperatures::parse("-1..1", 3).is_err());
        assert!(LevelTemperatures::parse("-1", 2).is_err());
        let again = flow.sample_latents(3, &temps, 1, &device).unwrap().into_data().try_to_vec::<f32>().unwrap();
        assert_eq!(z, again);
    }
}
