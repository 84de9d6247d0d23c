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

/// Scales all gradients so their global L2 norm is at most `max_norm`
/// (`clip_coef = max_norm / (norm + 1e-6)`, clamped to 1). Returns the norm
/// before clipping as a device scalar (no host sync here).
pub fn clip_global_norm<M: Module>(model: &M, grads: &mut GradientsParams, max_norm: f64) -> Option<Tensor<1>> {
    let mut norm = SquaredNorm { grads, total: None };
    model.visit(&mut norm);
    let norm = norm.total?.sqrt();
    let factor = norm.clone().add_scalar(1e-6).recip().mul_scalar(max_norm).clamp_max(1.0);
    model.visit(&mut Rescale { grads, factor, ids: Vec::new() });
    Some(norm)
}
