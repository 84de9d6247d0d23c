//! `trainer eval`: bits per dimension on a split, averaged over several
//! dequantisation draws per image.

use std::path::PathBuf;

use clap::Args;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use rgflow::preprocess::{dequantize_level, to_level};

use crate::backend::{BackendChoice, select};
use crate::data::{self, EpochOptions, Loader, SourceSpec, Split, images_tensor};
use crate::model_io::{WeightsChoice, load_model_with, resolve_model_path};

/// Arguments of `trainer eval`.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// Weights (`export` output) or a training checkpoint; default: the shipped model.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Which weights of a training checkpoint: their moving average (when
    /// the run keeps one) or the raw weights.
    #[arg(long, value_enum, default_value_t = WeightsChoice::Average)]
    pub weights: WeightsChoice,
    /// Data source(s), as for `train`.
    #[arg(long = "data", required = true)]
    pub data: Vec<SourceSpec>,
    /// Which split.
    #[arg(long, value_enum, default_value_t = Split::Test)]
    pub split: Split,
    /// Dequantisation draws averaged per image.
    #[arg(long, default_value_t = 4, value_parser = crate::at_least_one::<usize>())]
    pub draws: usize,
    /// Evaluate at most this many images.
    #[arg(long, value_parser = crate::at_least_one::<usize>())]
    pub limit: Option<usize>,
    /// Images per batch.
    #[arg(long, default_value_t = 64, value_parser = crate::at_least_one::<usize>())]
    pub batch: usize,
    /// Seed of the dequantisation noise.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, value_enum, default_value_t = BackendChoice::Auto)]
    pub backend: BackendChoice,
    /// Also write the result as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// Mean and sample standard deviation.
pub fn mean_std(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    (mean, var.sqrt())
}

pub fn run(args: EvalArgs) -> anyhow::Result<()> {
    let (device, backend_name) = select(args.backend)?;
    let path = resolve_model_path(args.model)?;
    let model = load_model_with(&path, &device, args.weights)?;
    let c = model.config().clone();
    let dataset = data::open(&args.data)?;
    let mut items = dataset.split(args.split)?.to_vec();
    if let Some(limit) = args.limit {
        items.truncate(limit);
    }
    let loader = Loader::new(items, c.image_size, c.channels, args.seed, 1);
    let options = EpochOptions { shuffle: false, flip: false, dequantize: false, batch_size: args.batch };
    let mut per_image = Vec::new();
    let start = std::time::Instant::now();
    for (b, batch) in loader.epoch(0, 0, options).enumerate() {
        let batch = batch?;
        let mut sums = vec![0f64; batch.len];
        for draw in 0..args.draws {
            // x01 = k/255 here; dequantise as (k + u)/256 with seeded noise.
            let mut rng = StdRng::seed_from_u64(args.seed ^ ((b as u64) << 20) ^ draw as u64);
            let x: Vec<f32> = batch.x01.iter().map(|&v| dequantize_level(to_level(v), rng.random::<f32>())).collect();
            let x = images_tensor(x, batch.len, &c, &device);
            let bpd = model.bits_per_dim(x).into_data().try_to_vec::<f32>().expect("f32");
            for (s, v) in sums.iter_mut().zip(bpd) {
                *s += v as f64;
            }
        }
        per_image.extend(sums.into_iter().map(|s| s / args.draws as f64));
    }
    let skipped = loader.stats().skipped();
    if per_image.is_empty() {
        anyhow::bail!("no readable images in the {:?} split ({skipped} unreadable)", args.split);
    }
    let (mean, std) = mean_std(&per_image);
    let n = per_image.len();
    println!(
        "{:?} split: {n} images, bpd {mean:.4} ± {std:.4} (std over images; standard error {:.4}), {} draws, {:.1}s on {backend_name}",
        args.split,
        std / (n as f64).sqrt(),
        args.draws,
        start.elapsed().as_secs_f64()
    );
    if skipped > 0 {
        println!("skipped {skipped} unreadable images, e.g. {}", loader.stats().examples().join("; "));
    }
    if let Some(json) = args.json {
        let value = serde_json::json!({
            "model": path, "split": args.split, "images": n, "skipped": skipped,
            "draws": args.draws, "bpd_mean": mean, "bpd_std": std,
        });
        std::fs::write(&json, serde_json::to_string_pretty(&value)?)?;
    }
    Ok(())
}
