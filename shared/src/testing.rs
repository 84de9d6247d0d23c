//! Helpers for tests and benchmarks: a model whose couplings are not the
//! identity (a fresh model is, because every final `Scale` starts at zero).

use burn::module::{Module, ModuleMapper, Param};
use burn::prelude::*;
use burn::tensor::Distribution;

use crate::flow::RgFlow;

struct Jitter {
    std: f64,
}

impl ModuleMapper for Jitter {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let std = self.std;
        param.map(|t| {
            let tracked = t.is_require_grad();
            let noise = t.random_like(Distribution::Normal(0.0, std));
            // A new leaf: the sum must not tie the parameter to this op's graph.
            let t = (t + noise).detach();
            if tracked { t.require_grad() } else { t }
        })
    }
}

/// Adds `N(0, std²)` noise to every parameter, drawn from the device's RNG
/// (seed it with `device.seed(..)` for a reproducible model).
pub fn jitter_parameters(flow: RgFlow, std: f64) -> RgFlow {
    flow.map(&mut Jitter { std })
}
