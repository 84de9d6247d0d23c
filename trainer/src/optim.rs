//! The authors' optimiser: AdamW (lr 1e-3, weight decay 5e-2) with the
//! gradient clipped to a *global* norm, as `torch.nn.utils.clip_grad_norm_`
//! (burn's own clipping works per parameter tensor).

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::optim::{AdamWConfig, GradientsParams, ModuleOptimizer};
use burn::prelude::*;

/// A fresh AdamW with PyTorch's defaults for the betas and epsilon.
pub fn adamw(weight_decay: f64) -> ModuleOptimizer {
    AdamWConfig::new().with_weight_decay(weight_decay as f32).with_epsilon(1e-8).init()
}

struct SquaredNorm<'a> {
    grads: &'a GradientsParams,
    total: Option<Tensor<1>>,
}

impl ModuleVisitor for SquaredNorm<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.grads.get::<D>(param.id) {
            let s = g.square().sum();
            self.total = Some(match self.total.take() {
                Some(t) => t + s,
                None => s,
            });
        }
    }
}

struct Rescale<'a> {
    grads: &'a mut GradientsParams,
    factor: Tensor<1>,
    ids: Vec<ParamId>,
}

impl ModuleVisitor for Rescale<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if self.ids.contains(&param.id) {
            return; // a parameter shared by two modules is scaled once
        }
        if let Some(g) = self.grads.remove::<D>(param.id) {
            let factor = self.factor.clone().to_device(&g.device());
            let g = g * factor.reshape([1; D]);
            self.grads.register::<D>(param.id, g);
            self.ids.push(param.id);
        }
    }
}

/// The global L2 norm of all gradients, as a device scalar.
pub fn global_norm<M: Module>(model: &M, grads: &GradientsParams) -> Option<Tensor<1>> {
    let mut norm = SquaredNorm { grads, total: None };
    model.visit(&mut norm);
    Some(norm.total?.sqrt())
}

/// Scales all gradients so their global L2 norm is at most `max_norm`
/// (`clip_coef = max_norm / (norm + 1e-6)`, clamped to 1). Returns the norm
/// before clipping as a device scalar (no host sync here).
pub fn clip_global_norm<M: Module>(model: &M, grads: &mut GradientsParams, max_norm: f64) -> Option<Tensor<1>> {
    let norm = global_norm(model, grads)?;
    let factor = norm.clone().add_scalar(1e-6).recip().mul_scalar(max_norm).clamp_max(1.0);
    model.visit(&mut Rescale { grads, factor, ids: Vec::new() });
    Some(norm)
}

/// How the learning rate moves with the step: a linear warm-up from zero,
/// then constant or a cosine decay to a floor. Warm-up is what keeps
/// lr 1e-3 stable in the first steps, when the random flow's log-dets are
/// largest; the decay is what lets a long run settle.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LrSchedule {
    /// The rate after warm-up.
    pub peak: f64,
    /// Steps of linear warm-up (0 = none).
    pub warmup_steps: u64,
    /// What follows the warm-up.
    pub decay: Decay,
}

/// The part of an [`LrSchedule`] after warm-up.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Decay {
    /// The peak rate for ever (the authors' choice).
    Constant,
    /// Half a cosine from the peak at the end of warm-up to `floor` at step
    /// `until`, then `floor`.
    Cosine { until: u64, floor: f64 },
}

impl LrSchedule {
    /// The rate of the step that follows `step` steps taken (0-based).
    pub fn at(&self, step: u64) -> f64 {
        if step < self.warmup_steps {
            return self.peak * (step + 1) as f64 / self.warmup_steps as f64;
        }
        match self.decay {
            Decay::Constant => self.peak,
            Decay::Cosine { until, floor } => {
                let span = until.saturating_sub(self.warmup_steps).max(1) as f64;
                let t = ((step - self.warmup_steps) as f64 / span).min(1.0);
                floor + (self.peak - floor) * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_warm_up_then_decay_to_the_floor() {
        let constant = LrSchedule { peak: 1e-3, warmup_steps: 0, decay: Decay::Constant };
        assert_eq!((constant.at(0), constant.at(10_000)), (1e-3, 1e-3));
        let cosine = LrSchedule { peak: 1e-3, warmup_steps: 10, decay: Decay::Cosine { until: 110, floor: 1e-5 } };
        assert!((cosine.at(0) - 1e-4).abs() < 1e-12);
        assert!((cosine.at(9) - 1e-3).abs() < 1e-12);
        assert!((cosine.at(10) - 1e-3).abs() < 1e-12);
        assert!((cosine.at(60) - (1e-5 + (1e-3 - 1e-5) * 0.5)).abs() < 1e-12);
        assert!((cosine.at(110) - 1e-5).abs() < 1e-12);
        assert_eq!(cosine.at(5_000), 1e-5);
        let rates: Vec<f64> = (10..=110).map(|s| cosine.at(s)).collect();
        assert!(rates.windows(2).all(|w| w[1] <= w[0]), "the decay never rises");
    }
}
