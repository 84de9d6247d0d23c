//! `trainer train`: the authors' training loop with checkpoints, resume,
//! logs and per-epoch samples.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{Context, bail};
use burn::module::Module;
use burn::optim::ModuleOptimizer;
use burn::prelude::Device;
use burn::store::burn_pack::Bytes;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use rgflow::{LevelTemperatures, RgFlow, RgFlowConfig};
use serde::{Deserialize, Serialize};

use crate::backend::{BackendChoice, select_devices};
use crate::checkpoint::{Checkpoint, TrainState};
use crate::data::{self, EpochOptions, Loader, SourceSpec, Split, images_tensor};
use crate::model_args::ModelArgs;
use crate::model_io::save_grid;
use crate::optim::{adamw, clip_global_norm};
use crate::parallel::{self, StepGradients};

/// Arguments of `trainer train`.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Data source(s): `celeba:DIR`, `folder:DIR`, `mnist:DIR`, `cifar10:DIR`,
    /// `msds1`, `msds2`, each with `,key=value` options (see README). Repeat to combine.
    #[arg(long = "data", required = true)]
    pub data: Vec<SourceSpec>,
    /// Run folder: checkpoint, log, samples.
    #[arg(long, short)]
    pub out: PathBuf,
    #[command(flatten)]
    pub model: ModelArgs,
    /// Images per step.
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// AdamW learning rate.
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    /// AdamW weight decay.
    #[arg(long, default_value_t = 5e-2)]
    pub weight_decay: f64,
    /// Global gradient-norm clip (0 = off).
    #[arg(long, default_value_t = 1.0)]
    pub clip_grad: f64,
    /// Stop after this many epochs in total.
    #[arg(long)]
    pub epochs: Option<u64>,
    /// Stop after this many optimiser steps in total.
    #[arg(long)]
    pub steps: Option<u64>,
    /// Write a checkpoint every N steps (also at every epoch end and on Ctrl-C).
    #[arg(long, default_value_t = 200)]
    pub checkpoint_every: u64,
    /// Test images evaluated at each epoch end (0 = none).
    #[arg(long, default_value_t = 500)]
    pub eval_images: usize,
    /// Seed of initialisation, shuffling, flips and dequantisation noise.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Continue the run in `--out` from its checkpoint.
    #[arg(long)]
    pub resume: bool,
    /// Start a new run from these weights (weight file or checkpoint of the
    /// same model) instead of a random initialisation; the optimiser starts fresh.
    #[arg(long, conflicts_with = "resume")]
    pub init_from: Option<PathBuf>,
    /// Compute backend.
    #[arg(long, value_enum, default_value_t = BackendChoice::Auto)]
    pub backend: BackendChoice,
    /// Split every batch across this many devices (data parallel; model and
    /// optimiser on the first): the first N GPUs with `--backend wgpu`. On a
    /// CPU backend the shares run as threads on the one CPU, which checks
    /// the path but gains nothing.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    pub devices: u16,
    /// Image decoding threads.
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// No progress bar (logs only).
    #[arg(long)]
    pub quiet: bool,
}

/// What defines a run; stored in every checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    pub config: RgFlowConfig,
    pub data: Vec<String>,
    pub batch: usize,
    pub lr: f64,
    pub weight_decay: f64,
    pub clip_grad: f64,
    pub seed: u64,
}

/// File names inside a run folder.
pub const CHECKPOINT: &str = "checkpoint.rgck";
const LOG: &str = "log.jsonl";

#[derive(Serialize)]
struct LogLine<'a> {
    event: &'a str,
    step: u64,
    epoch: u64,
    bpd: Option<f64>,
    bpd_std: Option<f64>,
    grad_norm: Option<f64>,
    images_per_sec: Option<f64>,
    seconds: f64,
}

/// Runs `trainer train`.
pub fn run(args: TrainArgs) -> anyhow::Result<()> {
    let (devices, backend_name) = select_devices(args.backend, usize::from(args.devices))?;
    let devices: Vec<Device> = devices.into_iter().map(Device::autodiff).collect();
    let device = devices[0].clone();
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating run folder {}", args.out.display()))?;
    let checkpoint_path = args.out.join(CHECKPOINT);

    let fresh = Settings {
        config: args.model.to_config()?,
        data: args.data.iter().map(|d| format!("{d:?}")).collect(),
        batch: args.batch,
        lr: args.lr,
        weight_decay: args.weight_decay,
        clip_grad: args.clip_grad,
        seed: args.seed,
    };
    let (settings, mut model, mut optim, mut state) = if args.resume {
        let ckpt = Checkpoint::load(&checkpoint_path)?;
        let settings: Settings = serde_json::from_value(ckpt.state.settings.clone())
            .context("checkpoint settings are not from this trainer")?;
        if settings != fresh {
            bail!(
                "--resume: the arguments differ from the run's own settings.\n  run:   {}\n  given: {}\nPass the same model, data and optimiser flags (only --epochs/--steps/--backend/--devices/--workers may change).",
                serde_json::to_string(&settings)?,
                serde_json::to_string(&fresh)?
            );
        }
        let model = rgflow::store::from_bytes(ckpt.model, &checkpoint_path.display().to_string(), &device)?;
        let optim = adamw(settings.weight_decay)
            .from_bytes(Bytes::from_bytes_vec(ckpt.optimizer))
            .map_err(|e| anyhow::anyhow!("checkpoint optimiser state: {e:?}"))?;
        eprintln!("resuming {} at step {} (epoch {})", args.out.display(), ckpt.state.step, ckpt.state.epoch);
        (settings, model, optim, ckpt.state)
    } else {
        if checkpoint_path.exists() {
            bail!("{} already holds a run; pass --resume to continue it or choose another --out", args.out.display());
        }
        device.seed(fresh.seed);
        let model = match &args.init_from {
            None => fresh.config.init(&device),
            Some(path) => {
                let model = crate::model_io::load_model(path, &device)?;
                if model.config() != &fresh.config {
                    bail!("--init-from {}: holds another model than the flags describe", path.display());
                }
                model
            }
        };
        let state = TrainState {
            step: 0,
            epoch: 0,
            cursor: 0,
            train_seconds: 0.0,
            images_seen: 0,
            settings: serde_json::to_value(&fresh)?,
        };
        (fresh.clone(), model, adamw(fresh.weight_decay), state)
    };
    if args.epochs.is_none() && args.steps.is_none() {
        bail!("give --epochs or --steps");
    }
    if settings.batch == 0 {
        bail!("--batch must be at least 1");
    }

    let config = settings.config.clone();
    let dataset = data::open(&args.data)?;
    for d in &dataset.descriptions {
        eprintln!("data: {d}");
    }
    let train_items = dataset.split(Split::Train)?.to_vec();
    let loader = Loader::new(train_items, config.image_size, config.channels, settings.seed, args.workers);
    let test_loader = (args.eval_images > 0 && !dataset.test.is_empty()).then(|| {
        let n = args.eval_images.min(dataset.test.len());
        Loader::new(dataset.test[..n].to_vec(), config.image_size, config.channels, settings.seed, args.workers)
    });
    let batches_per_epoch = loader.len().div_ceil(settings.batch) as u64;
    let total_steps = match (args.steps, args.epochs) {
        (Some(s), Some(e)) => s.min(e * batches_per_epoch),
        (Some(s), None) => s,
        (None, Some(e)) => e * batches_per_epoch,
        (None, None) => unreachable!(),
    };
    eprintln!(
        "model: {} parameters; backend {backend_name}; {} train images, {batches_per_epoch} steps per epoch, to step {total_steps}",
        model.num_parameters(),
        loader.len()
    );

    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        // A second Ctrl-C while saving falls through to the default (kill).
        let _ = ctrlc::set_handler(move || {
            if stop.swap(true, Ordering::SeqCst) {
                std::process::exit(130);
            }
        });
    }
    let mut log = std::fs::OpenOptions::new().create(true).append(true).open(args.out.join(LOG))?;
    let progress = if args.quiet { ProgressBar::hidden() } else { ProgressBar::new(total_steps) };
    progress.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} steps  {msg}  ETA {eta}").expect("valid template"),
    );
    progress.set_position(state.step);

    let save = |model: &RgFlow, optim: &ModuleOptimizer, state: &TrainState| -> anyhow::Result<()> {
        let ckpt = Checkpoint {
            state: state.clone(),
            model: rgflow::store::to_bytes(model, rgflow::store::Precision::F32)?,
            optimizer: optim.into_bytes().map_err(|e| anyhow::anyhow!("optimiser state: {e:?}"))?.to_vec(),
        };
        ckpt.save(&checkpoint_path)
    };

    let mut session_images = 0u64;
    let session_start = Instant::now();
    let mut stopped = false;
    'epochs: while state.step < total_steps {
        let options = EpochOptions { shuffle: true, flip: true, dequantize: true, batch_size: settings.batch };
        for batch in loader.epoch(state.epoch, state.cursor, options).iter() {
            let t0 = Instant::now();
            // The authors minimise nats per dimension; bits are for display.
            let StepGradients { mut grads, nats } = parallel::gradients(&model, batch.x01, batch.len, &devices);
            let grad_norm = if settings.clip_grad > 0.0 {
                clip_global_norm(&model, &mut grads, settings.clip_grad)
            } else {
                None
            };
            model = optim.step(settings.lr, model, grads);

            let bpd: Vec<f64> = nats.iter().map(|&n| (n as f64 + 256f64.ln()) / std::f64::consts::LN_2).collect();
            let mean = bpd.iter().sum::<f64>() / bpd.len() as f64;
            if !mean.is_finite() {
                bail!(
                    "loss became {mean} at step {}; stopped without saving. The last good checkpoint ({}) is at or before step {}.",
                    state.step + 1,
                    checkpoint_path.display(),
                    state.step
                );
            }
            let std = (bpd.iter().map(|b| (b - mean).powi(2)).sum::<f64>() / (bpd.len().max(2) - 1) as f64).sqrt();
            state.step += 1;
            state.cursor = batch.cursor;
            state.images_seen += batch.len as u64;
            state.train_seconds += t0.elapsed().as_secs_f64();
            session_images += batch.len as u64;
            let rate = session_images as f64 / session_start.elapsed().as_secs_f64();
            progress.set_position(state.step);
            progress.set_message(format!("bpd {mean:.3}  {rate:.1} img/s"));
            let grad_norm = grad_norm.map(|g| g.inner().into_scalar::<f32>() as f64);
            let line = LogLine {
                event: "step",
                step: state.step,
                epoch: state.epoch,
                bpd: Some(mean),
                bpd_std: Some(std),
                grad_norm,
                images_per_sec: Some(rate),
                seconds: state.train_seconds,
            };
            writeln!(log, "{}", serde_json::to_string(&line)?)?;

            if state.step % args.checkpoint_every == 0 {
                save(&model, &optim, &state)?;
            }
            if stop.load(Ordering::SeqCst) {
                stopped = true;
                break 'epochs;
            }
            if state.step >= total_steps {
                break 'epochs;
            }
        }
        // The epoch is complete.
        let valid = model.valid();
        let samples = valid.sample(64, &LevelTemperatures::uniform(config.levels(), 1.0), settings.seed ^ state.epoch, &valid.devices()[0])?;
        save_grid(samples, 8, 2, &args.out.join("samples").join(format!("epoch-{:04}.png", state.epoch + 1)))?;
        let test_bpd = match &test_loader {
            Some(l) => Some(evaluate(&valid, l, settings.batch, state.epoch)?),
            None => None,
        };
        if let Some((m, s)) = test_bpd {
            progress.println(format!("epoch {} done: test bpd {m:.4} ± {s:.4}", state.epoch + 1));
        }
        let line = LogLine {
            event: "epoch",
            step: state.step,
            epoch: state.epoch,
            bpd: test_bpd.map(|t| t.0),
            bpd_std: test_bpd.map(|t| t.1),
            grad_norm: None,
            images_per_sec: None,
            seconds: state.train_seconds,
        };
        writeln!(log, "{}", serde_json::to_string(&line)?)?;
        state.epoch += 1;
        state.cursor = 0;
        save(&model, &optim, &state)?;
    }
    save(&model, &optim, &state)?;
    progress.finish_and_clear();
    let skipped = loader.stats();
    if skipped.skipped() > 0 {
        eprintln!("skipped {} unreadable images, e.g. {}", skipped.skipped(), skipped.examples().join("; "));
    }
    eprintln!(
        "{} at step {} (epoch {}); checkpoint {}",
        if stopped { "interrupted, saved" } else { "done" },
        state.step,
        state.epoch,
        checkpoint_path.display()
    );
    Ok(())
}

/// Mean ± std over images of the test bpd with one dequantisation draw.
fn evaluate(model: &RgFlow, loader: &Loader, batch: usize, epoch: u64) -> anyhow::Result<(f64, f64)> {
    let options = EpochOptions { shuffle: false, flip: false, dequantize: true, batch_size: batch };
    let mut all = Vec::new();
    let device = &model.devices()[0];
    for b in loader.epoch(epoch, 0, options).iter() {
        let x01 = images_tensor(b.x01, b.len, model.config(), device);
        all.extend(model.bits_per_dim(x01).into_data().try_to_vec::<f32>().expect("f32").into_iter().map(f64::from));
    }
    Ok(crate::eval::mean_std(&all))
}
