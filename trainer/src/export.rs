//! `trainer export`: the weights the web demo and the CLI load, with the
//! config and a format version inside, validated by loading them back.

use std::path::{Path, PathBuf};

use burn::prelude::*;
use clap::Args;
use rgflow::RgFlow;
use rgflow::weights::StoragePrecision;

use crate::model_io::{WeightsChoice, load_model_with};

/// Arguments of `trainer export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// A training checkpoint (or weight file) to export.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Which weights of a training checkpoint: their moving average (when
    /// the run keeps one) or the raw weights.
    #[arg(long, value_enum, default_value_t = WeightsChoice::Average)]
    pub weights: WeightsChoice,
    /// Output weight file (e.g. `models/celeba32.rgflow`).
    #[arg(long, short)]
    pub out: PathBuf,
    /// Store weights as 16-bit floats (half the size).
    #[arg(long)]
    pub f16: bool,
}

pub fn run(args: ExportArgs) -> anyhow::Result<()> {
    let device = Device::flex();
    let model = load_model_with(&args.checkpoint, &device, args.weights)?;
    write_validated(&model, &args.checkpoint, &args.out, args.f16)
}

/// Writes `model` as a weight file at `out` (f16 or f32), validated before
/// anything is written, so a bad export never replaces a good file: the
/// bytes load back and give the same model up to rounding, with finite
/// log-probabilities. `source` names where the weights came from in errors.
pub fn write_validated(model: &RgFlow, source: &Path, out: &Path, f16: bool) -> anyhow::Result<()> {
    let device = Device::flex();
    let precision = if f16 { StoragePrecision::F16 } else { StoragePrecision::F32 };
    let bytes = rgflow::weights::to_bytes(model, precision)?;
    let back = rgflow::weights::from_bytes(bytes.clone(), &out.display().to_string(), &device)?;
    let probe = Tensor::<4>::random(
        [2, model.config().channels, model.config().image_size, model.config().image_size],
        burn::tensor::Distribution::Normal(0.0, 1.0),
        &device,
    );
    let a = model.log_prob(probe.clone()).into_data().try_to_vec::<f32>().expect("f32");
    let b = back.log_prob(probe).into_data().try_to_vec::<f32>().expect("f32");
    if let Some(bad) = a.iter().chain(&b).find(|v| !v.is_finite()) {
        anyhow::bail!(
            "{} holds weights that give a log-probability of {bad}: not exported (a diverged run? try an earlier checkpoint)",
            source.display()
        );
    }
    let worst = a.iter().zip(&b).map(|(x, y)| ((x - y) / x.abs().max(1.0)).abs()).fold(0f32, f32::max);
    let tolerance = if f16 { 1e-2 } else { 1e-6 };
    if worst.is_nan() || worst > tolerance {
        anyhow::bail!("exported weights do not reproduce the model (relative log-prob error {worst}); nothing written");
    }
    rgflow::weights::write_atomic(out, &bytes)?;
    println!(
        "wrote {} ({:.2} MB, {:?}, {} parameters; log-prob check rel. err {worst:.1e})",
        out.display(),
        bytes.len() as f64 / 1e6,
        precision,
        model.num_parameters()
    );
    Ok(())
}
