//! The packed CPU decoder on the shipped face model: bf16 products change
//! pixels by about a level of 255, f32 ones not at all.

use std::path::Path;

use burn::prelude::*;
use rgflow::decoder::{CpuDecoder, ProductPrecision};
use rgflow::{LevelTemperatures, weights};

fn pixel_levels(t: Tensor<4>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().unwrap().into_iter().map(|p| p * 255.0).collect()
}

#[test]
fn bf16_decoding_of_the_shipped_model_is_within_a_level_or_so() {
    let device = Device::flex();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/celeba32.rgflow");
    let flow = weights::load(&path, &device).unwrap();
    let temps = LevelTemperatures::uniform(flow.config().levels(), 0.8);
    let z = flow.sample_latents(32, &temps, 11, &device).unwrap();
    let reference = pixel_levels(flow.decode(z.clone()));

    let f32_pixels = pixel_levels(CpuDecoder::new(&flow, ProductPrecision::F32).decode(z.clone()));
    let worst = f32_pixels.iter().zip(&reference).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
    assert!(worst < 1e-2, "f32 decoder differs by {worst} levels");

    let bf16 = CpuDecoder::new(&flow, ProductPrecision::Bf16);
    if bf16.precision() != ProductPrecision::Bf16 {
        assert!(!CpuDecoder::native_bf16());
        eprintln!("no AVX512-BF16 on this CPU: bf16 decoding runs in f32, nothing more to check");
        return;
    }
    let bf16_pixels = pixel_levels(bf16.decode(z));
    let mut diffs: Vec<f32> = bf16_pixels.iter().zip(&reference).map(|(a, b)| (a - b).abs()).collect();
    diffs.sort_by(f32::total_cmp);
    let mean = diffs.iter().sum::<f32>() / diffs.len() as f32;
    let p99 = diffs[diffs.len() * 99 / 100];
    let max = diffs[diffs.len() - 1];
    eprintln!("bf16 vs f32 decoding, levels of 255: mean {mean:.3}, 99th percentile {p99:.2}, max {max:.2}");
    assert!(mean > 0.0, "bf16 decoding identical to f32: not rounding at all?");
    assert!(mean < 1.0 && p99 < 4.0, "bf16 decoding too far from f32: mean {mean}, p99 {p99}");
}
