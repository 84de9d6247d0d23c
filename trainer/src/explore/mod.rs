//! The scale-aware subcommands: each calls one operation of `rgflow::explore`
//! and writes a PNG.

pub mod bench_inpaint;
pub mod bench_local;
pub mod factor;
pub mod inpaint;
pub mod mix;
pub mod receptive;
pub mod walk;

use std::path::PathBuf;

use anyhow::Context;
use burn::prelude::*;
use burn::tensor::TensorData;
use clap::Args;
use rgflow::pixels::Crop;
use rgflow::{LevelTemperatures, RgFlow};

use crate::backend::{BackendChoice, select};
use crate::model_io::{load_model, resolve_model_path};

/// Model and backend, common to every subcommand here.
#[derive(Debug, Args)]
pub struct ModelChoice {
    /// Weights or checkpoint; default: the shipped face model.
    #[arg(long)]
    pub model: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = BackendChoice::Auto)]
    pub backend: BackendChoice,
    /// Pixel zoom of the PNG.
    #[arg(long, default_value_t = 3, value_parser = crate::at_least_one::<u32>())]
    pub zoom: u32,
}

impl ModelChoice {
    pub fn load(&self) -> anyhow::Result<(RgFlow, Device)> {
        let (device, _) = select(self.backend)?;
        let model = load_model(&resolve_model_path(self.model.clone())?, &device)?;
        Ok((model, device))
    }
}

/// The image an operation starts from.
#[derive(Debug, Args)]
pub struct ImageChoice {
    /// `seed:N` (a sample) or an image file (centre-cropped, resized to L).
    #[arg(long, default_value = "seed:1")]
    pub image: String,
    /// Sampling temperature of a `seed:N` image (one value, or one per level).
    #[arg(long, default_value = "0.8")]
    pub image_temperature: String,
}

impl ImageChoice {
    /// The image, `[1, C, L, L]` in `[0, 1]`.
    pub fn load(&self, flow: &RgFlow, device: &Device) -> anyhow::Result<Tensor<4>> {
        input_image(flow, "--image", &self.image, &self.image_temperature, device)
    }
}

/// An input image given by the flag `flag`: `seed:N` (a sample at the
/// sampling temperature) or an image file (centre-cropped to a square and
/// resized to L). Errors name the flag.
pub fn input_image(
    flow: &RgFlow,
    flag: &str,
    spec: &str,
    temperature: &str,
    device: &Device,
) -> anyhow::Result<Tensor<4>> {
    let c = flow.config();
    if let Some(seed) = spec.strip_prefix("seed:") {
        let seed: u64 =
            seed.parse().with_context(|| format!("{flag} {spec}: expected seed:N with N a whole number"))?;
        let temps = LevelTemperatures::parse(temperature, flow.lattice().levels())
            .with_context(|| format!("{flag} {spec}: temperature {temperature}"))?;
        return Ok(flow.sample(1, &temps, seed, device)?);
    }
    let bytes = std::fs::read(spec).with_context(|| format!("{flag}: reading image {spec}"))?;
    let pixels = rgflow::pixels::decode_and_prepare(&bytes, Crop::CenterSquare, c.image_size, c.channels)
        .with_context(|| format!("{flag}: image {spec}"))?;
    let values: Vec<f32> = pixels.iter().map(|&k| rgflow::preprocess::from_level(k)).collect();
    Ok(Tensor::from_data(TensorData::new(values, [1, c.channels, c.image_size, c.image_size]), device))
}
