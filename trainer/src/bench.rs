//! `trainer bench`: training and sampling throughput for a config (and, on a
//! GPU backend, the dispatches a step and a sampling batch take), printed,
//! never asserted. Compare with the authors' PyTorch code at the same config
//! on the same idle machine.

use std::time::Instant;

use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::Distribution;
use clap::Args;
use rgflow::decoder::ProductPrecision;
use rgflow::{CpuDecoder, LevelTemperatures};

use crate::backend::{BackendChoice, select};
use crate::model_args::ModelArgs;
use crate::optim::{ClippedAdamW, clip_factor, global_norm};

/// Arguments of `trainer bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Images per step.
    #[arg(long, default_value_t = 64, value_parser = crate::at_least_one::<usize>())]
    pub batch: usize,
    /// Timed training steps (after 2 warm-up steps).
    #[arg(long, default_value_t = 10, value_parser = crate::at_least_one::<usize>())]
    pub steps: usize,
    /// Timed sampling and log-likelihood batches (after 1 warm-up batch); 0
    /// times training only.
    #[arg(long, default_value_t = 5)]
    pub sample_batches: usize,
    #[arg(long, value_enum, default_value_t = BackendChoice::Auto)]
    pub backend: BackendChoice,
    /// Time sampling only (no training steps, no log-likelihood).
    #[arg(long)]
    pub sample_only: bool,
    /// On a GPU, sample with the fused GPU decoder only (skip the burn-ops
    /// decode it replaces, whose kernels take long to compile).
    #[arg(long)]
    pub fused_sampling_only: bool,
    /// How the coupling stacks run forward (and backward) on the CPU: one
    /// fused op per sub-layer, or composed from per-op kernels (the path
    /// before the fused one, for comparison). Other backends always compose.
    #[arg(long, value_enum, default_value_t = StackPath::Fused)]
    pub stack: StackPath,
    /// Number type of the fused stacks' matrix products in training (as
    /// `train --precision`).
    #[arg(long, value_enum, default_value_t = ProductPrecision::F32)]
    pub precision: ProductPrecision,
}

/// See [`BenchArgs::stack`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StackPath {
    Fused,
    Composed,
}

fn sync(device: &Device) {
    device.sync().expect("device sync");
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    let (device, backend_name) = select(args.backend)?;
    let config = args.model.to_config()?;
    let train_device = device.clone().autodiff();
    train_device.seed(0);
    let mut model = config.init(&train_device);
    // A trained-looking model: the zero-initialised scales would make every
    // coupling the identity, which is not what training runs through.
    model = rgflow::testing::jitter_parameters(model, 0.02, 7);
    model.set_fused_stacks(args.stack == StackPath::Fused);
    // The precision the stacks' products run in here (bf16 only where the CPU has it).
    let stack_precision = args.precision.on_this_cpu();
    model.set_stack_precision(stack_precision);
    let mut optim = ClippedAdamW::new(5e-2);
    let dims = [args.batch, config.channels, config.image_size, config.image_size];
    println!(
        "config: L {} C {} nlayers {:?} nresblocks {:?} nmlp {:?} nhidden {:?}; {} parameters; batch {}; backend {backend_name}; {} rayon threads; {:?} coupling stacks, {:?} products",
        config.image_size,
        config.channels,
        config.nlayers,
        config.nresblocks,
        config.nmlp,
        config.nhidden,
        model.num_parameters(),
        args.batch,
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        args.stack,
        stack_precision,
    );

    let (mut t_fwd, mut t_bwd, mut t_opt) = (0.0, 0.0, 0.0);
    let train_steps = if args.sample_only { 0 } else { args.steps + 2 };
    for step in 0..train_steps {
        let x01 = Tensor::<4>::random(dims, Distribution::Uniform(0.0, 1.0), &train_device);
        sync(&train_device);
        let t0 = Instant::now();
        let loss = model.nats_per_dim(x01).mean();
        sync(&train_device);
        let t1 = Instant::now();
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let clip = global_norm(&model, &grads).map(|norm| clip_factor(&norm, 1.0));
        sync(&train_device);
        let t2 = Instant::now();
        model = optim.step(1e-3, model, grads, clip);
        sync(&train_device);
        let t3 = Instant::now();
        if step >= 2 {
            t_fwd += (t1 - t0).as_secs_f64();
            t_bwd += (t2 - t1).as_secs_f64();
            t_opt += (t3 - t2).as_secs_f64();
        }
    }
    let per_step = (t_fwd + t_bwd + t_opt) / args.steps as f64;
    if !args.sample_only {
        let images_per_sec = args.batch as f64 / per_step;
        println!(
            "train:  {images_per_sec:.1} images/s  ({:.0} ms/step: forward {:.0}, backward+norm {:.0}, clipped AdamW {:.0})",
            per_step * 1e3,
            t_fwd / args.steps as f64 * 1e3,
            t_bwd / args.steps as f64 * 1e3,
            t_opt / args.steps as f64 * 1e3
        );
        if rgflow::host_memory(&device) {
            print_product_bound(&model.valid(), images_per_sec, stack_precision);
        }
    }
    #[cfg(feature = "wgpu")]
    if !args.sample_only && !rgflow::host_memory(&device) {
        // Steps as `train` runs them on a GPU: inputs made on the host (not
        // timed or counted), clipped, AdamW, the per-image losses and
        // gradient norm left on the device (`train` reads them a stretch of
        // steps at a time).
        let host_batch = |_| {
            let x = Tensor::<4>::random(dims, Distribution::Uniform(0.0, 1.0), &device);
            x.into_data().try_into_vec_as::<f32>().expect("f32 images")
        };
        let devices = [train_device.clone()];
        // A step's phases counted one by one (each phase's results are
        // waited for before the next), then a whole step as `train` runs it.
        let x01 = host_batch(0);
        let mut gradients = None;
        let forward_backward = counted(&train_device, || {
            gradients = Some(crate::parallel::gradients(&model, x01.clone(), args.batch, &devices).grads);
        });
        let grads = gradients.expect("counted the gradients");
        let mut clip = None;
        let norm = counted(&train_device, || {
            clip = global_norm(&model, &grads).map(|norm| clip_factor(&norm, 1.0));
        });
        let update = counted(&train_device, || {
            model = optim.step(1e-3, model.clone(), grads, clip);
        });
        println!(
            "train:  per phase: forward+backward {}, gradient norm {}, clipped AdamW {} dispatches",
            forward_backward.dispatches(),
            norm.dispatches(),
            update.dispatches()
        );
        let mut step = |model: rgflow::RgFlow, x01: Vec<f32>| {
            let crate::parallel::StepGradients { grads, nats } =
                crate::parallel::gradients(&model, x01, args.batch, &devices);
            let norm = global_norm(&model, &grads);
            let clip = norm.as_ref().map(|norm| clip_factor(norm, 1.0));
            (optim.step(1e-3, model, grads, clip), (nats, norm))
        };
        let count = counted(&train_device, || {
            (model, _) = step(model.clone(), x01.clone());
        });
        print_count("train", "step", &count);

        // Throughput with the steps queued back to back (the timed loop
        // above waits for the device after each phase of each step), read
        // back every few steps at once.
        let every = crate::train::GPU_CHECK_EVERY as usize;
        let batches: Vec<Vec<f32>> = (0..args.steps.max(every)).map(host_batch).collect();
        let (mut unread, mut reads) = (Vec::new(), 0);
        sync(&train_device);
        let t0 = Instant::now();
        for x01 in &batches {
            let losses_and_norm;
            (model, losses_and_norm) = step(model, x01.clone());
            unread.push(losses_and_norm);
            if unread.len() == every {
                let _ = crate::train::read_steps(std::mem::take(&mut unread));
                reads += 1;
            }
        }
        if !unread.is_empty() {
            let _ = crate::train::read_steps(unread);
            reads += 1;
        }
        let seconds = t0.elapsed().as_secs_f64();
        println!(
            "train:  {:.1} images/s  ({} steps queued back to back, as `train` runs on a GPU; host reads: {reads}, one per {every} steps)",
            (batches.len() * args.batch) as f64 / seconds,
            batches.len(),
        );
    }

    if args.sample_batches == 0 {
        return Ok(());
    }
    let valid = model.valid();
    let temps = LevelTemperatures::uniform(config.levels(), 1.0);
    let latents = |i: u64| valid.sample_latents(args.batch, &temps, i, &device);
    let skip_ops = args.fused_sampling_only && !rgflow::host_memory(&device);
    if !skip_ops {
        let per_batch = seconds_per_batch(args.sample_batches, &device, latents, |z| {
            let _ = valid.decode(z).into_data();
            Ok(())
        })?;
        println!(
            "sample: {:.1} images/s  ({:.0} ms per batch of {}; burn ops on {backend_name})",
            args.batch as f64 / per_batch,
            per_batch * 1e3,
            args.batch
        );
    }
    #[cfg(feature = "wgpu")]
    if !rgflow::host_memory(&device) {
        let z = latents(u64::MAX)?;
        if !skip_ops {
            let count = counted(&device, || {
                let _ = rgflow::dispatch::read_to_host(valid.decode(z.clone()));
            });
            print_count("sample", "batch", &count);
        }

        if let Some(decoder) = rgflow::GpuDecoder::for_device(&valid, &device)? {
            // Latents from the host (where `sample_latents` draws them),
            // pixels back on the host: upload, kernels, read back.
            let host_latents = |i| latents(i).map(|z| z.into_data().try_into_vec_as::<f32>().expect("f32 latents"));
            let per_batch = seconds_per_batch(args.sample_batches, &device, host_latents, |z| {
                decoder.pixels(&z)?;
                Ok(())
            })?;
            println!(
                "sample: {:.1} images/s  ({:.0} ms per batch; fused GPU decoder, tiles of {:?} block rows)",
                args.batch as f64 / per_batch,
                per_batch * 1e3,
                decoder.tile_rows()
            );
            let z = z.into_data().try_into_vec_as::<f32>().expect("f32 latents");
            let count = counted(&device, || {
                let _ = decoder.pixels(&z);
            });
            print_count("sample (fused)", "batch", &count);
        }
    }

    if rgflow::host_memory(&device) {
        for precision in [ProductPrecision::F32, ProductPrecision::Bf16] {
            let t0 = Instant::now();
            let decoder = CpuDecoder::new(&valid, precision);
            let t_pack = t0.elapsed().as_secs_f64();
            let per_batch = seconds_per_batch(args.sample_batches, &device, latents, |z| {
                let _ = decoder.decode(z).into_data();
                Ok(())
            })?;
            let ran = decoder.precision();
            let note = if ran == precision {
                String::new()
            } else {
                format!(" ({precision} asked: this CPU has no AVX512-BF16)")
            };
            println!(
                "sample: {:.1} images/s  ({:.0} ms per batch; CPU decoder, {ran} products{note}; packed in {:.0} ms)",
                args.batch as f64 / per_batch,
                per_batch * 1e3,
                t_pack * 1e3
            );
        }
    }

    if args.sample_only {
        return Ok(());
    }
    let images = |_| Ok(Tensor::<4>::random(dims, Distribution::Uniform(0.0, 1.0), &device));
    let per_batch = seconds_per_batch(args.sample_batches, &device, images, |x01| {
        let _ = valid.bits_per_dim(x01).into_data();
        Ok(())
    })?;
    println!(
        "eval:   {:.1} images/s  (log-likelihood, {:.0} ms per batch)",
        args.batch as f64 / per_batch,
        per_batch * 1e3
    );
    Ok(())
}

/// Dispatches, distinct kernels and host reads of `work`, on a device
/// synchronised before and after it (so burn's fusion launches exactly the
/// work's kernels inside the count).
#[cfg(feature = "wgpu")]
fn counted(device: &Device, work: impl FnOnce()) -> rgflow::dispatch::DispatchCount {
    sync(device);
    let counter = rgflow::dispatch::DispatchCounter::start();
    work();
    sync(device);
    counter.finish()
}

#[cfg(feature = "wgpu")]
fn print_count(what: &str, per: &str, count: &rgflow::dispatch::DispatchCount) {
    let top: Vec<String> = count
        .most_launched(6)
        .iter()
        .map(|(name, n)| format!("{n} {}", rgflow::dispatch::short_kernel_name(name)))
        .collect();
    println!("{what}:  per {per}: {count}; most launched: {}", top.join(", "));
}

/// Mean seconds of `run` over `batches` inputs made by `input(i)` (made
/// outside the timing), after one warm-up batch.
fn seconds_per_batch<I>(
    batches: usize,
    device: &Device,
    mut input: impl FnMut(u64) -> rgflow::Result<I>,
    mut run: impl FnMut(I) -> anyhow::Result<()>,
) -> anyhow::Result<f64> {
    let mut total = 0.0;
    for i in 0..=batches {
        let x = input(i as u64)?;
        sync(device);
        let t0 = Instant::now();
        run(x)?;
        if i >= 1 {
            total += t0.elapsed().as_secs_f64();
        }
    }
    Ok(total / batches.max(1) as f64)
}

/// What the CPU's matrix products allow: a training step does the coupling
/// stacks' forward products three times over (forward, input gradients,
/// weight gradients); at the tile kernel's measured rate on every thread
/// that bounds images/s, whatever else a step does.
fn print_product_bound(model: &rgflow::RgFlow, images_per_sec: f64, ran: ProductPrecision) {
    use rgflow::decoder::{Isa, product_roof_gflops};
    let flops_per_image = 3.0 * 2.0 * model.stack_macs_per_image() as f64;
    let f32_peak = product_roof_gflops(ProductPrecision::F32, 0.5);
    let f32_bound = f32_peak * 1e9 / flops_per_image;
    let mut line = format!(
        "bound:  {:.2} GFLOP of products per image; tile kernel ({:?}) {f32_peak:.0} GFLOP/s f32 on all threads -> f32 {f32_bound:.0} images/s",
        flops_per_image / 1e9,
        Isa::detect()
    );
    let mut reached = format!("{:.0}% of the f32 bound", 100.0 * images_per_sec / f32_bound);
    if CpuDecoder::native_bf16() {
        let bf16_bound = product_roof_gflops(ProductPrecision::Bf16, 0.5) * 1e9 / flops_per_image;
        line += &format!(", bf16 {bf16_bound:.0} images/s");
        if ran == ProductPrecision::Bf16 {
            reached = format!("{:.0}% of the bf16 bound", 100.0 * images_per_sec / bf16_bound);
        }
    }
    println!("{line}; this run: {reached}");
}
