//! `trainer export`: the weights the web demo and the CLI load, with the
//! config and a format version inside, validated by loading them back.

use std::path::PathBuf;

use burn::prelude::*;
use clap::Args;
use rgflow::store::Precision;

use crate::model_io::load_model;

/// Arguments of `trainer export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// A training checkpoint (or weight file) to export.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Output weight file (e.g. `models/celeba32.rgflow`).
    #[arg(long, short)]
    pub out: PathBuf,
    /// Store weights as 16-bit floats (half the size).
    #[arg(long)]
    pub f16: bool,
}

pub fn run(args: ExportArgs) -> anyhow::Result<()> {
    let device = Device::flex();
    let model = load_model(&args.checkpoint, &device)?;
    let precision = if args.f16 { Precision::F16 } else { Precision::F32 };
    let bytes = rgflow::store::to_bytes(&model, precision)?;
    rgflow::store::write_atomic(&args.out, &bytes)?;
    // Validate: the written file loads and gives the same model up to rounding.
    let back = rgflow::store::load(&args.out, &device)?;
    let probe = Tensor::<4>::random(
        [2, model.config().channels, model.config().image_size, model.config().image_size],
        burn::tensor::Distribution::Normal(0.0, 1.0),
        &device,
    );
    let a = model.log_prob(probe.clone()).into_data().try_to_vec::<f32>().expect("f32");
    let b = back.log_prob(probe).into_data().try_to_vec::<f32>().expect("f32");
    let worst = a.iter().zip(&b).map(|(x, y)| ((x - y) / x.abs().max(1.0)).abs()).fold(0f32, f32::max);
    let tolerance = if args.f16 { 1e-2 } else { 1e-6 };
    if worst > tolerance {
        anyhow::bail!("exported weights do not reproduce the model (relative log-prob error {worst})");
    }
    println!(
        "wrote {} ({:.2} MB, {:?}, {} parameters; log-prob check rel. err {worst:.1e})",
        args.out.display(),
        bytes.len() as f64 / 1e6,
        precision,
        model.num_parameters()
    );
    Ok(())
}
