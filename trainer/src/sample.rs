//! `trainer sample`: a seeded grid of samples, one row per temperature.

use std::path::PathBuf;

use burn::prelude::*;
use clap::Args;
use rgflow::LevelTemperatures;
use rgflow::decoder::{Decoder, ProductPrecision};

use crate::backend::{BackendChoice, select};
use crate::model_io::{WeightsChoice, load_model_with, resolve_model_path, save_grid};

/// Arguments of `trainer sample`.
#[derive(Debug, Args)]
pub struct SampleArgs {
    /// Weights or checkpoint; default: the shipped model.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Which weights of a training checkpoint: their moving average (when
    /// the run keeps one) or the raw weights.
    #[arg(long, value_enum, default_value_t = WeightsChoice::Average)]
    pub weights: WeightsChoice,
    /// Output PNG.
    #[arg(long, short)]
    pub out: PathBuf,
    /// Samples per row.
    #[arg(long, default_value_t = 8, value_parser = crate::at_least_one::<usize>())]
    pub count: usize,
    /// Temperature rows: each `T` or `T0,T1,..` (one per level, finest first);
    /// separate rows with `;`, e.g. `0.5;0.8;1.0` or `0.2,0.2,0.8,0.8`.
    #[arg(long, default_value = "1.0")]
    pub temperature: String,
    /// Seed of the latents (rows share it, so a column is one latent at several temperatures).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Pixel zoom of the PNG.
    #[arg(long, default_value_t = 2, value_parser = crate::at_least_one::<u32>())]
    pub zoom: u32,
    #[arg(long, value_enum, default_value_t = BackendChoice::Auto)]
    pub backend: BackendChoice,
    /// Number type of the networks' matrix products when decoding on the
    /// CPU: `bf16` is ~1.6× faster on CPUs with AVX512-BF16 (~2.8× with AMX)
    /// and moves pixels by about half a level of 255 on average.
    #[arg(long, value_enum, default_value_t = ProductPrecision::F32)]
    pub precision: ProductPrecision,
}

pub fn run(args: SampleArgs) -> anyhow::Result<()> {
    let (device, backend_name) = select(args.backend)?;
    let model = load_model_with(&resolve_model_path(args.model)?, &device, args.weights)?;
    let precision = args.precision;
    // On the CPU the packed decoder gives the same images (f32) faster.
    // On a GPU the fused decoder runs a sub-layer per launch.
    if precision == ProductPrecision::Bf16 && !rgflow::host_memory(&device) {
        anyhow::bail!(
            "--precision bf16 is a CPU decoder option; {backend_name} decodes in f32 (drop --precision or use --backend cpu)"
        );
    }
    let decoder = Decoder::for_device(&model, &device, precision)?;
    if decoder.precision() != precision {
        eprintln!("note: this CPU has no AVX512-BF16, so --precision bf16 would only be slower; decoding in f32");
    }
    let levels = model.lattice().levels();
    let mut rows = Vec::new();
    for row in args.temperature.split(';') {
        let temps = LevelTemperatures::parse(row, levels)?;
        let z = model.sample_latents(args.count, &temps, args.seed, &device)?;
        rows.push(decoder.decode(z));
    }
    save_grid(Tensor::cat(rows, 0), args.count, args.zoom, &args.out)?;
    println!("wrote {}", args.out.display());
    Ok(())
}
