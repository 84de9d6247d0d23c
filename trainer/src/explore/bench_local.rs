//! `trainer bench-local`: the cost of a local edit against a full pass.

use std::time::Instant;

use burn::prelude::*;
use burn::tensor::{Distribution, TensorData};
use clap::Args;
use rgflow::RgFlowConfig;
use rgflow::local::Direction;

use crate::backend::{BackendChoice, select};

/// Times a one-pixel edit's local update and a full forward for several L.
#[derive(Debug, Args)]
pub struct BenchLocalArgs {
    /// Image sizes.
    #[arg(long, value_delimiter = ',', default_value = "32,64,128")]
    pub sizes: Vec<usize>,
    /// Coupling layers, residual blocks, hidden layers, width (one value for all levels).
    #[arg(long, default_value = "2")]
    pub nlayers: String,
    #[arg(long, default_value = "2")]
    pub nresblocks: String,
    #[arg(long, default_value = "2")]
    pub nmlp: String,
    #[arg(long, default_value = "128")]
    pub nhidden: String,
    /// Timed repetitions.
    #[arg(long, default_value_t = 5)]
    pub repeats: usize,
    #[arg(long, value_enum, default_value_t = BackendChoice::Flex)]
    pub backend: BackendChoice,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub fn run(args: BenchLocalArgs) -> anyhow::Result<()> {
    let (device, name) = select(args.backend)?;
    println!("backend {name}; batch 1; edit: one pixel near the centre, all channels");
    println!(
        "{:>5} {:>10} {:>10} {:>8} {:>16} {:>10} {:>14}",
        "L", "full ms", "local ms", "speedup", "blocks", "ratio", "log L / L² ×k"
    );
    let mut first: Option<(f64, f64)> = None;
    for &l in &args.sizes {
        let config = RgFlowConfig::from_level_specs(l, 3, &args.nlayers, &args.nresblocks, &args.nmlp, &args.nhidden)?;
        device.seed(0);
        let flow = rgflow::testing::jitter_parameters(config.init(&device), 0.02, 7);
        let x = Tensor::<4>::random([1, 3, l, l], Distribution::Normal(0.0, 1.0), &device);
        let cache = flow.run_cached(Direction::Forward, x.clone());
        let site = (l / 2 + 1) * l + l / 2 + 1;
        let mut values = x.clone().into_data().try_to_vec::<f32>().expect("f32");
        for c in 0..3 {
            values[c * l * l + site] += 0.5;
        }
        let edited = Tensor::<4>::from_data(TensorData::new(values, [1, 3, l, l]), &device);
        let mut changed = vec![false; l * l];
        changed[site] = true;
        let (mut full_t, mut local_t) = (Vec::new(), Vec::new());
        let mut stats = None;
        for _ in 0..args.repeats + 1 {
            let t0 = Instant::now();
            let _ = flow.forward(edited.clone()).0.into_data();
            full_t.push(t0.elapsed().as_secs_f64());
            let t0 = Instant::now();
            let (updated, s) = flow.update_cached(&cache, edited.clone(), &changed);
            let _ = updated.output(3, l).into_data();
            local_t.push(t0.elapsed().as_secs_f64());
            stats = Some(s);
        }
        let (full, local) = (median(full_t[1..].to_vec()), median(local_t[1..].to_vec()));
        let s = stats.expect("ran");
        let ratio = s.blocks_evaluated as f64 / s.blocks_total as f64;
        let theory = (l as f64).log2() / (l * l) as f64;
        let (r0, t0) = *first.get_or_insert((ratio, theory));
        println!(
            "{l:>5} {:>10.2} {:>10.2} {:>7.1}× {:>7} / {:<6} {:>10.4} {:>14.4}",
            full * 1e3,
            local * 1e3,
            full / local,
            s.blocks_evaluated,
            s.blocks_total,
            ratio,
            theory * r0 / t0
        );
    }
    Ok(())
}
