//! Receptive fields: how the image responds to one latent.

use burn::prelude::*;
use burn::tensor::TensorData;

use crate::error::{Error, Result};
use crate::explore::factors::LatentSite;
use crate::flow::RgFlow;

/// The image-space response `∂x/∂z` of one latent at the encoding
/// `z: [1, C, L, L]`, by a central difference of step `eps` in the pixel
/// space `[0, 1]` (unclamped): `-> [C, L, L]`, not read back.
///
/// Pixels outside the latent's causal cone do not depend on it at all, so
/// there the difference is exactly zero.
pub fn receptive_field_tensor(flow: &RgFlow, z: Tensor<4>, latent: LatentSite, eps: f32) -> Result<Tensor<3>> {
    let e = latent.element(flow)?;
    let [b, c, h, w] = z.dims();
    if b != 1 {
        return Err(Error::Shape(format!("a receptive field takes one encoding, got a batch of {b}")));
    }
    let n = c * h * w;
    let mut delta = vec![0f32; 2 * n];
    delta[e] = eps;
    delta[n + e] = -eps;
    let delta = Tensor::<2>::from_data(TensorData::new(delta, [2, n]), &z.device());
    let pair = (z.reshape([1, n]).repeat_dim(0, 2) + delta).reshape([2, c, h, w]);
    let x = flow.inverse_without_ldj(pair);
    let x01 = crate::preprocess::logit_to_pixels(x, flow.config().logit_constraint);
    let difference = x01.clone().narrow(0, 0, 1) - x01.narrow(0, 1, 1);
    Ok(difference.div_scalar(2.0 * eps).reshape([c, h, w]))
}

/// [`receptive_field_tensor`] read back: `[C, L, L]` values.
pub fn receptive_field(flow: &RgFlow, z: Tensor<4>, latent: LatentSite, eps: f32) -> Result<Vec<f32>> {
    let field = receptive_field_tensor(flow, z, latent, eps)?;
    Ok(field.into_data().try_to_vec::<f32>().expect("f32 values"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RgFlowConfig;
    use crate::testing::{host_uniform, jitter_parameters};

    #[test]
    fn fields_lie_inside_the_predicted_cone() {
        let device = Device::flex();
        let flow = jitter_parameters(
            RgFlowConfig::from_level_specs(16, 3, "2", "1", "1", "16").unwrap().init(&device),
            0.1,
            7,
        );
        let z = host_uniform([1, 3, 16, 16], -1.7, 1.7, 3, &device);
        for level in 0..flow.lattice().levels() {
            let latent = LatentSite::first_of_level(&flow, level, 1).unwrap();
            let field = receptive_field(&flow, z.clone(), latent, 1e-2).unwrap();
            let cone = flow.lattice().receptive_cone(latent.site(16));
            let mut inside = 0.0f32;
            for (i, v) in field.iter().enumerate() {
                if cone[i % 256] {
                    inside = inside.max(v.abs());
                } else {
                    assert_eq!(*v, 0.0, "level {level}: response outside the cone at {i}");
                }
            }
            assert!(inside > 1e-3, "level {level}: no response at all");
            let support = field
                .iter()
                .enumerate()
                .filter(|(_, v)| **v != 0.0)
                .map(|(i, _)| i % 256)
                .collect::<std::collections::BTreeSet<_>>();
            assert!(support.len() > 1, "level {level}: support {support:?}");
        }
    }
}
