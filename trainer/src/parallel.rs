//! Data-parallel training steps over several devices, the way burn-train's
//! multi-device strategy runs them (burn 0.22's all-reduce exists for CUDA
//! only): the model and the optimiser live on the first device; each step,
//! every device gets a fork of the model and an equal share of the batch,
//! runs forward and backward on its own thread, and its gradients move to
//! the first device, where they are summed. Each share's loss is its images'
//! part of the batch mean, so the sum is the gradient of the whole batch's
//! mean loss — the same step as on one device, up to float rounding — and the
//! global-norm clipping that follows sees the whole gradient.

use std::ops::Range;

use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::prelude::*;
use rgflow::RgFlow;

use crate::data::images_tensor;

/// One step's gradient and losses.
pub struct StepGradients {
    /// Gradient of the batch's mean loss, on the first device.
    pub grads: GradientsParams,
    /// Each image's loss in nats per dimension, in batch order: `[B]` on
    /// the first device, not yet read (the step reads it together with the
    /// gradient norm, in one host read).
    pub nats: Tensor<1>,
}

/// Forward and backward of a batch (`x01`: `len` images, host values) on
/// `model`, split across `devices`; the model is on `devices[0]`.
pub fn gradients(model: &RgFlow, x01: Vec<f32>, len: usize, devices: &[Device]) -> StepGradients {
    let config = model.config();
    let main = &devices[0];
    if devices.len() == 1 {
        let nats = model.nats_per_dim(images_tensor(x01, len, config, main));
        let grads = GradientsParams::from_grads(nats.clone().mean().backward(), model);
        return StepGradients { grads, nats: nats.inner() };
    }
    let per_image = config.num_dims();
    let results: Vec<(GradientsParams, Tensor<1>)> = std::thread::scope(|scope| {
        let workers: Vec<_> = shares(len, devices.len())
            .into_iter()
            .zip(devices)
            .map(|(images, device)| {
                let share = x01[images.start * per_image..images.end * per_image].to_vec();
                let replica = model.clone().fork(device);
                scope.spawn(move || {
                    let nats = replica.nats_per_dim(images_tensor(share, images.len(), config, device));
                    let loss = nats.clone().sum().div_scalar(len as f64);
                    (GradientsParams::from_grads(loss.backward(), &replica), nats.inner())
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().expect("a device's training thread panicked")).collect()
    });
    // The first share ran on the first device: its losses say where (without autodiff) that is.
    let target = results[0].1.device();
    let mut sum = GradientsAccumulator::new();
    let mut nats = Vec::with_capacity(results.len());
    for (grads, share_nats) in results {
        sum.accumulate(model, grads.to_device(main, model));
        nats.push(share_nats.to_device(&target));
    }
    StepGradients { grads: sum.grads(), nats: Tensor::cat(nats, 0) }
}

/// `len` images in `parts` contiguous shares, as equal as they go, none empty
/// (fewer shares than parts when the batch is smaller).
fn shares(len: usize, parts: usize) -> Vec<Range<usize>> {
    let parts = parts.min(len).max(1);
    (0..parts).map(|p| p * len / parts..(p + 1) * len / parts).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::module::{Module, ModuleVisitor, Param};
    use rgflow::RgFlowConfig;

    #[test]
    fn shares_cover_the_batch() {
        assert_eq!(shares(10, 3), vec![0..3, 3..6, 6..10]);
        assert_eq!(shares(2, 4), vec![0..1, 1..2]);
        assert_eq!(shares(64, 1), vec![0..64]);
    }

    /// Every gradient as one host vector, in the module's parameter order.
    struct Flatten<'a>(&'a GradientsParams, Vec<f32>);

    impl ModuleVisitor for Flatten<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let g = self.0.get::<D>(param.id).expect("every parameter has a gradient");
            self.1.extend(g.into_data().try_into_vec_as::<f32>().unwrap());
        }
    }

    /// Two devices give the single-device step's gradient and losses: two
    /// replicas on the CPU here; with `ndarray` also a genuinely second
    /// device (another backend), so gradients really move between devices.
    #[test]
    fn split_batches_give_the_whole_batch_gradient() {
        let device = Device::flex().autodiff();
        check_split(&device, &device);
        #[cfg(feature = "ndarray")]
        #[allow(deprecated)]
        check_split(&device, &Device::ndarray().autodiff());
    }

    fn check_split(device: &Device, second: &Device) {
        let config = RgFlowConfig::from_level_specs(8, 3, "1", "1", "1", "8").unwrap();
        let model = rgflow::testing::jitter_parameters(config.init(device), 0.1, 3);
        let x01: Vec<f32> = (0..5 * config.num_dims()).map(|i| ((i * 37 % 251) as f32 + 0.5) / 256.0).collect();
        let one = gradients(&model, x01.clone(), 5, std::slice::from_ref(device));
        let two = gradients(&model, x01, 5, &[device.clone(), second.clone()]);
        let host = |t: Tensor<1>| t.into_data().try_into_vec_as::<f32>().unwrap();
        let (one_nats, two_nats) = (host(one.nats.clone()), host(two.nats.clone()));
        assert_eq!(one_nats.len(), 5);
        for (a, b) in one_nats.iter().zip(&two_nats) {
            assert!((a - b).abs() < 1e-5, "losses {a} vs {b}");
        }
        let (mut a, mut b) = (Flatten(&one.grads, Vec::new()), Flatten(&two.grads, Vec::new()));
        model.visit(&mut a);
        model.visit(&mut b);
        let scale = a.1.iter().fold(0.0f32, |m, g| m.max(g.abs()));
        let worst = a.1.iter().zip(&b.1).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
        assert!(scale > 0.0 && worst < 1e-4 * scale, "gradients differ by {worst} (largest {scale})");
    }
}
