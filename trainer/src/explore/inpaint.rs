//! `trainer inpaint`: fill a masked region, recomputing only its causal cone.

use std::path::PathBuf;

use burn::prelude::*;
use clap::Args;
use rgflow::ops::{InpaintOptions, inpaint};

use super::{ImageChoice, ModelChoice};
use crate::model_io::save_grid;

/// Original, masked, and inpainted image side by side.
#[derive(Debug, Args)]
pub struct InpaintArgs {
    #[command(flatten)]
    pub model: ModelChoice,
    #[command(flatten)]
    pub input: ImageChoice,
    /// Unknown region `row0,col0,row1,col1` (end exclusive); default: the centre quarter.
    #[arg(long)]
    pub mask: Option<String>,
    /// Adam steps.
    #[arg(long, default_value_t = 200)]
    pub steps: usize,
    /// Adam step size.
    #[arg(long, default_value_t = 0.05)]
    pub lr: f64,
    /// Recompute the whole image every step instead of the causal cone.
    #[arg(long)]
    pub full: bool,
    #[arg(long, short)]
    pub out: PathBuf,
}

pub fn run(args: InpaintArgs) -> anyhow::Result<()> {
    let (flow, device) = args.model.load()?;
    let l = flow.config().image_size;
    let (r0, c0, r1, c1) = match &args.mask {
        None => (3 * l / 8, l / 4, 5 * l / 8, 3 * l / 4),
        Some(t) => {
            let v: Vec<usize> = t.split(',').map(|p| p.trim().parse()).collect::<Result<_, _>>()?;
            match v[..] {
                [a, b, c, d] if a < c && b < d && c <= l && d <= l => (a, b, c, d),
                _ => anyhow::bail!("--mask takes row0,col0,row1,col1 inside the {l}×{l} image, got `{t}`"),
            }
        }
    };
    let unknown: Vec<bool> = (0..l * l).map(|s| (r0..r1).contains(&(s / l)) && (c0..c1).contains(&(s % l))).collect();
    let x01 = args.input.load(&flow, &device)?;
    let start = std::time::Instant::now();
    let result = inpaint(
        &flow,
        x01.clone(),
        &unknown,
        InpaintOptions { steps: args.steps, learning_rate: args.lr, local: !args.full },
    )?;
    let seconds = start.elapsed().as_secs_f64();
    let mask = Tensor::<1>::from_floats(
        unknown.iter().map(|&u| if u { 0.0 } else { 1.0 }).collect::<Vec<f32>>().as_slice(),
        &device,
    )
    .reshape([1, 1, l, l]);
    let masked = x01.clone() * mask.clone() + (mask.neg().add_scalar(1.0)).mul_scalar(0.5);
    save_grid(Tensor::cat(vec![x01, masked, result.image], 0), 3, args.model.zoom, &args.out)?;
    let bpd = |log_prob: f64| rgflow::preprocess::nats_to_bits_per_dim(-log_prob / flow.config().num_dims() as f64);
    println!(
        "log p {:.1} → {:.1} nats ({:.3} → {:.3} bits/dim) in {} steps, {:.2}s; {} of {} blocks per step",
        result.log_prob_start,
        result.log_prob_end,
        bpd(result.log_prob_start),
        bpd(result.log_prob_end),
        args.steps,
        seconds,
        result.blocks_per_step,
        result.blocks_total
    );
    println!("wrote {} (original, masked, inpainted)", args.out.display());
    Ok(())
}
