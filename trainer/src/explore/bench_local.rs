//! `trainer bench-local`: the cost of a local edit against a full pass.

use std::time::Instant;

use burn::prelude::*;
use burn::tensor::{Distribution, TensorData};
use clap::Args;
use rgflow::RgFlowConfig;
use rgflow::cone::Direction;

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
    let packed_too = rgflow::host_memory(&device);
    println!("backend {name}; batch 1; edit: one pixel near the centre, all channels");
    println!("  full: a plain forward pass; local: `update_cached` (burn ops, any backend)");
    if packed_too {
        println!("  packed full / packed local: `PackedFlow` (packed weights, host states) run_cached / update");
        println!("  speedup: the faster full pass over the packed local update");
    }
    println!(
        "{:>5} {:>9} {:>9} {:>9} {:>9} {:>8} {:>16} {:>10} {:>14}",
        "L", "full ms", "local ms", "pk full", "pk local", "speedup", "blocks", "ratio", "log L / L² ×k"
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
        let original = values.clone();
        for c in 0..3 {
            values[c * l * l + site] += 0.5;
        }
        let edited = Tensor::<4>::from_data(TensorData::new(values.clone(), [1, 3, l, l]), &device);
        let mut changed = vec![false; l * l];
        changed[site] = true;
        let packed = packed_too.then(|| {
            let packed = rgflow::PackedFlow::new(&flow);
            let cache = packed.run_cached(Direction::Forward, &original);
            (packed, cache)
        });
        // Each kind of pass repeats back to back (as successive brush edits
        // would), so each finds its own weights in cache, not the other's.
        let time = |f: &mut dyn FnMut()| -> Vec<f64> {
            (0..args.repeats + 1)
                .map(|_| {
                    let t0 = Instant::now();
                    f();
                    t0.elapsed().as_secs_f64()
                })
                .collect()
        };
        let full_t = time(&mut || {
            let _ = flow.forward(edited.clone()).0.into_data();
        });
        let mut stats = None;
        let local_t = time(&mut || {
            let (updated, s) = flow.update_cached(&cache, edited.clone(), &changed);
            let _ = updated.output(3, l).into_data();
            stats = Some(s);
        });
        let (mut packed_full_t, mut packed_local_t) = (vec![], vec![]);
        if let Some((packed, base)) = &packed {
            let mut full = None;
            packed_full_t = time(&mut || full = Some(packed.run_cached(Direction::Forward, &values)));
            // The update runs in place, so each repeat starts from a copy (not timed).
            let mut caches = vec![base.clone(); args.repeats + 1].into_iter();
            let mut updated = None;
            packed_local_t = time(&mut || {
                let mut cache = caches.next().expect("a copy per repeat");
                let s = packed.update(&mut cache, &values, &changed);
                updated = Some((cache, s));
            });
            let (cache, s) = updated.expect("ran");
            anyhow::ensure!(Some(&cache) == full.as_ref(), "the packed update differs from the packed full pass");
            anyhow::ensure!(Some(s) == stats, "the packed update ran other blocks");
        }
        let med = |t: &[f64]| if t.is_empty() { f64::NAN } else { median(t[1..].to_vec()) };
        let (full, local, packed_full, packed_local) =
            (med(&full_t), med(&local_t), med(&packed_full_t), med(&packed_local_t));
        let s = stats.expect("ran");
        let ratio = s.blocks_evaluated as f64 / s.blocks_total as f64;
        let theory = (l as f64).log2() / (l * l) as f64;
        let (r0, t0) = *first.get_or_insert((ratio, theory));
        let speedup = if packed_too { full.min(packed_full) / packed_local } else { full / local };
        println!(
            "{l:>5} {:>9.2} {:>9.2} {:>9.2} {:>9.3} {:>7.1}× {:>7} / {:<6} {:>10.4} {:>14.4}",
            full * 1e3,
            local * 1e3,
            packed_full * 1e3,
            packed_local * 1e3,
            speedup,
            s.blocks_evaluated,
            s.blocks_total,
            ratio,
            theory * r0 / t0
        );
    }
    Ok(())
}
