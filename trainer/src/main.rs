//! `trainer`: train, evaluate and explore RG-Flow models.

mod alloc;
mod backend;
mod bench;
mod checkpoint;
mod data;
mod ema;
mod eval;
mod explore;
mod export;
mod import;
mod model_args;
mod model_io;
mod optim;
mod parallel;
mod plot;
mod sample;
mod train;

use clap::{Parser, Subcommand};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Train, evaluate and explore RG-Flow, a hierarchical normalizing flow.
#[derive(Debug, Parser)]
#[command(name = "trainer", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Train a model (AdamW, dequantisation + logit; progress in bits/dim).
    Train(Box<train::TrainArgs>),
    /// Bits per dimension on a split (mean ± std over images).
    Eval(eval::EvalArgs),
    /// A seeded grid of samples at one or more temperatures.
    Sample(sample::SampleArgs),
    /// Export weights for the web demo and the CLI.
    Export(export::ExportArgs),
    /// The authors' PyTorch checkpoint (`.state`/`.pth`/safetensors) as a weight file.
    Import(import::ImportArgs),
    /// Learning curves of one or more runs (`log.jsonl`) as a PNG.
    Plot(plot::PlotArgs),
    /// Training and sampling throughput for a config.
    Bench(bench::BenchArgs),
    /// Mixing across scales: A's coarse latents with B's fine ones, for every cut-off λ.
    Mix(explore::mix::MixArgs),
    /// Vary one latent (per level) around an image's encoding.
    Factor(explore::factor::FactorArgs),
    /// A random walk of one level's latents.
    Walk(explore::walk::WalkArgs),
    /// Receptive fields of latents, a row per level.
    Receptive(explore::receptive::ReceptiveArgs),
    /// Fill masked regions: completions drawn in the hole's causal cone, or the MAP fill.
    Inpaint(explore::inpaint::InpaintArgs),
    /// Inpainting quality on held-out images, beside classical fills.
    BenchInpaint(explore::bench_inpaint::BenchInpaintArgs),
    /// Cost of a local edit against a full pass, for several L.
    BenchLocal(explore::bench_local::BenchLocalArgs),
}

/// A flag's value parser for counts that must be at least 1 (images, rows,
/// steps, draws, zoom): 0 is refused with a message naming the flag.
pub fn at_least_one<T>() -> clap::builder::RangedU64ValueParser<T>
where
    T: TryFrom<u64> + Clone + Send + Sync + 'static,
    <T as TryFrom<u64>>::Error: std::fmt::Display + Send + Sync + 'static,
{
    clap::builder::RangedU64ValueParser::<T>::new().range(1..)
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    alloc::keep_freed_memory();
    rgflow::decoder::Isa::chosen().map_err(anyhow::Error::msg)?;
    // The CPU backend splits every op across rayon's pool. Called from a
    // thread outside the pool, each op wakes the workers and puts the caller
    // to sleep until they finish — thousands of round trips per training
    // step. Running the command on a pool worker makes each op a cheap
    // fork-join instead.
    let mut workers = Vec::new();
    let pool = rayon::ThreadPoolBuilder::new()
        .thread_name(|i| format!("cpu-{i}"))
        .spawn_handler(|worker| {
            let mut thread = std::thread::Builder::new();
            if let Some(name) = worker.name() {
                thread = thread.name(name.to_owned());
            }
            workers.push(thread.spawn(|| worker.run())?);
            Ok(())
        })
        .build()?;
    let result = pool.install(|| run(cli));
    // The workers have to be gone before the process exits: a worker that
    // touched Vulkan (lavapipe loads LLVM, which loads libxml2) frees
    // libxml2's per-thread state as it ends, and libxml2's own destructor,
    // run by `exit`, frees the same state — a worker still ending then is a
    // double free (seen as `double free or corruption` aborts after `sample
    // --backend wgpu` had written its picture). Dropping the pool tells the
    // workers to end; joining waits until they have, destructors included.
    drop(pool);
    for worker in workers {
        if worker.join().is_err() {
            eprintln!("warning: a CPU worker thread panicked while ending");
        }
    }
    result
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Train(a) => train::run(*a),
        Command::Eval(a) => eval::run(a),
        Command::Sample(a) => sample::run(a),
        Command::Export(a) => export::run(a),
        Command::Import(a) => import::run(a),
        Command::Plot(a) => plot::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Mix(a) => explore::mix::run(a),
        Command::Factor(a) => explore::factor::run(a),
        Command::Walk(a) => explore::walk::run(a),
        Command::Receptive(a) => explore::receptive::run(a),
        Command::Inpaint(a) => explore::inpaint::run(a),
        Command::BenchInpaint(a) => explore::bench_inpaint::run(a),
        Command::BenchLocal(a) => explore::bench_local::run(a),
    }
}
