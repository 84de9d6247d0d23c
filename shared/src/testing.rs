//! Helpers for tests and benchmarks: a model whose couplings are not the
//! identity (a fresh model is, because every final `Scale` starts at zero).

use burn::module::{Module, ModuleMapper, Param};
use burn::prelude::*;
use burn::tensor::TensorData;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::flow::RgFlow;

struct Jitter {
    half_width: f32,
    rng: StdRng,
}

impl ModuleMapper for Jitter {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let (h, rng) = (self.half_width, &mut self.rng);
        param.map(|t| {
            let tracked = t.is_require_grad();
            let shape = t.shape();
            let noise: Vec<f32> = (0..shape.num_elements()).map(|_| rng.random_range(-h..h)).collect();
            let noise = Tensor::<D>::from_data(TensorData::new(noise, shape), &t.device());
            // A new leaf: the sum must not tie the parameter to this op's graph.
            let t = (t + noise).detach();
            if tracked { t.require_grad() } else { t }
        })
    }
}

/// Adds uniform noise of standard deviation `std` to every parameter, drawn
/// on the host from `seed` (so the model does not depend on what else used
/// the device's RNG).
pub fn jitter_parameters(flow: RgFlow, std: f64, seed: u64) -> RgFlow {
    let half_width = (std * 3f64.sqrt()) as f32;
    flow.map(&mut Jitter { half_width, rng: StdRng::seed_from_u64(seed) })
}

/// A tensor of `U[lo, hi)` values drawn on the host from `seed`.
pub fn host_uniform<const D: usize>(shape: [usize; D], lo: f32, hi: f32, seed: u64, device: &Device) -> Tensor<D> {
    let mut rng = StdRng::seed_from_u64(seed);
    let n = shape.iter().product();
    let values: Vec<f32> = (0..n).map(|_| rng.random_range(lo..hi)).collect();
    Tensor::from_data(TensorData::new(values, shape), device)
}
