//! Reading, writing and mixing the latents of one level.

use burn::prelude::*;

use crate::flow::RgFlow;
use crate::gather::{index_tensor, pick_columns};

/// The latents of `level`, `z: [B, C, L, L] -> [B, n]`, ordered `[C][site]`
/// (see [`crate::MeraLattice::level_elements`]).
pub fn level_values(flow: &RgFlow, z: Tensor<4>, level: usize) -> Tensor<2> {
    let [b, c, h, w] = z.dims();
    let device = z.device();
    let elements = flow.lattice().level_elements(level, c);
    z.reshape([b, c * h * w]).select(1, index_tensor(elements, &device))
}

/// `z` with the latents of `level` replaced by `values: [B, n]`.
pub fn with_level_values(flow: &RgFlow, z: Tensor<4>, level: usize, values: Tensor<2>) -> Tensor<4> {
    let [b, c, h, w] = z.dims();
    let n = c * h * w;
    let mut source: Vec<usize> = (0..n).collect();
    for (j, e) in flow.lattice().level_elements(level, c).into_iter().enumerate() {
        source[e] = n + j;
    }
    pick_columns(vec![z.reshape([b, n]), values], source).reshape([b, c, h, w])
}

/// Mixing across scales: the latents of `a` at levels `≥ lambda` with those
/// of `b` below `lambda`. `lambda = 0` gives `a`, `lambda = levels` gives `b`.
///
/// `a, b: [B, C, L, L] -> [B, C, L, L]`.
pub fn mix_levels(flow: &RgFlow, a: Tensor<4>, b: Tensor<4>, lambda: usize) -> Tensor<4> {
    let [batch, c, h, w] = a.dims();
    let n = c * h * w;
    let plane = h * w;
    let levels = &flow.lattice().site_level;
    let source: Vec<usize> = (0..n).map(|e| if levels[e % plane] >= lambda { e } else { n + e }).collect();
    pick_columns(vec![a.reshape([batch, n]), b.reshape([batch, n])], source).reshape([batch, c, h, w])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RgFlowConfig;
    use burn::tensor::Distribution;

    fn same<const D: usize>(x: Tensor<D>, y: Tensor<D>) -> bool {
        (x - y).abs().max().into_scalar::<f32>() == 0.0
    }

    #[test]
    fn mixing_ends_are_the_inputs_and_levels_round_trip() {
        let device = Device::flex();
        let flow = RgFlowConfig::from_level_specs(16, 3, "1", "1", "1", "8").unwrap().init(&device);
        let a = Tensor::<4>::random([2, 3, 16, 16], Distribution::Normal(0.0, 1.0), &device);
        let b = Tensor::<4>::random([2, 3, 16, 16], Distribution::Normal(0.0, 1.0), &device);
        assert!(same(mix_levels(&flow, a.clone(), b.clone(), 0), a.clone()));
        assert!(same(mix_levels(&flow, a.clone(), b.clone(), 3), b.clone()));
        let mid = mix_levels(&flow, a.clone(), b.clone(), 1);
        assert!(same(level_values(&flow, mid.clone(), 0), level_values(&flow, b.clone(), 0)));
        assert!(same(level_values(&flow, mid.clone(), 2), level_values(&flow, a.clone(), 2)));
        // Writing the top level of `a` into `b` is mixing at λ = top.
        let top = level_values(&flow, a.clone(), 2);
        assert_eq!(top.dims(), [2, 3 * 16]);
        assert!(same(with_level_values(&flow, b.clone(), 2, top), mix_levels(&flow, a, b, 2)));
    }
}
