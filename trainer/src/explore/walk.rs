//! `trainer walk`: a random walk of the latents of one level.

use std::path::PathBuf;

use clap::Args;
use rgflow::explore::random_walk;

use super::{ImageChoice, ModelChoice};
use crate::model_io::save_grid;

/// Frames of a walk at one level, everything else fixed.
#[derive(Debug, Args)]
pub struct WalkArgs {
    #[command(flatten)]
    pub model: ModelChoice,
    #[command(flatten)]
    pub input: ImageChoice,
    /// The level that moves (0 = finest).
    #[arg(long)]
    pub level: usize,
    /// Frames.
    #[arg(long, default_value_t = 16, value_parser = crate::at_least_one::<usize>())]
    pub steps: usize,
    /// Step angle θ in `z ← cos θ z + sin θ ε`.
    #[arg(long, default_value_t = 0.3)]
    pub angle: f64,
    /// Seed of the walk's noise.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, short)]
    pub out: PathBuf,
}

pub fn run(args: WalkArgs) -> anyhow::Result<()> {
    let (flow, device) = args.model.load()?;
    let z = flow.encode(args.input.load(&flow, &device)?);
    let frames = random_walk(&flow, z, args.level, args.steps, args.angle, args.seed)?;
    // The device's fastest decoder (packed on the CPU, fused on a GPU).
    let decoder = rgflow::Decoder::for_device(&flow, &device, rgflow::decoder::ProductPrecision::F32)?;
    save_grid(decoder.decode(frames), 8, args.model.zoom, &args.out)?;
    println!("wrote {}", args.out.display());
    Ok(())
}
