//! Polyak averaging: an exponential moving average of the weights, as Glow
//! and Flow++ train. The average of a noisy optimiser's iterates scores better
//! on held-out data and samples cleaner than the last iterate, at the cost of
//! one pass over the parameters per step.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::prelude::*;
use rgflow::RgFlow;

/// The moving average of a model's weights, kept without gradients.
#[derive(Clone)]
pub struct WeightAverage {
    decay: f64,
    average: RgFlow,
    updates: u64,
}

impl WeightAverage {
    /// An average that starts at `start` (a model without gradients) and has
    /// already seen `updates` updates (for resuming).
    pub fn new(decay: f64, start: RgFlow, updates: u64) -> Self {
        Self { decay, average: start, updates }
    }

    /// The averaged model.
    pub fn model(&self) -> &RgFlow {
        &self.average
    }

    /// Updates taken so far.
    pub fn updates(&self) -> u64 {
        self.updates
    }

    /// The decay of the next update: `min(decay, (1 + n)/(10 + n))` after
    /// `n` updates, so the first averages follow the weights closely instead
    /// of remembering the random initialisation for thousands of steps.
    pub fn next_decay(&self) -> f64 {
        let n = self.updates as f64;
        self.decay.min((1.0 + n) / (10.0 + n))
    }

    /// `average ← d·average + (1 − d)·weights` for every parameter of
    /// `model` (which may carry gradients; its values are read).
    pub fn update(&mut self, model: &RgFlow) {
        let mut weights = Collect(Vec::new());
        model.valid().visit(&mut weights);
        let d = self.next_decay();
        let mut mix = Mix { weights: weights.0.into_iter(), d };
        self.average = self.average.clone().map(&mut mix);
        assert!(mix.weights.next().is_none(), "the average and the model have the same parameters");
        self.updates += 1;
    }
}

/// Every float parameter, flattened, in the module's visiting order.
struct Collect(Vec<Tensor<1>>);

impl ModuleVisitor for Collect {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let t = param.val();
        let n = t.shape().num_elements();
        self.0.push(t.reshape([n]));
    }
}

/// Mixes each parameter with the next collected weight (same visiting order:
/// both modules have one structure, so no ids are needed).
struct Mix<I> {
    weights: I,
    d: f64,
}

impl<I: Iterator<Item = Tensor<1>>> ModuleMapper for Mix<I> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let w = self.weights.next().expect("the model has as many parameters as the average");
        let d = self.d;
        param.map(|a| {
            let w = w.reshape(a.dims());
            a.mul_scalar(d) + w.mul_scalar(1.0 - d)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rgflow::RgFlowConfig;

    fn first_values(model: &RgFlow) -> Vec<f32> {
        let mut c = Collect(Vec::new());
        model.visit(&mut c);
        c.0.into_iter().flat_map(|t| t.into_data().try_into_vec_as::<f32>().unwrap()).collect()
    }

    #[test]
    fn the_average_moves_towards_the_weights_by_one_minus_decay() {
        let device = Device::flex();
        let config = RgFlowConfig::from_level_specs(8, 3, "1", "1", "1", "8").unwrap();
        let a = config.init(&device);
        let b = rgflow::testing::jitter_parameters(a.clone(), 0.5, 1);
        let mut average = WeightAverage::new(0.9, a.clone(), 1_000);
        assert_eq!(average.next_decay(), 0.9);
        average.update(&b);
        assert_eq!(average.updates(), 1_001);
        let (va, vb, vm) = (first_values(&a), first_values(&b), first_values(average.model()));
        assert!(va.iter().zip(&vb).any(|(x, y)| x != y), "the jitter changed the weights");
        for ((x, y), m) in va.iter().zip(&vb).zip(&vm) {
            let want = 0.9 * x + 0.1 * y;
            assert!((m - want).abs() <= 1e-6 * want.abs().max(1.0), "{m} vs {want}");
        }
        // Early updates follow the weights more closely.
        assert!((WeightAverage::new(0.999, a, 0).next_decay() - 0.1).abs() < 1e-12);
    }
}
