//! Latent factors: moving one latent, or all latents of one level, around an
//! image's encoding.

use burn::prelude::*;
use burn::tensor::TensorData;
use rand::SeedableRng;
use rand::rngs::StdRng;

use crate::error::{Error, Result};
use crate::explore::levels::{level_values, with_level_values};
use crate::flow::RgFlow;

/// One latent: a channel at a lattice site.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LatentSite {
    /// Row of the site.
    pub row: usize,
    /// Column of the site.
    pub col: usize,
    /// Channel.
    pub channel: usize,
}

impl LatentSite {
    /// Flat element index `c·L² + row·L + col`, checked against the model.
    pub fn element(&self, flow: &RgFlow) -> Result<usize> {
        let c = flow.config();
        if self.row >= c.image_size || self.col >= c.image_size || self.channel >= c.channels {
            return Err(Error::Shape(format!(
                "latent ({}, {}, channel {}) is outside a {}×{}×{} model",
                self.row, self.col, self.channel, c.image_size, c.image_size, c.channels
            )));
        }
        Ok(self.channel * c.image_size * c.image_size + self.site(c.image_size))
    }

    /// Site index `row·L + col`.
    pub fn site(&self, size: usize) -> usize {
        self.row * size + self.col
    }

    /// The level this latent belongs to.
    pub fn level(&self, flow: &RgFlow) -> usize {
        flow.lattice().site_level[self.site(flow.config().image_size)]
    }

    /// The first site of `level` in raster order (a convenient default).
    pub fn first_of_level(flow: &RgFlow, level: usize, channel: usize) -> Result<Self> {
        let size = flow.config().image_size;
        let site = flow
            .lattice()
            .site_level
            .iter()
            .position(|&l| l == level)
            .ok_or_else(|| Error::Config(format!("the model has no level {level}")))?;
        Ok(Self { row: site / size, col: site % size, channel })
    }
}

/// Copies of `z: [1, C, L, L]` with one latent set to each of `values`:
/// `-> [values.len(), C, L, L]`.
pub fn vary_latent(flow: &RgFlow, z: Tensor<4>, latent: LatentSite, values: &[f32]) -> Result<Tensor<4>> {
    let [b, c, h, w] = z.dims();
    if b != 1 {
        return Err(Error::Shape(format!("vary_latent takes one encoding, got a batch of {b}")));
    }
    let e = latent.element(flow)?;
    let device = z.device();
    let base = z.reshape([1, c * h * w]).repeat_dim(0, values.len());
    let mut onehot = vec![0f32; c * h * w];
    onehot[e] = 1.0;
    let onehot = Tensor::<2>::from_data(TensorData::new(onehot, [1, c * h * w]), &device);
    let current = base.clone().slice([0..values.len(), e..e + 1]);
    let target = Tensor::<2>::from_data(TensorData::new(values.to_vec(), [values.len(), 1]), &device);
    Ok((base + (target - current) * onehot).reshape([values.len(), c, h, w]))
}

/// A random walk of the latents of one level, the rest fixed: `steps`
/// encodings starting at `z: [1, C, L, L]`, each step
/// `z ← cos θ · z + sin θ · ε` with `ε` from the prior (stationary at unit
/// temperature), so the walk wanders through typical values.
///
/// Returns `[steps, C, L, L]`.
pub fn random_walk(
    flow: &RgFlow,
    z: Tensor<4>,
    level: usize,
    steps: usize,
    angle: f64,
    seed: u64,
) -> Result<Tensor<4>> {
    if level >= flow.lattice().levels() {
        return Err(Error::Config(format!("the model has {} levels, no level {level}", flow.lattice().levels())));
    }
    let device = z.device();
    let mut current = level_values(flow, z.clone(), level);
    let n = current.dims()[1];
    let prior = flow.prior();
    let mut rng = StdRng::seed_from_u64(seed);
    let (s, c) = angle.sin_cos();
    let mut frames = Vec::with_capacity(steps);
    for _ in 0..steps {
        frames.push(with_level_values(flow, z.clone(), level, current.clone()));
        let noise: Vec<f32> = (0..n).map(|_| prior.sample_unit(&mut rng)).collect();
        let noise = Tensor::<2>::from_data(TensorData::new(noise, [1, n]), &device);
        current = current.mul_scalar(c) + noise.mul_scalar(s);
    }
    Ok(Tensor::cat(frames, 0))
}
