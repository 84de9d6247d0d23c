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

/// Redraws a fresh model's random weights on the host (see [`seeded_init`]).
struct Redraw {
    rng: StdRng,
    /// Column norms of the last `weight_v`, for the `weight_g` that follows it.
    norms: Option<Vec<f32>>,
}

impl ModuleMapper for Redraw {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        param.map(|t| {
            let dims = t.dims();
            let values = if D == 2 {
                // `weight_v: [in, out]` ~ U(-b, b), `b = √(2.81·3 / in)`.
                let (rows, cols) = (dims[0], dims[1]);
                let b = (2.81f32 * 3.0 / rows as f32).sqrt();
                let v: Vec<f32> = (0..rows * cols).map(|_| self.rng.random_range(-b..b)).collect();
                let norm = |j: usize| (0..rows).map(|i| v[i * cols + j].powi(2)).sum::<f32>().sqrt();
                self.norms = Some((0..cols).map(norm).collect());
                v
            } else if let Some(g) = self.norms.take() {
                // The `weight_g` right after its `weight_v` (field order): `g = ‖v‖`.
                g
            } else {
                // Swish β, biases and scales start at constants: nothing random.
                return t;
            };
            let tracked = t.is_require_grad();
            let t = Tensor::<D>::from_data(TensorData::new(values, dims), &t.device());
            if tracked { t.require_grad() } else { t }
        })
    }
}

/// `config.init` with its random weights drawn on the host from `seed`, the
/// way [`crate::nn::WeightNormLinearConfig::init`] draws them: the same model
/// whatever else used the device's RNG (tests share it while they run in
/// parallel).
pub fn seeded_init(config: &crate::config::RgFlowConfig, seed: u64, device: &Device) -> RgFlow {
    config.init(device).map(&mut Redraw { rng: StdRng::seed_from_u64(seed), norms: None })
}

/// A tensor of `U[lo, hi)` values drawn on the host from `seed`.
pub fn host_uniform<const D: usize>(shape: [usize; D], lo: f32, hi: f32, seed: u64, device: &Device) -> Tensor<D> {
    let mut rng = StdRng::seed_from_u64(seed);
    let n = shape.iter().product();
    let values: Vec<f32> = (0..n).map(|_| rng.random_range(lo..hi)).collect();
    Tensor::from_data(TensorData::new(values, shape), device)
}
