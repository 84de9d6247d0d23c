//! `trainer factor`: vary one latent around an image's encoding.

use std::path::PathBuf;

use burn::prelude::*;
use clap::Args;
use rgflow::explore::{LatentSite, vary_latent};

use super::{ImageChoice, ModelChoice};
use crate::model_io::save_grid;

/// One strip per level (or one latent): the image as the latent moves.
#[derive(Debug, Args)]
pub struct FactorArgs {
    #[command(flatten)]
    pub model: ModelChoice,
    #[command(flatten)]
    pub input: ImageChoice,
    /// The latent as `row,col,channel`; default: the first site of every level, channel 0.
    #[arg(long)]
    pub latent: Option<String>,
    /// Values from `-range` to `+range` around the encoding's own value.
    #[arg(long, default_value_t = 3.0)]
    pub range: f32,
    /// Images per strip.
    #[arg(long, default_value_t = 9, value_parser = crate::at_least_one::<usize>())]
    pub count: usize,
    #[arg(long, short)]
    pub out: PathBuf,
}

fn parse_latent(text: &str) -> anyhow::Result<LatentSite> {
    let v: Vec<usize> = text.split(',').map(|p| p.trim().parse()).collect::<Result<_, _>>()?;
    match v[..] {
        [row, col, channel] => Ok(LatentSite { row, col, channel }),
        _ => anyhow::bail!("--latent takes row,col,channel, got `{text}`"),
    }
}

pub fn run(args: FactorArgs) -> anyhow::Result<()> {
    let (flow, device) = args.model.load()?;
    let z = flow.encode(args.input.load(&flow, &device)?);
    let latents = match &args.latent {
        Some(t) => vec![parse_latent(t)?],
        None => {
            (0..flow.lattice().levels()).map(|l| LatentSite::first_of_level(&flow, l, 0)).collect::<Result<_, _>>()?
        }
    };
    // The device's fastest decoder (packed on the CPU, fused on a GPU).
    let decoder = rgflow::Decoder::for_device(&flow, &device, rgflow::decoder::ProductPrecision::F32)?;
    let mut strips = Vec::new();
    for latent in &latents {
        let e = latent.element(&flow)?;
        let value = z.clone().reshape([-1]).narrow(0, e, 1).into_scalar::<f32>();
        let n = args.count.max(2);
        let values: Vec<f32> =
            (0..n).map(|i| value - args.range + 2.0 * args.range * i as f32 / (n - 1) as f32).collect();
        strips.push(decoder.decode(vary_latent(&flow, z.clone(), *latent, &values)?));
        println!("row {}: latent {latent:?} (level {})", strips.len(), latent.level(&flow));
    }
    save_grid(Tensor::cat(strips, 0), args.count.max(2), args.model.zoom, &args.out)?;
    println!("wrote {}", args.out.display());
    Ok(())
}
