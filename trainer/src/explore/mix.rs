//! `trainer mix`: the paper's face-mixing figure.

use std::path::PathBuf;

use burn::prelude::*;
use clap::Args;
use rgflow::explore::mix_levels;

use super::{ModelChoice, input_image};
use crate::model_io::save_grid;

/// Latents of A at levels ≥ λ with those of B below λ, for every λ.
#[derive(Debug, Args)]
pub struct MixArgs {
    #[command(flatten)]
    pub model: ModelChoice,
    /// Image A (coarse structure): `seed:N` or an image file.
    #[arg(long, default_value = "seed:1")]
    pub a: String,
    /// Image B (fine detail): `seed:N` or an image file.
    #[arg(long, default_value = "seed:2")]
    pub b: String,
    /// More rows: pairs of samples from these seeds (A = 2k+1, B = 2k+2).
    #[arg(long, default_value_t = 1, value_parser = crate::at_least_one::<usize>())]
    pub rows: usize,
    /// Temperature of sampled inputs.
    #[arg(long, default_value = "0.8")]
    pub temperature: String,
    #[arg(long, short)]
    pub out: PathBuf,
}

/// One row: A, then the mix at every λ from 1 to levels − 1, then B.
pub fn run(args: MixArgs) -> anyhow::Result<()> {
    let (flow, device) = args.model.load()?;
    let levels = flow.lattice().levels();
    // The device's fastest decoder (packed on the CPU, fused on a GPU).
    let decoder = rgflow::Decoder::for_device(&flow, &device, rgflow::decoder::ProductPrecision::F32)?;
    let mut rows = Vec::new();
    for r in 0..args.rows {
        let (a, b) = if r == 0 {
            (args.a.clone(), args.b.clone())
        } else {
            (format!("seed:{}", 2 * r + 1), format!("seed:{}", 2 * r + 2))
        };
        let za = flow.encode(input_image(&flow, "--a", &a, &args.temperature, &device)?);
        let zb = flow.encode(input_image(&flow, "--b", &b, &args.temperature, &device)?);
        let strip: Vec<Tensor<4>> =
            (0..=levels).map(|lambda| mix_levels(&flow, za.clone(), zb.clone(), lambda)).collect();
        rows.push(decoder.decode(Tensor::cat(strip, 0)));
    }
    save_grid(Tensor::cat(rows, 0), levels + 1, args.model.zoom, &args.out)?;
    println!("wrote {} (columns: λ = 0 (A) … {levels} (B))", args.out.display());
    Ok(())
}
