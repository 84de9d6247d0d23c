//! `trainer bench-inpaint`: how well each inpainting method fills held-out
//! faces — squared error to the truth (one completion, and the mean of K),
//! the completed image's bits/dim, and the hole's pixel variance against the
//! truth's — beside classical fills (the known pixels' mean colour, the
//! harmonic fill that solves Laplace's equation in the hole).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use burn::prelude::*;
use clap::{Args, ValueEnum};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rgflow::RgFlow;
use rgflow::explore::inpaint::harmonic_fill;
use rgflow::explore::{InpaintOptions, inpaint};
use rgflow::preprocess::{dequantize_level, to_level};

use super::ModelChoice;
use super::inpaint::{SamplerArgs, brush_strokes};
use crate::data::{self, SourceSpec, Split, load_item};

/// The holes the benchmark cuts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum HoleKind {
    /// An 8×8 square in the middle.
    Centre8,
    /// A 16×16 square in the middle.
    Centre16,
    /// Three random brush strokes (radius 1.5, 10 steps each), seeded per image.
    Strokes,
}

/// The fills compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FillMethod {
    /// Completions drawn from the model in the hole's causal cone.
    Sample,
    /// The most likely fill (Adam on log p).
    Map,
    /// The known pixels' mean colour.
    Mean,
    /// Laplace's equation in the hole, the known pixels as its boundary.
    Harmonic,
}

/// Inpainting quality on held-out images.
#[derive(Debug, Args)]
pub struct BenchInpaintArgs {
    #[command(flatten)]
    pub model: ModelChoice,
    /// Data source(s) as for `train`; the test split is used.
    #[arg(long = "data", required = true)]
    pub data: Vec<SourceSpec>,
    /// Images (the first of the test split).
    #[arg(long, default_value_t = 200, value_parser = crate::at_least_one::<usize>())]
    pub images: usize,
    #[arg(long, value_enum, value_delimiter = ',', default_value = "centre8,centre16,strokes")]
    pub holes: Vec<HoleKind>,
    #[arg(long, value_enum, value_delimiter = ',', default_value = "sample,map,mean,harmonic")]
    pub methods: Vec<FillMethod>,
    /// Completions per image for `sample` (the mean of these is scored too).
    #[arg(long, default_value_t = 8, value_parser = crate::at_least_one::<usize>())]
    pub samples: usize,
    #[command(flatten)]
    pub sampler: SamplerArgs,
    /// MAP: Adam steps.
    #[arg(long, default_value_t = 200, value_parser = crate::at_least_one::<usize>())]
    pub map_steps: usize,
    /// Also write the figures as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// Sums over images of one (hole, method) pair.
#[derive(Debug, Default, Clone)]
struct Scores {
    images: usize,
    mse_one: f64,
    mse_mean: f64,
    bpd: f64,
    hole_var: f64,
    seconds: f64,
}

impl Scores {
    fn add(&mut self, truth: &[f32], fills: &[Vec<f32>], unknown: &[bool], bpd: f64, seconds: f64) {
        let plane = unknown.len();
        let hole: Vec<usize> = (0..truth.len()).filter(|e| unknown[e % plane]).collect();
        let mse =
            |f: &[f32]| hole.iter().map(|&e| (f[e] as f64 - truth[e] as f64).powi(2)).sum::<f64>() / hole.len() as f64;
        let mean: Vec<f32> =
            (0..truth.len()).map(|e| fills.iter().map(|f| f[e]).sum::<f32>() / fills.len() as f32).collect();
        self.images += 1;
        self.mse_one += mse(&fills[0]);
        self.mse_mean += mse(&mean);
        self.bpd += bpd;
        self.hole_var += hole_variance(&fills[0], unknown);
        self.seconds += seconds;
    }
}

/// The pixel variance inside the hole, per channel, averaged over channels.
fn hole_variance(x: &[f32], unknown: &[bool]) -> f64 {
    let plane = unknown.len();
    let channels = x.len() / plane;
    let mut total = 0.0;
    for c in 0..channels {
        let v: Vec<f64> = (0..plane).filter(|s| unknown[*s]).map(|s| x[c * plane + s] as f64).collect();
        let m = v.iter().sum::<f64>() / v.len() as f64;
        total += v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / v.len() as f64;
    }
    total / channels as f64
}

/// The known pixels' mean colour in the hole.
fn mean_fill(x: &[f32], unknown: &[bool]) -> Vec<f32> {
    let plane = unknown.len();
    let mut out = x.to_vec();
    for c in 0..x.len() / plane {
        let known: Vec<f32> = (0..plane).filter(|s| !unknown[*s]).map(|s| x[c * plane + s]).collect();
        let m = known.iter().sum::<f32>() / known.len() as f32;
        (0..plane).filter(|s| unknown[*s]).for_each(|s| out[c * plane + s] = m);
    }
    out
}

/// Bits/dim of completed images as 8-bit pictures: rounded to `k/255`, then
/// dequantised as `(k + u)/256` with seeded noise, as `eval` scores data.
fn completed_bpd(flow: &RgFlow, images: &[Vec<f32>], seed: u64, device: &Device) -> f64 {
    let c = flow.config();
    let mut rng = StdRng::seed_from_u64(seed);
    let values: Vec<f32> =
        images.iter().flatten().map(|&v| dequantize_level(to_level(v), rng.random::<f32>())).collect();
    let x =
        Tensor::<4>::from_data(TensorData::new(values, [images.len(), c.channels, c.image_size, c.image_size]), device);
    let bpd = flow.bits_per_dim(x).into_data().try_to_vec::<f32>().expect("f32");
    bpd.iter().map(|&b| b as f64).sum::<f64>() / bpd.len() as f64
}

fn to_vecs(images: Tensor<4>) -> Vec<Vec<f32>> {
    let [b, ..] = images.dims();
    let v = images.into_data().try_to_vec::<f32>().expect("f32");
    v.chunks(v.len() / b).map(<[f32]>::to_vec).collect()
}

pub fn run(args: BenchInpaintArgs) -> anyhow::Result<()> {
    let (flow, device) = args.model.load()?;
    let c = flow.config().clone();
    let l = c.image_size;
    let dataset = data::open(&args.data)?;
    let items = dataset.split(Split::Test)?;
    let count = args.images.min(items.len());
    let options = args.sampler.options(flow.lattice().levels(), args.samples, true)?;
    let seed = args.sampler.seed;
    let packed = rgflow::PackedFlow::for_device(&flow, &device);
    println!(
        "{count} held-out images; sample: {} completions, T {}, {} rounds, β {:?}, moves kept: {:?}; map: {} Adam steps",
        args.samples,
        args.sampler.temperature,
        args.sampler.rounds,
        args.sampler.noise.0,
        args.sampler.accept,
        args.map_steps
    );
    let mut table: Vec<(HoleKind, Option<FillMethod>, Scores)> = Vec::new();
    for &kind in &args.holes {
        let mut truth_scores = Scores::default();
        let mut scores: Vec<Scores> = vec![Scores::default(); args.methods.len()];
        let mut acceptance = vec![0f64; args.methods.len()];
        for (i, item) in items[..count].iter().enumerate() {
            let pixels = load_item(item, l, c.channels).with_context(|| format!("test image {i}"))?;
            let truth: Vec<f32> = pixels.iter().map(|&k| rgflow::preprocess::from_level(k)).collect();
            let unknown = match kind {
                HoleKind::Centre8 => super::inpaint::MaskSpec::Centre(8).sites(l)?,
                HoleKind::Centre16 => super::inpaint::MaskSpec::Centre(16).sites(l)?,
                HoleKind::Strokes => brush_strokes(l, 3, 10, 1.5, seed ^ (i as u64) << 8),
            };
            let bpd_seed = seed ^ (i as u64) << 16;
            let x01 = Tensor::<4>::from_data(TensorData::new(truth.clone(), [1, c.channels, l, l]), &device);
            let itself = std::slice::from_ref(&truth);
            truth_scores.add(&truth, itself, &unknown, completed_bpd(&flow, itself, bpd_seed, &device), 0.0);
            for (m, &method) in args.methods.iter().enumerate() {
                let start = Instant::now();
                let fills = match method {
                    FillMethod::Sample => {
                        let seeded =
                            rgflow::explore::SampleOptions { seed: seed ^ (i as u64) << 24, ..options.clone() };
                        let mut sampler =
                            super::inpaint::cone_sampler(&flow, packed.as_ref(), &truth, &unknown, seeded, &device)?;
                        sampler.run();
                        acceptance[m] += sampler.acceptance();
                        to_vecs(sampler.images())
                    }
                    FillMethod::Map => {
                        let opts = InpaintOptions { steps: args.map_steps, ..InpaintOptions::default() };
                        to_vecs(inpaint(&flow, x01.clone(), &unknown, opts)?.image)
                    }
                    FillMethod::Mean => vec![mean_fill(&truth, &unknown)],
                    FillMethod::Harmonic => vec![harmonic_fill(&truth, &unknown, l)],
                };
                let seconds = start.elapsed().as_secs_f64();
                let bpd = completed_bpd(&flow, &fills, bpd_seed, &device);
                scores[m].add(&truth, &fills, &unknown, bpd, seconds);
            }
        }
        for (m, a) in args.methods.iter().zip(&acceptance) {
            if *m == FillMethod::Sample && options.metropolis {
                println!("{kind:?}: {:.0}% of the sampler's moves kept", 100.0 * a / count as f64);
            }
        }
        table.push((kind, None, truth_scores));
        table.extend(args.methods.iter().zip(scores).map(|(&m, s)| (kind, Some(m), s)));
    }
    println!(
        "{:<9} {:<9} {:>10} {:>12} {:>9} {:>10} {:>8} {:>9}",
        "hole", "method", "MSE one", "MSE mean", "bits/dim", "hole var", "var/true", "s/image"
    );
    let mut json = Vec::new();
    for (kind, method, s) in &table {
        let n = s.images as f64;
        let truth_var = table.iter().find(|(k, m, _)| k == kind && m.is_none()).map(|(_, _, t)| t.hole_var / n);
        let name = method.map_or("truth".to_string(), |m| format!("{m:?}").to_lowercase());
        let var = s.hole_var / n;
        println!(
            "{:<9} {:<9} {:>10.5} {:>12.5} {:>9.4} {:>10.5} {:>8.2} {:>9.3}",
            format!("{kind:?}").to_lowercase(),
            name,
            s.mse_one / n,
            s.mse_mean / n,
            s.bpd / n,
            var,
            truth_var.map_or(f64::NAN, |t| var / t),
            s.seconds / n
        );
        json.push(serde_json::json!({
            "hole": format!("{kind:?}").to_lowercase(), "method": name, "images": s.images,
            "mse_one": s.mse_one / n, "mse_mean": s.mse_mean / n, "bpd": s.bpd / n,
            "hole_variance": var, "seconds_per_image": s.seconds / n,
        }));
    }
    println!(
        "(MSE over hole pixels in [0, 1]; `MSE mean` scores the mean of the completions; bits/dim of the completed 8-bit image)"
    );
    if let Some(path) = args.json {
        std::fs::write(
            &path,
            serde_json::to_string_pretty(&serde_json::json!({
                "images": count, "samples": args.samples, "temperature": args.sampler.temperature, "rounds": args.sampler.rounds,
                "noise": args.sampler.noise.0, "accept": format!("{:?}", args.sampler.accept).to_lowercase(), "map_steps": args.map_steps, "results": json,
            }))?,
        )
        .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_fill_is_flat_and_keeps_the_known_pixels() {
        let l = 6;
        let x: Vec<f32> = (0..2 * l * l).map(|e| (e % 7) as f32 / 7.0).collect();
        let unknown: Vec<bool> = (0..l * l).map(|s| s % l > 3).collect();
        let filled = mean_fill(&x, &unknown);
        assert!(hole_variance(&filled, &unknown) < 1e-12);
        for e in 0..x.len() {
            if !unknown[e % (l * l)] {
                assert_eq!(filled[e], x[e]);
            }
        }
    }
}
