//! `trainer inpaint`: fill masked regions — completions drawn from the model in
//! the hole's causal cone, or the most likely fill — as a PNG grid.

use std::path::PathBuf;

use anyhow::Context;
use burn::prelude::*;
use clap::{Args, ValueEnum};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rgflow::explore::{ConeSampler, InpaintOptions, SampleOptions, inpaint};
use rgflow::{LevelTemperatures, PackedFlow, RgFlow};

use super::{ImageChoice, ModelChoice};
use crate::model_io::save_grid;

/// How the hole is filled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Method {
    /// Completions drawn from the model (redraws in the hole's causal cone).
    Sample,
    /// The most likely fill: Adam on log p over the hole's pixels.
    Map,
}

/// Which of the sampler's moves a completion keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Accept {
    /// Every move.
    Always,
    /// As often as the known pixels agree with the move (Metropolis).
    Metropolis,
}

/// Per mask, a row: original, masked, and the completions.
#[derive(Debug, Args)]
pub struct InpaintArgs {
    #[command(flatten)]
    pub model: ModelChoice,
    #[command(flatten)]
    pub input: ImageChoice,
    /// Unknown region: `centre:N` (an N×N square in the middle) or
    /// `row0,col0,row1,col1` (end exclusive). Repeat for more rows.
    #[arg(long, default_value = "centre:16")]
    pub mask: Vec<MaskSpec>,
    #[arg(long, value_enum, default_value_t = Method::Sample)]
    pub method: Method,
    /// Sampling: completions per mask.
    #[arg(long, default_value_t = 4, value_parser = crate::at_least_one::<usize>())]
    pub samples: usize,
    #[command(flatten)]
    pub sampler: SamplerArgs,
    /// MAP: Adam steps.
    #[arg(long, default_value_t = 200, value_parser = crate::at_least_one::<usize>())]
    pub steps: usize,
    /// MAP: Adam step size.
    #[arg(long, default_value_t = 0.05)]
    pub lr: f64,
    /// Recompute whole images instead of the causal cone (same result, slower).
    #[arg(long)]
    pub full: bool,
    #[arg(long, short)]
    pub out: PathBuf,
}

/// The sampler's settings (`inpaint` and `bench-inpaint`).
#[derive(Debug, Args)]
pub struct SamplerArgs {
    /// Sampling: temperature of the cone's latents: one value, one per level
    /// (finest first), or `fine..coarse` (linear over the levels).
    #[arg(long, default_value = "0.4..1")]
    pub temperature: String,
    /// Sampling: rounds of redraw, decode, paste.
    #[arg(long, default_value_t = 16, value_parser = crate::at_least_one::<usize>())]
    pub rounds: usize,
    /// Sampling: the redraw step β of the first and the last round, in (0, 1].
    #[arg(long, default_value = "1,0.1", value_parser = parse_noise)]
    pub noise: NoiseSteps,
    /// Sampling: which rounds' moves a completion keeps — `always`: every one;
    /// `metropolis`: as often as the known pixels agree with them (smoother).
    #[arg(long, value_enum, default_value_t = Accept::Always)]
    pub accept: Accept,
    /// Sampling: seed of the redraws.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

impl SamplerArgs {
    /// [`SampleOptions`] for a model with `levels` levels.
    pub fn options(&self, levels: usize, samples: usize, local: bool) -> anyhow::Result<SampleOptions> {
        let temperatures = LevelTemperatures::parse(&self.temperature, levels)
            .with_context(|| format!("--temperature {}", self.temperature))?;
        Ok(SampleOptions {
            samples,
            rounds: self.rounds,
            temperatures,
            noise: self.noise.0,
            seed: self.seed,
            local,
            metropolis: self.accept == Accept::Metropolis,
        })
    }
}

/// A hole's shape, as `--mask` gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaskSpec {
    /// An `N×N` square in the middle of the image.
    Centre(usize),
    /// Rows `r0..r1`, columns `c0..c1`.
    Rect([usize; 4]),
}

impl std::str::FromStr for MaskSpec {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        if let Some(n) = text.strip_prefix("centre:").or_else(|| text.strip_prefix("center:")) {
            return match n.trim().parse::<usize>() {
                Ok(n) if n > 0 => Ok(Self::Centre(n)),
                _ => Err(format!("`{text}`: centre:N takes a positive whole N")),
            };
        }
        let v: Vec<usize> = text
            .split(',')
            .map(|p| p.trim().parse::<usize>())
            .collect::<Result<_, _>>()
            .map_err(|e| format!("`{text}`: expected centre:N or row0,col0,row1,col1 ({e})"))?;
        match v[..] {
            [a, b, c, d] if a < c && b < d => Ok(Self::Rect([a, b, c, d])),
            _ => Err(format!("`{text}`: expected row0,col0,row1,col1 with row0 < row1 and col0 < col1")),
        }
    }
}

impl MaskSpec {
    /// The unknown sites of an `l×l` image, `[L²]`.
    pub fn sites(&self, l: usize) -> anyhow::Result<Vec<bool>> {
        let [r0, c0, r1, c1] = match *self {
            Self::Centre(n) if n <= l => [(l - n) / 2, (l - n) / 2, (l + n) / 2, (l + n) / 2],
            Self::Rect(r) if r[2] <= l && r[3] <= l => r,
            _ => anyhow::bail!("--mask {self:?} does not fit in the {l}×{l} image"),
        };
        Ok((0..l * l).map(|s| (r0..r1).contains(&(s / l)) && (c0..c1).contains(&(s % l))).collect())
    }
}

/// Random brush strokes over an `l×l` image: `strokes` random walks of a disc
/// of radius `radius`, each `length` steps of one pixel — the benchmark's
/// stand-in for a user's brush. Seeded.
pub fn brush_strokes(l: usize, strokes: usize, length: usize, radius: f64, seed: u64) -> Vec<bool> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut unknown = vec![false; l * l];
    let margin = radius + 2.0;
    for _ in 0..strokes {
        let (mut y, mut x) = (rng.random_range(margin..l as f64 - margin), rng.random_range(margin..l as f64 - margin));
        let mut angle: f64 = rng.random_range(0.0..std::f64::consts::TAU);
        for _ in 0..length {
            for (s, u) in unknown.iter_mut().enumerate() {
                let (dy, dx) = ((s / l) as f64 - y, (s % l) as f64 - x);
                *u |= dy * dy + dx * dx <= radius * radius;
            }
            angle += rng.random_range(-0.6..0.6);
            y = (y + angle.sin()).clamp(0.0, l as f64 - 1.0);
            x = (x + angle.cos()).clamp(0.0, l as f64 - 1.0);
        }
    }
    unknown
}

/// `--noise first,last`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NoiseSteps(pub [f64; 2]);

pub fn parse_noise(text: &str) -> Result<NoiseSteps, String> {
    let v: Vec<f64> = text
        .split(',')
        .map(|p| p.trim().parse::<f64>())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("`{text}`: expected first,last ({e})"))?;
    let steps = match v[..] {
        [b] => [b, b],
        [a, b] => [a, b],
        _ => return Err(format!("`{text}`: expected one value or first,last")),
    };
    if steps.iter().any(|b| !(*b > 0.0 && *b <= 1.0)) {
        return Err(format!("`{text}`: each step must lie in (0, 1]"));
    }
    Ok(NoiseSteps(steps))
}

/// `x01` with the hole painted mid-grey, as the grid shows it: `[1, C, L, L]`.
pub fn masked(x01: Tensor<4>, unknown: &[bool]) -> Tensor<4> {
    let l = x01.dims()[2];
    let keep: Vec<f32> = unknown.iter().map(|&u| if u { 0.0 } else { 1.0 }).collect();
    let keep = Tensor::<1>::from_floats(keep.as_slice(), &x01.device()).reshape([1, 1, l, l]);
    x01 * keep.clone() + keep.neg().add_scalar(1.0).mul_scalar(0.5)
}

/// A sampler on the packed flow when there is one, else on burn ops.
pub fn cone_sampler(
    flow: &RgFlow,
    packed: Option<&PackedFlow>,
    x01: &[f32],
    unknown: &[bool],
    options: SampleOptions,
    device: &Device,
) -> rgflow::Result<ConeSampler> {
    match packed {
        Some(packed) => ConeSampler::packed(packed, x01, unknown, options),
        None => ConeSampler::new(flow, x01, unknown, options, device),
    }
}

pub fn run(args: InpaintArgs) -> anyhow::Result<()> {
    let (flow, device) = args.model.load()?;
    let l = flow.config().image_size;
    let x01 = args.input.load(&flow, &device)?;
    let options = args.sampler.options(flow.lattice().levels(), args.samples, !args.full)?;
    let packed = PackedFlow::for_device(&flow, &device);
    let mut rows = Vec::new();
    let mut columns = 0;
    for spec in &args.mask {
        let unknown = spec.sites(l)?;
        let start = std::time::Instant::now();
        let filled = match args.method {
            Method::Sample => {
                let pixels = x01.clone().into_data().try_to_vec::<f32>().map_err(|e| anyhow::anyhow!("{e:?}"))?;
                let mut sampler = cone_sampler(&flow, packed.as_ref(), &pixels, &unknown, options.clone(), &device)?;
                sampler.run();
                let images = sampler.images();
                let _ = images.clone().into_data();
                let kept = if options.metropolis {
                    format!(", {:.0}% of moves kept", 100.0 * sampler.acceptance())
                } else {
                    String::new()
                };
                println!(
                    "{spec:?}: {} completions in {:.2}s, {} rounds of {} of {} blocks (encode + decode){kept}",
                    args.samples,
                    start.elapsed().as_secs_f64(),
                    args.sampler.rounds,
                    sampler.blocks_per_round(),
                    2 * sampler.blocks_total(),
                );
                images
            }
            Method::Map => {
                let opts = InpaintOptions { steps: args.steps, learning_rate: args.lr, local: !args.full };
                let result = inpaint(&flow, x01.clone(), &unknown, opts)?;
                let bpd = |log_prob: f64| {
                    rgflow::preprocess::nats_to_bits_per_dim(-log_prob / flow.config().num_dims() as f64)
                };
                println!(
                    "{spec:?}: log p {:.1} → {:.1} nats ({:.3} → {:.3} bits/dim) in {} steps, {:.2}s; {} of {} blocks per step",
                    result.log_prob_start,
                    result.log_prob_end,
                    bpd(result.log_prob_start),
                    bpd(result.log_prob_end),
                    args.steps,
                    start.elapsed().as_secs_f64(),
                    result.blocks_per_step,
                    result.blocks_total
                );
                result.image
            }
        };
        columns = 2 + filled.dims()[0];
        rows.push(x01.clone());
        rows.push(masked(x01.clone(), &unknown));
        rows.push(filled);
    }
    save_grid(Tensor::cat(rows, 0), columns, args.model.zoom, &args.out)?;
    println!("wrote {} (per mask: original, masked, completions)", args.out.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_parse_and_fit() {
        let centre: MaskSpec = "centre:8".parse().unwrap();
        let sites = centre.sites(32).unwrap();
        assert_eq!(sites.iter().filter(|s| **s).count(), 64);
        assert!(sites[12 * 32 + 12] && sites[19 * 32 + 19] && !sites[11 * 32 + 12] && !sites[20 * 32 + 19]);
        let rect: MaskSpec = "1,2,3,5".parse().unwrap();
        assert_eq!(rect.sites(8).unwrap().iter().filter(|s| **s).count(), 6);
        assert!("centre:0".parse::<MaskSpec>().is_err());
        assert!("3,2,1,5".parse::<MaskSpec>().is_err());
        assert!("1,2,3".parse::<MaskSpec>().is_err());
        assert!(MaskSpec::Centre(40).sites(32).is_err());
        assert!(parse_noise("1,0.1").is_ok() && parse_noise("0").is_err() && parse_noise("1,2").is_err());
    }

    #[test]
    fn strokes_are_seeded_and_partial() {
        let a = brush_strokes(32, 3, 10, 1.5, 7);
        assert_eq!(a, brush_strokes(32, 3, 10, 1.5, 7));
        assert_ne!(a, brush_strokes(32, 3, 10, 1.5, 8));
        let n = a.iter().filter(|s| **s).count();
        assert!(n > 20 && n < 32 * 32 / 2, "{n} sites");
    }
}
