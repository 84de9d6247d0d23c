//! The authors' optimiser: AdamW (lr 1e-3, weight decay 5e-2) with the
//! gradient clipped to a *global* norm, as `torch.nn.utils.clip_grad_norm_`
//! (burn's own clipping works per parameter tensor).

use std::sync::{Arc, Mutex};

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::{AdamWState, AdaptiveMomentumState, GradientsParams, LearningRate, ModuleOptimizer, Optimizer};
use burn::prelude::*;
use burn::tensor::Bytes;
use rgflow::kernels::AdamWStep;

/// AdamW (PyTorch's defaults for the betas and epsilon) whose gradients are
/// first scaled by a device scalar, the global-norm clip's factor.
///
/// Each parameter tensor's update is one fused op
/// ([`rgflow::kernels::adamw_update`]: one pass over memory on the CPU, one
/// kernel on a GPU) where burn's `AdamW` is a dozen tensor ops, and the clip
/// factor is applied inside it rather than in a pass over the gradients
/// before it (on a GPU that pass was one more kernel per parameter tensor,
/// about a thousand a step for this model). The optimiser state is burn's
/// `AdamWState`, so checkpoints read and write as before.
#[derive(Clone)]
pub struct ClippedAdamW {
    module: ModuleOptimizer,
    factor: ClipFactor,
}

/// The factor of the step being applied, shared with the per-tensor
/// optimiser inside the [`ModuleOptimizer`] (which only hands it a learning
/// rate, a tensor and its gradient).
#[derive(Clone, Default)]
struct ClipFactor(Arc<Mutex<Option<Tensor<1>>>>);

impl ClipFactor {
    fn set(&self, factor: Option<Tensor<1>>) {
        // A poisoned lock only means a step panicked; the slot is still whole.
        let mut slot = self.0.lock().unwrap_or_else(|e| e.into_inner());
        // Clones share the slot: two of them stepping at once would mix
        // their factors up (the trainer steps one run at a time).
        debug_assert!(factor.is_none() || slot.is_none(), "two optimiser steps at once");
        *slot = factor;
    }

    fn get(&self) -> Option<Tensor<1>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// AdamW on gradients times the current [`ClipFactor`], one fused update
/// per tensor.
#[derive(Clone)]
struct ScaledAdamW {
    /// Everything but the learning rate and the step number.
    settings: AdamWStep,
    factor: ClipFactor,
}

impl Optimizer for ScaledAdamW {
    type State<const D: usize> = AdamWState<D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<D>,
        grad: Tensor<D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<D>, Option<Self::State<D>>) {
        let device = grad.device();
        // burn's AdamW starts its moments at `(1 − β) g`: zero moments give
        // the same values.
        let (time, moment_1, moment_2) = match state {
            Some(AdamWState { momentum }) => (momentum.time, momentum.moment_1, momentum.moment_2),
            None => (0, Tensor::zeros(grad.shape(), &device), Tensor::zeros(grad.shape(), &device)),
        };
        // `ClippedAdamW::step` always sets a factor (1 without clipping).
        let scale = self.factor.get().expect("a clip factor for the step").to_device(&device);
        let step = AdamWStep { lr, time: time + 1, ..self.settings };
        let (tensor, moment_1, moment_2) = rgflow::kernels::adamw_update(tensor, grad, moment_1, moment_2, scale, step);
        (tensor, Some(AdamWState::new(AdaptiveMomentumState::new(time + 1, moment_1, moment_2))))
    }

    fn to_device<const D: usize>(mut state: Self::State<D>, device: &Device) -> Self::State<D> {
        state.momentum = state.momentum.to_device(device);
        state
    }
}

impl ClippedAdamW {
    /// A fresh optimiser with decoupled weight decay `weight_decay`.
    pub fn new(weight_decay: f64) -> Self {
        // PyTorch's defaults, as `AdamWConfig` has them, but for ε (1e-8 in PyTorch, 1e-5 in burn).
        let settings = AdamWStep {
            lr: 0.0,
            beta_1: 0.9,
            beta_2: 0.999,
            epsilon: 1e-8,
            weight_decay: weight_decay as f32,
            time: 0,
        };
        let factor = ClipFactor::default();
        Self { module: ModuleOptimizer::from(ScaledAdamW { settings, factor: factor.clone() }), factor }
    }

    /// One update of `module` with `grads` times `clip` (a `[1]` device
    /// scalar, see [`clip_factor`]; `None`: unscaled).
    pub fn step<M: Module>(&mut self, lr: f64, module: M, grads: GradientsParams, clip: Option<Tensor<1>>) -> M {
        // Unclipped: a factor of 1, made once for the step, not per tensor.
        let clip = clip.or_else(|| module.devices().first().map(|d| Tensor::ones([1], &d.clone().inner())));
        let Some(clip) = clip else {
            return module; // no parameters
        };
        self.factor.set(Some(clip));
        let module = self.module.step(lr, module, grads);
        self.factor.set(None);
        module
    }

    /// The optimiser state, serialised.
    pub fn to_bytes(&self) -> anyhow::Result<Bytes> {
        self.module.into_bytes().map_err(|e| anyhow::anyhow!("optimiser state: {e:?}"))
    }

    /// This optimiser with the state [`Self::to_bytes`] wrote.
    pub fn with_state(self, bytes: Bytes) -> anyhow::Result<Self> {
        let Self { module, factor } = self;
        let module = module.from_bytes(bytes).map_err(|e| anyhow::anyhow!("checkpoint optimiser state: {e:?}"))?;
        Ok(Self { module, factor })
    }
}

/// Every gradient, flattened.
struct Flattened<'a> {
    grads: &'a GradientsParams,
    parts: Vec<Tensor<1>>,
}

impl ModuleVisitor for Flattened<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.grads.get::<D>(param.id) {
            let n = g.shape().num_elements();
            self.parts.push(g.reshape([n]));
        }
    }
}

/// The global L2 norm of all gradients, as a device scalar: one sum over
/// all of them joined, so that on a GPU it is a copy per tensor and one
/// reduction, not a reduction and an addition per tensor (2,490 against
/// 1,000-odd dispatches a step here).
pub fn global_norm<M: Module>(model: &M, grads: &GradientsParams) -> Option<Tensor<1>> {
    let mut flat = Flattened { grads, parts: Vec::new() };
    model.visit(&mut flat);
    if flat.parts.is_empty() {
        return None;
    }
    Some(Tensor::cat(flat.parts, 0).square().sum().sqrt())
}

/// The factor that scales gradients of global L2 norm `norm` to at most
/// `max_norm`, as `torch.nn.utils.clip_grad_norm_` does: `max_norm / (norm
/// + 1e-6)`, clamped to 1. A device scalar (no host sync here), applied by
/// [`ClippedAdamW::step`].
pub fn clip_factor(norm: &Tensor<1>, max_norm: f64) -> Tensor<1> {
    norm.clone().add_scalar(1e-6).recip().mul_scalar(max_norm).clamp_max(1.0)
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

    /// Every parameter's values, in visiting order.
    struct Values(Vec<f32>);

    impl ModuleVisitor for Values {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            self.0.extend(param.val().into_data().iter::<f32>());
        }
    }

    /// Gradients times `factor` (the clipping as the trainer did it before
    /// [`ClippedAdamW`]).
    struct Rescale<'a> {
        grads: &'a mut GradientsParams,
        factor: Tensor<1>,
    }

    impl ModuleVisitor for Rescale<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(g) = self.grads.remove::<D>(param.id) {
                self.grads.register::<D>(param.id, g * self.factor.clone().reshape([1; D]));
            }
        }
    }

    /// [`ClippedAdamW`] takes the steps of burn's `AdamW` on gradients
    /// clipped beforehand (the trainer's optimiser before the fused update),
    /// to float rounding, and its state round-trips through bytes.
    #[test]
    fn clipped_adamw_steps_as_burns_adamw_on_clipped_gradients() {
        use burn::optim::AdamWConfig;
        use burn::tensor::Distribution;

        let device = Device::flex().autodiff();
        device.seed(9);
        let config = rgflow::RgFlowConfig::from_level_specs(8, 1, "1", "1", "1", "8").unwrap();
        let start = config.init(&device);
        let values = |model: &rgflow::RgFlow| {
            let mut v = Values(Vec::new());
            model.visit(&mut v);
            v.0
        };
        let initial = values(&start);
        let (mut ours, mut theirs) = (start.clone(), start);
        let mut fused = ClippedAdamW::new(0.05);
        let mut burn_adamw = AdamWConfig::new().with_weight_decay(0.05).with_epsilon(1e-8).init();
        for step in 0..3 {
            let x = Tensor::<4>::random([4, 1, 8, 8], Distribution::Uniform(0.0, 1.0), &device);
            let grads = |model: &rgflow::RgFlow| {
                GradientsParams::from_grads(model.nats_per_dim(x.clone()).mean().backward(), model)
            };
            // A small clip norm, so that the factor is below 1 and matters.
            let g = grads(&ours);
            let factor = clip_factor(&global_norm(&ours, &g).unwrap(), 0.01);
            assert!(factor.clone().into_scalar::<f32>() < 1.0, "step {step}: the clip is active");
            ours = fused.step(1e-2, ours, g, Some(factor));

            let mut g = grads(&theirs);
            let factor = clip_factor(&global_norm(&theirs, &g).unwrap(), 0.01);
            theirs.visit(&mut Rescale { grads: &mut g, factor });
            theirs = burn_adamw.step(1e-2, theirs, g);
            if step == 1 {
                fused = ClippedAdamW::new(0.05).with_state(fused.to_bytes().unwrap()).unwrap();
            }
        }
        let (a, b) = (values(&ours), values(&theirs));
        assert_eq!(a.len(), b.len());
        let worst = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
        let moved = b.iter().zip(&initial).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
        assert!(worst < 1e-5 && moved > 1e-3, "parameters differ by {worst} after moving by {moved}");
    }

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
