//! Dequantisation, the logit transform and bits per dimension, exactly as the
//! authors' `logit_transform` and training loss.

use burn::prelude::*;

/// Uniform dequantisation of 8-bit data, the authors' `(255·x + u) / 256`:
/// the level `k` (0–255) with noise `u ∈ [0, 1)` becomes `(k + u)/256`
/// (`u ~ U[0, 1)` in training, `u = 1/2` for a bin's centre). Done on the
/// host, where the data loader has the bytes.
pub fn dequantize_level(k: f32, u: f32) -> f32 {
    (k + u) / 256.0
}

/// The `[0, 1]` value of an 8-bit level, `k / 255` (no dequantisation: the
/// value [`to_level`] gives back as `k`).
pub fn from_level(k: u8) -> f32 {
    f32::from(k) / 255.0
}

/// The 8-bit level (0–255, as `f32`) a `[0, 1]` value is stored as.
pub fn to_level(v: f32) -> f32 {
    (v.clamp(0.0, 1.0) * 255.0).round()
}

/// `[0, 1]` values as stored in 8 bits, each at the centre of its
/// dequantisation bin: what scores an 8-bit image without noise.
pub fn bin_centres(x01: &[f32]) -> Vec<f32> {
    x01.iter().map(|&v| dequantize_level(to_level(v), 0.5)).collect()
}

/// `log(1 + e^{-|l|})` summed with `|l|`: `softplus(l) + softplus(-l)`, stably.
fn softplus_pair<const D: usize>(l: Tensor<D>) -> Tensor<D> {
    let a = l.abs();
    a.clone() + a.neg().exp().log1p().mul_scalar(2.0)
}

/// Squeezes `[0, 1]` data into `[(1-c)/2, (1+c)/2]` and takes the logit.
///
/// `x01: [B, C, L, L] -> (logit: [B, C, L, L], log|det J|: [B])`.
pub fn logit_transform(x01: Tensor<4>, constraint: f64) -> (Tensor<4>, Tensor<1>) {
    let y = x01.mul_scalar(2.0).sub_scalar(1.0).mul_scalar(constraint).add_scalar(1.0).div_scalar(2.0);
    let logit = y.clone().log() - y.neg().add_scalar(1.0).log();
    let ldj = logit_ldj(logit.clone(), constraint);
    (logit, ldj)
}

/// The inverse of [`logit_transform`]: sigmoid, then un-squeeze to `[0, 1]`.
///
/// `logit: [B, C, L, L] -> (x01: [B, C, L, L], log|det J| of the forward map: [B])`.
pub fn inverse_logit_transform(logit: Tensor<4>, constraint: f64) -> (Tensor<4>, Tensor<1>) {
    let ldj = logit_ldj(logit.clone(), constraint);
    (logit_to_pixels(logit, constraint), ldj)
}

/// The image part of [`inverse_logit_transform`] alone, for decoding:
/// `[B, C, L, L] -> [B, C, L, L]` in `[0, 1]` (unclamped).
pub fn logit_to_pixels(logit: Tensor<4>, constraint: f64) -> Tensor<4> {
    let y = burn::tensor::activation::sigmoid(logit);
    y.mul_scalar(2.0).sub_scalar(1.0).div_scalar(constraint).add_scalar(1.0).div_scalar(2.0)
}

/// `log|d logit / d x01|` summed per image, from the logits: `[B, C, L, L] -> [B]`.
pub fn logit_log_det(logit: Tensor<4>, constraint: f64) -> Tensor<1> {
    logit_ldj(logit, constraint)
}

/// [`logit_log_det`] of one image's logits on the host (summed in f64).
pub fn logit_log_det_host(logit: &[f32], constraint: f64) -> f64 {
    let pair = |l: f32| {
        let a = f64::from(l.abs());
        a + 2.0 * (-a).exp().ln_1p()
    };
    logit.iter().map(|&l| pair(l)).sum::<f64>() + logit.len() as f64 * constraint.ln()
}

/// `log|d logit / d x01|` summed per image: `softplus(l) + softplus(-l) + log c`.
fn logit_ldj(logit: Tensor<4>, constraint: f64) -> Tensor<1> {
    let [b, c, h, w] = logit.dims();
    softplus_pair(logit)
        .reshape([b, c * h * w])
        .sum_dim(1)
        .add_scalar((c * h * w) as f64 * constraint.ln())
        .squeeze_dim(1)
}

/// The authors' training loss per image, `-(log p + ldj)/D` nats per
/// dimension of the data in `[0, 1]`, from the flow's `log p(logit)` and the
/// logit transform's log-det: `[B], [B] -> [B]`.
pub fn nats_per_dim(log_prob: Tensor<1>, ldj_logit: Tensor<1>, num_dims: usize) -> Tensor<1> {
    (log_prob + ldj_logit).div_scalar(-(num_dims as f64))
}

/// `ln 256`: the nats per dimension between a density on `[0, 1]` and the
/// probability of 8-bit data (each of the 256 levels a bin of width 1/256).
const LN_256: f64 = 5.545_177_444_479_562;

/// [`nats_per_dim`] as bits per dimension of the 8-bit data, `(nats + ln
/// 256) / ln 2`, on the device: `[B] -> [B]`.
pub fn bits_per_dim(nats_per_dim: Tensor<1>) -> Tensor<1> {
    nats_per_dim.add_scalar(LN_256).div_scalar(std::f64::consts::LN_2)
}

/// [`bits_per_dim`] of one number on the host.
pub fn nats_to_bits_per_dim(nats: f64) -> f64 {
    (nats + LN_256) / std::f64::consts::LN_2
}
