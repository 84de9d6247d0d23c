//! Index tensors and the one gather that every layout change, level write,
//! mix and local update is made of.

use burn::prelude::*;
use burn::tensor::{Int, TensorData};

/// An `Int` index tensor from host indices.
pub(crate) fn index_tensor(values: Vec<usize>, device: &Device) -> Tensor<1, Int> {
    let n = values.len();
    Tensor::from_data(TensorData::new(values.into_iter().map(|v| v as i64).collect::<Vec<_>>(), [n]), device)
}

/// Concatenates `parts` (each `[B, n_i]`) along columns and picks columns
/// `source` from the result: `-> [B, source.len()]`. Values are copied, never
/// recomputed, and gradients flow to every part.
pub(crate) fn pick_columns(parts: Vec<Tensor<2>>, source: Vec<usize>) -> Tensor<2> {
    let device = parts[0].device();
    let all = if parts.len() == 1 { parts.into_iter().next().unwrap() } else { Tensor::cat(parts, 1) };
    all.select(1, index_tensor(source, &device))
}
