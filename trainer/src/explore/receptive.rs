//! `trainer receptive`: receptive fields of latents, a row per level.

use std::path::PathBuf;

use clap::Args;
use image::{Rgb, RgbImage};
use rgflow::explore::{LatentSite, receptive_field};

use super::{ImageChoice, ModelChoice};

/// `|∂x/∂z|` of a few latents per level, each tile scaled to its maximum,
/// the latent's own site in red.
#[derive(Debug, Args)]
pub struct ReceptiveArgs {
    #[command(flatten)]
    pub model: ModelChoice,
    #[command(flatten)]
    pub input: ImageChoice,
    /// Latents per level (spread over its sites).
    #[arg(long, default_value_t = 4)]
    pub per_level: usize,
    /// Channel of the latents.
    #[arg(long, default_value_t = 0)]
    pub channel: usize,
    #[arg(long, short)]
    pub out: PathBuf,
}

pub fn run(args: ReceptiveArgs) -> anyhow::Result<()> {
    let (flow, device) = args.model.load()?;
    let (l, c) = (flow.config().image_size, flow.config().channels);
    let z = flow.encode(args.input.load(&flow, &device)?);
    let mut tiles = Vec::new();
    for level in 0..flow.lattice().levels() {
        let sites: Vec<usize> = (0..l * l).filter(|&s| flow.lattice().site_level[s] == level).collect();
        for i in 0..args.per_level {
            let site =
                sites[(i * sites.len() / args.per_level + sites.len() / (2 * args.per_level)).min(sites.len() - 1)];
            let latent = LatentSite { row: site / l, col: site % l, channel: args.channel };
            let field = receptive_field(&flow, z.clone(), latent, 1e-2)?;
            let magnitude: Vec<f32> =
                (0..l * l).map(|p| (0..c).map(|ch| field[ch * l * l + p].abs()).fold(0.0, f32::max)).collect();
            let max = magnitude.iter().cloned().fold(1e-12, f32::max);
            let tile = RgbImage::from_fn(l as u32, l as u32, |x, y| {
                let p = y as usize * l + x as usize;
                if p == site {
                    return Rgb([255, 0, 0]);
                }
                let v = (255.0 * (magnitude[p] / max).sqrt()) as u8;
                Rgb([v, v, v])
            });
            tiles.push(tile);
        }
        println!("row {}: level {level}", level + 1);
    }
    let grid = rgflow::pixels::grid(&tiles, args.per_level, args.model.zoom, 1, [40, 40, 160]);
    grid.save(&args.out)?;
    println!("wrote {}", args.out.display());
    Ok(())
}
