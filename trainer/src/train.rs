//! `trainer train`: the authors' training loop with checkpoints, resume,
//! logs and per-epoch samples.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{Context, bail};
use burn::module::Module;
use burn::prelude::{Device, Tensor};
use burn::store::burn_pack::Bytes;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use rgflow::decoder::{Isa, ProductPrecision};
use rgflow::{LevelTemperatures, RgFlow, RgFlowConfig};
use serde::{Deserialize, Serialize};

use crate::backend::{BackendChoice, select_devices};
use crate::checkpoint::{Checkpoint, TrainState};
use crate::data::{self, Batch, EpochOptions, Loader, SourceSpec, Split, images_tensor};
use crate::ema::WeightAverage;
use crate::model_args::ModelArgs;
use crate::model_io::save_grid;
use crate::optim::{ClippedAdamW, Decay, LrSchedule, clip_factor};
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
    /// AdamW learning rate (the peak, after warm-up).
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    /// Steps of linear learning-rate warm-up from zero.
    #[arg(long, default_value_t = 200)]
    pub warmup_steps: u64,
    /// After warm-up: `constant`, or `cosine` decay to `--lr-floor` at step `--decay-until`.
    #[arg(long, value_enum, default_value_t = DecayArg::Constant)]
    pub lr_decay: DecayArg,
    /// Step at which the cosine decay reaches its floor.
    #[arg(long, required_if_eq("lr_decay", "cosine"))]
    pub decay_until: Option<u64>,
    /// The learning rate the cosine decay ends at.
    #[arg(long, default_value_t = 1e-5)]
    pub lr_floor: f64,
    /// Decay of the weights' exponential moving average (Polyak averaging;
    /// `eval`, `sample` and `export` use the average by default). 0 = none.
    #[arg(long, default_value_t = 0.999)]
    pub ema_decay: f64,
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
    /// Stop after this many minutes of training in total, over all sessions
    /// (evaluation and checkpoints not counted): for equal-time comparisons.
    #[arg(long)]
    pub minutes: Option<f64>,
    /// Write a checkpoint every N steps (also at every epoch end and on Ctrl-C).
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..))]
    pub checkpoint_every: u64,
    /// Stop (without saving the bad state) after this many consecutive steps
    /// whose loss or gradient is not finite; single ones are skipped.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_bad_steps: u64,
    /// Read the steps' losses and gradient norms back every N steps, all N
    /// in one read (0: every step on a CPU backend, where a read costs
    /// nothing, and every 16 on a GPU, where each read waits for the device).
    /// The steps in between run ahead unchecked; a stretch that holds a
    /// non-finite step is redone from its start, reading every step, so that
    /// step is skipped exactly as it would have been: the run's numbers do not
    /// depend on N. Checkpoints, Ctrl-C and the end of an epoch check first.
    #[arg(long, default_value_t = 0)]
    pub check_every: u64,
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
    /// Number type of the coupling stacks' matrix products on the CPU
    /// (forward and backward): `bf16` rounds their operands and accumulates
    /// in f32 (weights, updates and optimiser state stay f32). Recommended on
    /// CPUs with AMX (1.6–1.8× faster on a Xeon; held-out bits/dim within run
    /// noise of f32, see the README). Only CPUs with AVX512-BF16 run it (f32
    /// elsewhere), and without AMX not all of them faster: 1.23× on an AMD
    /// Zen 4, 0.76× on a Xeon with only `vdpbf16ps` (`trainer bench
    /// --precision bf16` tells). Part of the run's settings.
    #[arg(long, value_enum, default_value_t = ProductPrecision::F32)]
    pub precision: ProductPrecision,
    /// No progress bar (logs only).
    #[arg(long)]
    pub quiet: bool,
}

/// `--lr-decay` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DecayArg {
    Constant,
    Cosine,
}

/// What defines a run; stored in every checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    pub config: RgFlowConfig,
    pub data: Vec<String>,
    pub batch: usize,
    pub lr: f64,
    /// Runs from before schedules had a constant rate.
    #[serde(default = "constant_schedule")]
    pub schedule: LrSchedule,
    /// Runs from before averaging kept none (0).
    #[serde(default)]
    pub ema_decay: f64,
    pub weight_decay: f64,
    pub clip_grad: f64,
    pub seed: u64,
    /// Runs from before bf16 products were f32.
    #[serde(default)]
    pub precision: ProductPrecision,
}

fn constant_schedule() -> LrSchedule {
    LrSchedule { peak: 1e-3, warmup_steps: 0, decay: Decay::Constant }
}

impl TrainArgs {
    /// The run's settings from the flags, checked.
    fn settings(&self) -> anyhow::Result<Settings> {
        let positive = |name: &str, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(anyhow::anyhow!("{name} must be a positive number, got {v}"))
            }
        };
        let non_negative = |name: &str, v: f64| {
            if v.is_finite() && v >= 0.0 {
                Ok(())
            } else {
                Err(anyhow::anyhow!("{name} must be a number ≥ 0, got {v}"))
            }
        };
        positive("--lr", self.lr)?;
        non_negative("--weight-decay", self.weight_decay)?;
        non_negative("--clip-grad", self.clip_grad)?;
        non_negative("--lr-floor", self.lr_floor)?;
        if !(0.0..1.0).contains(&self.ema_decay) {
            bail!("--ema-decay must lie in [0, 1), got {}", self.ema_decay);
        }
        if self.batch == 0 {
            bail!("--batch must be at least 1");
        }
        if let Some(m) = self.minutes {
            positive("--minutes", m)?;
        }
        let decay = match (self.lr_decay, self.decay_until) {
            (DecayArg::Constant, None) => Decay::Constant,
            (DecayArg::Constant, Some(_)) => bail!("--decay-until needs --lr-decay cosine"),
            (DecayArg::Cosine, Some(until)) if until > self.warmup_steps => {
                Decay::Cosine { until, floor: self.lr_floor }
            }
            (DecayArg::Cosine, until) => {
                bail!(
                    "--lr-decay cosine needs --decay-until after the warm-up's {} steps, got {until:?}",
                    self.warmup_steps
                )
            }
        };
        Ok(Settings {
            config: self.model.to_config()?,
            data: self.data.iter().map(|d| format!("{d:?}")).collect(),
            batch: self.batch,
            lr: self.lr,
            schedule: LrSchedule { peak: self.lr, warmup_steps: self.warmup_steps, decay },
            ema_decay: self.ema_decay,
            weight_decay: self.weight_decay,
            clip_grad: self.clip_grad,
            seed: self.seed,
            precision: self.precision,
        })
    }
}

/// File names inside a run folder.
pub const CHECKPOINT: &str = "checkpoint.rgck";
const LOG: &str = "log.jsonl";

/// One line of `log.jsonl`: a `step`, a `skip` (a non-finite step not
/// applied), or a held-out evaluation at an `epoch` end or at the end of the
/// run (`eval`): `bpd` of the raw weights, `bpd_ema` of their average.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct LogLine {
    pub event: String,
    pub step: u64,
    pub epoch: u64,
    #[serde(default)]
    pub images_seen: u64,
    pub bpd: Option<f64>,
    pub bpd_std: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bpd_ema: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bpd_ema_std: Option<f64>,
    pub grad_norm: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lr: Option<f64>,
    pub images_per_sec: Option<f64>,
    /// Training seconds so far (all sessions; evaluation not counted).
    pub seconds: f64,
}

/// Takes the run folder's lock: two trainers writing one folder would
/// interleave checkpoints and logs. The OS drops the lock when the process
/// ends, even on kill -9.
fn lock_run_folder(out: &Path) -> anyhow::Result<std::fs::File> {
    let path = out.join(".lock");
    let lock = std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    match lock.try_lock() {
        Ok(()) => Ok(lock),
        Err(std::fs::TryLockError::WouldBlock) => {
            bail!("another trainer is already writing to {}; wait for it or choose another --out", out.display())
        }
        Err(std::fs::TryLockError::Error(e)) => Err(e).with_context(|| format!("locking {}", path.display())),
    }
}

/// A run's training state: everything a checkpoint holds. A clone is a
/// snapshot (tensors are values, the optimiser's states copy on write).
#[derive(Clone)]
struct Run {
    settings: Settings,
    model: RgFlow,
    optim: ClippedAdamW,
    average: Option<WeightAverage>,
    state: TrainState,
}

/// What one step did, for the log.
struct StepOutcome {
    /// Whether it was applied (its loss and gradient were finite).
    applied: bool,
    lr: f64,
    /// Mean and std over the batch of the training bits/dim.
    bpd: (f64, f64),
    grad_norm: Option<f64>,
    /// The run's counters just after the step.
    at: Counters,
}

/// Where a run stood after a step, for its log line.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Counters {
    step: u64,
    epoch: u64,
    images_seen: u64,
    seconds: f64,
}

impl StepOutcome {
    /// From a step's per-image losses and gradient norm as read back.
    fn new(nats: &[f32], grad_norm: Option<f64>, lr: f64, at: Counters) -> Self {
        let bpd: Vec<f64> = nats.iter().map(|&n| rgflow::preprocess::nats_to_bits_per_dim(n as f64)).collect();
        let mean = bpd.iter().sum::<f64>() / bpd.len() as f64;
        let std = (bpd.iter().map(|b| (b - mean).powi(2)).sum::<f64>() / (bpd.len().max(2) - 1) as f64).sqrt();
        let applied = mean.is_finite() && grad_norm.is_none_or(f64::is_finite);
        Self { applied, lr, bpd: (mean, std), grad_norm, at }
    }
}

/// A step applied without reading anything back: its per-image losses and
/// gradient norm wait on the device until its stretch is checked.
struct UncheckedStep {
    nats: Tensor<1>,
    norm: Option<Tensor<1>>,
    lr: f64,
    at: Counters,
}

/// Steps applied unchecked since `start` (the run as it was before them),
/// with their batches, so that the stretch can be redone.
struct Unchecked {
    start: Run,
    steps: Vec<(Batch, UncheckedStep)>,
}

impl Unchecked {
    /// Reads the stretch's losses and norms in one read. When all are finite
    /// they are its steps' outcomes; otherwise `run` is dropped and the
    /// stretch redone from its start, reading every step, which skips the
    /// bad ones and gives the good ones the same numbers (a step is a
    /// function of the run and the batch).
    fn check(self, mut run: Run, devices: &[Device]) -> (Run, Vec<StepOutcome>) {
        let t0 = Instant::now();
        let read = read_steps(self.steps.iter().map(|(_, s)| (s.nats.clone(), s.norm.clone())));
        // The read waits for the stretch's compute: training time.
        run.state.train_seconds += t0.elapsed().as_secs_f64();
        let mut outcomes: Vec<StepOutcome> = self
            .steps
            .iter()
            .zip(read)
            .map(|((_, s), (nats, norm))| StepOutcome::new(&nats, norm, s.lr, s.at))
            .collect();
        if outcomes.iter().all(|o| o.applied) {
            return (run, outcomes);
        }
        drop(run);
        let mut run = self.start;
        outcomes.clear();
        for (batch, _) in self.steps {
            let outcome;
            (run, outcome) = run.step(batch, devices);
            outcomes.push(outcome);
        }
        (run, outcomes)
    }
}

impl Run {
    /// Resumes the run in `checkpoint` (`resume`), or starts a new one from
    /// `fresh` settings and `init_from`'s weights or a random initialisation.
    fn open(
        fresh: Settings,
        resume: bool,
        init_from: Option<&Path>,
        checkpoint: &Path,
        device: &Device,
    ) -> anyhow::Result<Self> {
        if !resume {
            if checkpoint.exists() {
                let folder = checkpoint.parent().unwrap_or(Path::new(".")).display();
                bail!("{folder} already holds a run; pass --resume to continue it or choose another --out");
            }
            device.seed(fresh.seed);
            let model = match init_from {
                None => fresh.config.init(device),
                Some(path) => {
                    let model = crate::model_io::load_model(path, device)?;
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
                average_updates: 0,
                data_fingerprint: None,
                settings: serde_json::to_value(&fresh)?,
            };
            let average = (fresh.ema_decay > 0.0).then(|| WeightAverage::new(fresh.ema_decay, model.valid(), 0));
            return Ok(Self { optim: ClippedAdamW::new(fresh.weight_decay), settings: fresh, model, average, state });
        }
        let ckpt = Checkpoint::load(checkpoint)?;
        let settings: Settings = serde_json::from_value(ckpt.state.settings.clone())
            .context("checkpoint settings are not from this trainer")?;
        if settings != fresh {
            bail!(
                "--resume: the arguments differ from the run's own settings.\n  run:   {}\n  given: {}\nPass the same model, data, optimiser and schedule flags (only --epochs/--steps/--minutes/--backend/--devices/--workers may change).",
                serde_json::to_string(&settings)?,
                serde_json::to_string(&fresh)?
            );
        }
        let source = checkpoint.display().to_string();
        let model = rgflow::weights::from_bytes(ckpt.model, &source, device)?;
        if model.config() != &settings.config {
            bail!("checkpoint {source} is inconsistent: its model is not the one its settings describe");
        }
        let optim = ClippedAdamW::new(settings.weight_decay).with_state(Bytes::from_bytes_vec(ckpt.optimizer))?;
        // A checkpoint from before averaging starts its average here.
        let start = match ckpt.ema {
            Some(bytes) => rgflow::weights::from_bytes(bytes, &source, &device.clone().inner())?,
            None => model.valid(),
        };
        let average = (settings.ema_decay > 0.0)
            .then(|| WeightAverage::new(settings.ema_decay, start, ckpt.state.average_updates));
        Ok(Self { settings, model, optim, average, state: ckpt.state })
    }

    /// Writes the checkpoint (atomically).
    fn save(&self, path: &Path) -> anyhow::Result<()> {
        let mut state = self.state.clone();
        state.average_updates = self.average.as_ref().map_or(0, WeightAverage::updates);
        let weights = |m: &RgFlow| rgflow::weights::to_bytes(m, rgflow::weights::StoragePrecision::F32);
        let ckpt = Checkpoint {
            state,
            model: weights(&self.model)?,
            optimizer: self.optim.to_bytes()?.to_vec(),
            ema: self.average.as_ref().map(|a| weights(a.model())).transpose()?,
        };
        ckpt.save(path)
    }

    /// One optimiser step on a batch, split across `devices`. A step whose
    /// loss or gradient is not finite would poison the weights (and every
    /// checkpoint after it): it is counted but not applied. Takes the run by
    /// value so the optimiser owns the only copy of the weights it updates.
    fn step(mut self, batch: Batch, devices: &[Device]) -> (Self, StepOutcome) {
        let t0 = Instant::now();
        let (lr, grads, nats, norm) = self.gradients(&batch, devices);
        // The step's one host read: the losses and the gradient norm together.
        let (losses, grad_norm) = read_losses_and_norm(nats, norm.clone());
        let mut outcome = StepOutcome::new(&losses, grad_norm, lr, self.counters());
        if outcome.applied {
            self = self.apply(lr, grads, norm.as_ref());
        }
        self.advance(&batch, t0);
        outcome.at = self.counters();
        (self, outcome)
    }

    /// [`Self::step`] without the read: the update is applied whatever the
    /// loss, and checked later with its stretch ([`Unchecked::check`]).
    fn step_unchecked(mut self, batch: &Batch, devices: &[Device]) -> (Self, UncheckedStep) {
        let t0 = Instant::now();
        let (lr, grads, nats, norm) = self.gradients(batch, devices);
        self = self.apply(lr, grads, norm.as_ref());
        self.advance(batch, t0);
        let at = self.counters();
        (self, UncheckedStep { nats, norm, lr, at })
    }

    /// A batch's learning rate, gradients, per-image losses (nats per
    /// dimension, what the authors minimise) and the gradients' global norm
    /// (before clipping), all on the device.
    fn gradients(
        &self,
        batch: &Batch,
        devices: &[Device],
    ) -> (f64, burn::optim::GradientsParams, Tensor<1>, Option<Tensor<1>>) {
        let lr = self.settings.schedule.at(self.state.step);
        let StepGradients { grads, nats } = parallel::gradients(&self.model, batch.x01.clone(), batch.len, devices);
        let norm = crate::optim::global_norm(&self.model, &grads);
        (lr, grads, nats, norm)
    }

    /// The optimiser's update with the gradients clipped to `--clip-grad`
    /// (their global norm is `norm`), and the weights' average after it. By
    /// value: the optimiser gets the only handle on the weights it updates.
    fn apply(mut self, lr: f64, grads: burn::optim::GradientsParams, norm: Option<&Tensor<1>>) -> Self {
        let clip = self.settings.clip_grad;
        let factor = norm.filter(|_| clip > 0.0).map(|norm| clip_factor(norm, clip));
        self.model = self.optim.step(lr, self.model, grads, factor);
        if let Some(a) = &mut self.average {
            a.update(&self.model);
        }
        self
    }

    /// The counters past `batch`, and the step's time.
    fn advance(&mut self, batch: &Batch, t0: Instant) {
        self.state.step += 1;
        self.state.cursor = batch.cursor;
        self.state.images_seen += batch.len as u64;
        self.state.train_seconds += t0.elapsed().as_secs_f64();
    }

    fn counters(&self) -> Counters {
        let s = &self.state;
        Counters { step: s.step, epoch: s.epoch, images_seen: s.images_seen, seconds: s.train_seconds }
    }

    /// A log line for an epoch end or the run's end (`event`), with the
    /// held-out bits/dim of the raw weights and of their average when there
    /// is a test split.
    fn held_out(&self, event: &str, test: Option<&Loader>) -> anyhow::Result<LogLine> {
        let state = &self.state;
        let mut line = LogLine {
            event: event.into(),
            step: state.step,
            epoch: state.epoch,
            images_seen: state.images_seen,
            seconds: state.train_seconds,
            ..LogLine::default()
        };
        let Some(loader) = test else { return Ok(line) };
        // In f32 products whatever the run trains with, as the average is
        // scored: held-out bits/dim measure the weights (bf16 products alone
        // cost ~0.004 bits/dim on the same weights).
        let mut raw_model = self.model.valid();
        raw_model.set_stack_precision(ProductPrecision::F32);
        let raw = evaluate(&raw_model, loader, self.settings.batch)?;
        let avg = self.average.as_ref().map(|a| evaluate(a.model(), loader, self.settings.batch)).transpose()?;
        (line.bpd, line.bpd_std) = (Some(raw.0), Some(raw.1));
        (line.bpd_ema, line.bpd_ema_std) = (avg.map(|a| a.0), avg.map(|a| a.1));
        Ok(line)
    }
}

/// Where a run reports: `log.jsonl` and the progress bar.
struct Report {
    log: std::fs::File,
    progress: ProgressBar,
    /// Non-finite steps in a row, up to the last reported.
    bad_in_a_row: u64,
}

impl Report {
    /// Appends to `out`'s log; the bar counts to `total_steps` (none when
    /// `quiet` or unbounded) from `step`.
    fn open(out: &Path, total_steps: u64, quiet: bool, step: u64) -> anyhow::Result<Self> {
        let progress =
            if quiet || total_steps == u64::MAX { ProgressBar::hidden() } else { ProgressBar::new(total_steps) };
        progress.set_style(
            ProgressStyle::with_template("{bar:30} {pos}/{len} steps  {msg}  ETA {eta}").expect("valid template"),
        );
        progress.set_position(step);
        let log = std::fs::OpenOptions::new().create(true).append(true).open(out.join(LOG))?;
        Ok(Self { log, progress, bad_in_a_row: 0 })
    }

    fn write(&mut self, line: &LogLine) -> anyhow::Result<()> {
        if let (Some(raw), "epoch" | "eval") = (line.bpd, line.event.as_str()) {
            let mut message = format!(
                "epoch {}, step {}: test bpd {raw:.4} ± {:.4}",
                line.epoch + 1,
                line.step,
                line.bpd_std.unwrap_or(0.0)
            );
            if let Some(m) = line.bpd_ema {
                message += &format!(" (average of the weights: {m:.4})");
            }
            self.progress.println(message);
        }
        Ok(writeln!(self.log, "{}", serde_json::to_string(line)?)?)
    }

    /// Logs checked steps, counting the non-finite ones in a row; fails at
    /// `max_bad` of them, naming `checkpoint`.
    fn steps(&mut self, outcomes: &[StepOutcome], rate: f64, max_bad: u64, checkpoint: &Path) -> anyhow::Result<()> {
        for step in outcomes {
            let ((mean, std), at) = (step.bpd, step.at);
            self.bad_in_a_row = if step.applied { 0 } else { self.bad_in_a_row + 1 };
            if !step.applied {
                self.progress.println(format!(
                    "step {}: loss {mean}, gradient norm {:?}: not finite, step skipped",
                    at.step, step.grad_norm
                ));
            }
            self.progress.set_position(at.step);
            self.progress.set_message(format!("bpd {mean:.3}  {rate:.1} img/s"));
            self.write(&LogLine {
                event: if step.applied { "step" } else { "skip" }.into(),
                step: at.step,
                epoch: at.epoch,
                images_seen: at.images_seen,
                bpd: Some(mean).filter(|m| m.is_finite()),
                bpd_std: Some(std).filter(|s| s.is_finite()),
                grad_norm: step.grad_norm.filter(|g| g.is_finite()),
                lr: Some(step.lr),
                images_per_sec: Some(rate),
                seconds: at.seconds,
                ..LogLine::default()
            })?;
            if self.bad_in_a_row >= max_bad {
                bail!(
                    "{} steps in a row had a non-finite loss or gradient (the last at step {}); stopped without saving. The last good checkpoint ({}) is at or before step {}. Try a lower --lr or a longer --warmup-steps.",
                    self.bad_in_a_row,
                    at.step,
                    checkpoint.display(),
                    at.step - self.bad_in_a_row
                );
            }
        }
        Ok(())
    }
}

/// This session's steps: each read back at once (`check_every` 1, the
/// CPU), or in stretches applied unchecked and read together (a GPU).
struct Stepper {
    check_every: u64,
    /// Steps applied since the last read.
    unchecked: Option<Unchecked>,
    images: u64,
    start: Instant,
}

impl Stepper {
    fn new(check_every: u64) -> Self {
        Self { check_every, unchecked: None, images: 0, start: Instant::now() }
    }

    /// One step on `batch`; returns the steps read back now: this one, or a
    /// whole stretch once it is `check_every` long or `due(run)` says it
    /// must be read (a checkpoint, a stop, the end) — none while a stretch
    /// runs on.
    fn step(
        &mut self,
        mut run: Run,
        batch: Batch,
        devices: &[Device],
        due: impl Fn(&Run) -> bool,
    ) -> (Run, Vec<StepOutcome>) {
        self.images += batch.len as u64;
        if self.check_every == 1 {
            let step;
            (run, step) = run.step(batch, devices);
            return (run, vec![step]);
        }
        let stretch = self.unchecked.get_or_insert_with(|| Unchecked { start: run.clone(), steps: Vec::new() });
        let step;
        (run, step) = run.step_unchecked(&batch, devices);
        stretch.steps.push((batch, step));
        if stretch.steps.len() as u64 >= self.check_every || due(&run) {
            self.flush(run, devices)
        } else {
            (run, Vec::new())
        }
    }

    /// The open stretch's steps read back (none when there is none).
    fn flush(&mut self, run: Run, devices: &[Device]) -> (Run, Vec<StepOutcome>) {
        match self.unchecked.take() {
            Some(stretch) => stretch.check(run, devices),
            None => (run, Vec::new()),
        }
    }

    /// Images per second this session.
    fn rate(&self) -> f64 {
        self.images as f64 / self.start.elapsed().as_secs_f64()
    }
}

impl Run {
    /// Sets the products' precision the settings ask for, saying when this
    /// CPU runs another or when bf16 would be the faster choice.
    fn set_precision(&mut self, resume: bool, device: &Device) {
        let precision = self.settings.precision;
        if precision != precision.on_this_cpu() {
            eprintln!("note: this CPU has no AVX512-BF16, so bf16 products would only be slower; training in f32");
        }
        let amx = Isa::detect() == Isa::Amx;
        if !resume && precision == ProductPrecision::F32 && amx && rgflow::kernels::has_fused_stack(device) {
            eprintln!(
                "note: this CPU has AMX: --precision bf16 trains ~1.7x faster here, with held-out bits/dim within \
                 run-to-run noise of f32 (README, Benchmarks)"
            );
        }
        self.model.set_stack_precision(precision);
    }

    /// The training and held-out loaders of `data`; the training images'
    /// fingerprint is recorded, or checked against the run's on a resume.
    fn open_data(
        &mut self,
        data: &[SourceSpec],
        eval_images: usize,
        workers: usize,
        checkpoint: &Path,
    ) -> anyhow::Result<(Loader, Option<Loader>)> {
        let config = &self.settings.config;
        let dataset = data::open(data)?;
        for d in &dataset.descriptions {
            eprintln!("data: {d}");
        }
        let train_items = dataset.split(Split::Train)?.to_vec();
        // Resuming on other images would not be the run it claims to continue.
        let fingerprint = data::fingerprint(&train_items);
        match &self.state.data_fingerprint {
            Some(f) if *f != fingerprint => bail!(
                "--resume: the training images differ from the run's ({} now; files added, removed or renamed since the run started). Restore them or start a new run (--init-from {} keeps the weights).",
                train_items.len(),
                checkpoint.display()
            ),
            _ => self.state.data_fingerprint = Some(fingerprint),
        }
        let seed = self.settings.seed;
        let loader = Loader::new(train_items, config.image_size, config.channels, seed, workers);
        let test_loader = (eval_images > 0 && !dataset.test.is_empty()).then(|| {
            let n = eval_images.min(dataset.test.len());
            Loader::new(dataset.test[..n].to_vec(), config.image_size, config.channels, seed, workers)
        });
        Ok((loader, test_loader))
    }

    /// Closes an epoch: a grid of samples (from the weights' average where
    /// there is one) into `out/samples/`, the held-out score on `test`, and
    /// a checkpoint at the next epoch's start.
    fn end_epoch(
        &mut self,
        out: &Path,
        test: Option<&Loader>,
        report: &mut Report,
        checkpoint: &Path,
    ) -> anyhow::Result<()> {
        let sampler = self.average.as_ref().map_or_else(|| self.model.valid(), |a| a.model().clone());
        let temperatures = LevelTemperatures::uniform(self.settings.config.levels(), 0.8);
        let device = &sampler.devices()[0];
        let z = sampler.sample_latents(64, &temperatures, self.settings.seed ^ self.state.epoch, device)?;
        // The device's fastest decoder (packed on the CPU, fused on a GPU).
        let samples = rgflow::Decoder::for_device(&sampler, device, ProductPrecision::F32)?.decode(z);
        save_grid(samples, 8, 2, &out.join("samples").join(format!("epoch-{:04}.png", self.state.epoch + 1)))?;
        report.write(&self.held_out("epoch", test)?)?;
        self.state.epoch += 1;
        self.state.cursor = 0;
        self.save(checkpoint)
    }
}

/// What ends a session of training: its steps, its minutes, Ctrl-C; and
/// when it saves and gives up.
struct Limits {
    /// The step to stop at (`u64::MAX`: none).
    total_steps: u64,
    /// Training seconds to stop at (infinite: none).
    seconds: f64,
    checkpoint_every: u64,
    /// Non-finite steps in a row that stop the run.
    max_bad_steps: u64,
    /// Set by Ctrl-C ([`stop_on_ctrl_c`]).
    stop: Arc<AtomicBool>,
}

impl Limits {
    fn done(&self, state: &TrainState) -> bool {
        state.step >= self.total_steps || state.train_seconds >= self.seconds
    }

    fn checkpoint_due(&self, state: &TrainState) -> bool {
        state.step.is_multiple_of(self.checkpoint_every)
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}

/// How [`Run::train_epoch`] ended.
enum EpochEnd {
    /// Every batch of the epoch was stepped and read: close it.
    Complete,
    /// Ctrl-C: every step read, the run to be saved as it is.
    Stopped,
    /// The steps or minutes asked for are done (every step read).
    Done,
}

impl Run {
    /// Steps through the rest of the current epoch's batches, from the
    /// run's cursor: every step reported, a checkpoint every
    /// `checkpoint_every` steps (none while steps are failing), stopping
    /// early on Ctrl-C or at the limits (with every step read back first).
    fn train_epoch(
        mut self,
        loader: &Loader,
        steps: &mut Stepper,
        report: &mut Report,
        devices: &[Device],
        limits: &Limits,
        checkpoint: &Path,
    ) -> anyhow::Result<(Self, EpochEnd)> {
        let options = EpochOptions { shuffle: true, flip: true, dequantize: true, batch_size: self.settings.batch };
        let mut batches = 0u64;
        for batch in loader.epoch(self.state.epoch, self.state.cursor, options) {
            batches += 1;
            let outcomes;
            (self, outcomes) = steps.step(self, batch?, devices, |run| {
                limits.checkpoint_due(&run.state) || limits.stopped() || limits.done(&run.state)
            });
            if outcomes.is_empty() {
                continue;
            }
            report.steps(&outcomes, steps.rate(), limits.max_bad_steps, checkpoint)?;
            if limits.checkpoint_due(&self.state) && report.bad_in_a_row == 0 {
                self.save(checkpoint)?;
            }
            if limits.stopped() {
                return Ok((self, EpochEnd::Stopped));
            }
            if limits.done(&self.state) {
                return Ok((self, EpochEnd::Done));
            }
        }
        // The epoch is complete: its last steps checked first.
        let outcomes;
        (self, outcomes) = steps.flush(self, devices);
        report.steps(&outcomes, steps.rate(), limits.max_bad_steps, checkpoint)?;
        if batches == 0 && self.state.cursor == 0 {
            bail!(
                "epoch {} of the training split gave no images: all {} are unreadable (e.g. {})",
                self.state.epoch + 1,
                loader.len(),
                loader.stats().examples().join("; ")
            );
        }
        Ok((self, EpochEnd::Complete))
    }
}

/// Set by the first Ctrl-C (or SIGTERM): the run saves and stops after its
/// step. A second one while saving falls through to the default (kill).
fn stop_on_ctrl_c() -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let _ = ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
    });
    stop
}

/// The run folder's store of CubeCL's measurements on a GPU (autotune).
pub(crate) const GPU_TUNING: &str = "gpu-tuning";

/// Steps read back at once on a GPU when `--check-every` is 0.
pub(crate) const GPU_CHECK_EVERY: u64 = 16;

/// Runs `trainer train`: opens or resumes the run, then steps through
/// epochs, each closed by [`Run::end_epoch`], until the steps, epochs or
/// minutes asked for are done or Ctrl-C stops it.
pub fn run(args: TrainArgs) -> anyhow::Result<()> {
    let (devices, backend_name) = select_devices(args.backend, usize::from(args.devices))?;
    let check_every = match args.check_every {
        0 if rgflow::host_memory(&devices[0]) => 1,
        0 => GPU_CHECK_EVERY,
        n => n,
    };
    let devices: Vec<Device> = devices.into_iter().map(Device::autodiff).collect();
    let fresh = args.settings()?;
    if args.epochs.is_none() && args.steps.is_none() && args.minutes.is_none() {
        bail!("give --epochs, --steps or --minutes");
    }
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating run folder {}", args.out.display()))?;
    let _lock = lock_run_folder(&args.out)?;
    if !rgflow::host_memory(&devices[0]) {
        crate::backend::keep_gpu_tuning_in(&args.out.join(GPU_TUNING));
    }
    let checkpoint_path = args.out.join(CHECKPOINT);
    let mut run = Run::open(fresh, args.resume, args.init_from.as_deref(), &checkpoint_path, &devices[0])?;
    run.set_precision(args.resume, &devices[0]);
    if args.resume {
        eprintln!("resuming {} at step {} (epoch {})", args.out.display(), run.state.step, run.state.epoch);
    }
    let (loader, test_loader) = run.open_data(&args.data, args.eval_images, args.workers, &checkpoint_path)?;

    let batch_size = run.settings.batch;
    let batches_per_epoch = loader.len().div_ceil(batch_size) as u64;
    let total_steps =
        [args.steps, args.epochs.map(|e| e * batches_per_epoch)].into_iter().flatten().min().unwrap_or(u64::MAX);
    eprintln!(
        "model: {} parameters; backend {backend_name}; {} train images, {batches_per_epoch} steps per epoch, to {}",
        run.model.num_parameters(),
        loader.len(),
        match (total_steps, args.minutes) {
            (u64::MAX, Some(m)) => format!("{m} minutes of training"),
            (s, Some(m)) => format!("step {s} or {m} minutes of training"),
            (s, None) => format!("step {s}"),
        }
    );

    let limits = Limits {
        total_steps,
        seconds: args.minutes.map(|m| m * 60.0).unwrap_or(f64::INFINITY),
        checkpoint_every: args.checkpoint_every,
        max_bad_steps: args.max_bad_steps,
        stop: stop_on_ctrl_c(),
    };
    let mut report = Report::open(&args.out, total_steps, args.quiet, run.state.step)?;
    let mut steps = Stepper::new(check_every);
    let mut stopped = false;
    let mut evaluated_at = None;
    // A fresh run's first point on its learning curve: where it starts from.
    if !args.resume && test_loader.is_some() {
        report.write(&run.held_out("eval", test_loader.as_ref())?)?;
        evaluated_at = Some(run.state.step);
    }
    while !limits.done(&run.state) {
        let end;
        (run, end) = run.train_epoch(&loader, &mut steps, &mut report, &devices, &limits, &checkpoint_path)?;
        match end {
            EpochEnd::Complete => {}
            EpochEnd::Stopped => {
                stopped = true;
                break;
            }
            EpochEnd::Done => break,
        }
        run.end_epoch(&args.out, test_loader.as_ref(), &mut report, &checkpoint_path)?;
        evaluated_at = Some(run.state.step);
    }
    run.save(&checkpoint_path)?;
    // A run that ends inside an epoch is evaluated where it ends too, so
    // every run's last point is on its learning curve.
    if !stopped && evaluated_at != Some(run.state.step) && test_loader.is_some() {
        report.write(&run.held_out("eval", test_loader.as_ref())?)?;
    }
    report.progress.finish_and_clear();
    let skipped = loader.stats();
    if skipped.skipped() > 0 {
        eprintln!("skipped {} unreadable images, e.g. {}", skipped.skipped(), skipped.examples().join("; "));
    }
    eprintln!(
        "{} at step {} (epoch {}, {:.1} training minutes); checkpoint {}",
        if stopped { "interrupted, saved" } else { "done" },
        run.state.step,
        run.state.epoch,
        run.state.train_seconds / 60.0,
        checkpoint_path.display()
    );
    Ok(())
}

/// A step's per-image losses (`[B]`) and gradient norm (`[1]`, when there is
/// one), both on the first device, read to the host in one read (one device
/// synchronisation on a GPU): `(losses, norm)`.
fn read_losses_and_norm(nats: Tensor<1>, norm: Option<Tensor<1>>) -> (Vec<f32>, Option<f64>) {
    read_steps([(nats, norm)]).pop().expect("one step read")
}

/// [`read_losses_and_norm`] for several steps, all in one read.
pub(crate) fn read_steps(
    steps: impl IntoIterator<Item = (Tensor<1>, Option<Tensor<1>>)>,
) -> Vec<(Vec<f32>, Option<f64>)> {
    let steps: Vec<_> = steps.into_iter().collect();
    let mut parts = Vec::new();
    for (nats, norm) in &steps {
        parts.push(nats.clone());
        parts.extend(norm.clone().map(Tensor::inner));
    }
    let values = rgflow::dispatch::read_to_host(Tensor::cat(parts, 0)).try_into_vec_as::<f32>().expect("f32 losses");
    let mut rest = &values[..];
    steps
        .iter()
        .map(|(nats, norm)| {
            let (losses, after) = rest.split_at(nats.dims()[0]);
            let (norm, after) = match norm {
                Some(_) => (Some(f64::from(after[0])), &after[1..]),
                None => (None, after),
            };
            rest = after;
            (losses.to_vec(), norm)
        })
        .collect()
}

/// Mean ± std over images of the test bpd with one dequantisation draw (the
/// same draw at every evaluation, so a learning curve's points differ only
/// by the weights).
fn evaluate(model: &RgFlow, loader: &Loader, batch: usize) -> anyhow::Result<(f64, f64)> {
    let options = EpochOptions { shuffle: false, flip: false, dequantize: true, batch_size: batch };
    let mut all = Vec::new();
    let device = &model.devices()[0];
    for b in loader.epoch(0, 0, options) {
        let b = b?;
        let x01 = images_tensor(b.x01, b.len, model.config(), device);
        all.extend(model.bits_per_dim(x01).into_data().try_to_vec::<f32>().expect("f32").into_iter().map(f64::from));
    }
    Ok(crate::eval::mean_std(&all))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny_settings() -> Settings {
        Settings {
            config: RgFlowConfig::from_level_specs(8, 3, "1", "1", "1", "8").unwrap(),
            data: vec!["test".into()],
            batch: 4,
            lr: 1e-3,
            schedule: LrSchedule { peak: 1e-3, warmup_steps: 2, decay: Decay::Constant },
            ema_decay: 0.9,
            weight_decay: 0.0,
            clip_grad: 1.0,
            seed: 3,
            precision: ProductPrecision::F32,
        }
    }

    /// A batch of 4 of [`tiny_settings`]' 8×8 colour images, the `n`-th.
    fn batch(n: usize) -> Batch {
        let x01 = (0..4 * 192).map(|i| (((i + 7 * n) * 37 % 251) as f32 + 0.5) / 256.0).collect();
        Batch { x01, len: 4, cursor: 4 * (n + 1) }
    }

    /// Open, step, save and resume, without the CLI.
    #[test]
    fn a_run_steps_saves_and_resumes() {
        let dir = tempfile::tempdir().unwrap();
        let device = Device::flex().autodiff();
        let settings = tiny_settings();
        let ckpt = dir.path().join(CHECKPOINT);
        let run = Run::open(settings.clone(), false, None, &ckpt, &device).unwrap();
        let (run, step) = run.step(batch(0), std::slice::from_ref(&device));
        assert!(step.applied && step.bpd.0.is_finite() && step.grad_norm.is_some_and(f64::is_finite));
        assert_eq!(step.lr, 5e-4, "the first of two warm-up steps");
        assert_eq!((run.state.step, run.state.cursor, run.state.images_seen), (1, 4, 4));
        assert_eq!(run.average.as_ref().map(WeightAverage::updates), Some(1));
        run.save(&ckpt).unwrap();

        let back = Run::open(settings.clone(), true, None, &ckpt, &device).unwrap();
        assert_eq!((back.state.step, back.state.cursor, back.state.average_updates), (1, 4, 1));
        let refused = |r: anyhow::Result<Run>| r.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(refused(Run::open(settings.clone(), false, None, &ckpt, &device)).contains("--resume"));
        let other = Settings { batch: 8, ..settings };
        assert!(refused(Run::open(other, true, None, &ckpt, &device)).contains("differ"));
    }

    /// Steps read in stretches: nothing until `check_every` steps or a due
    /// read, then the stretch's steps in order; a flush reads the rest. The
    /// run is the one that reads every step.
    #[test]
    fn unchecked_steps_are_read_in_stretches() {
        let dir = tempfile::tempdir().unwrap();
        let devices = [Device::flex().autodiff()];
        let open = |name: &str| Run::open(tiny_settings(), false, None, &dir.path().join(name), &devices[0]).unwrap();
        let (mut every, mut stretched) = (Stepper::new(1), Stepper::new(3));
        let (mut a, mut b) = (open("a"), open("b"));
        let mut read = Vec::new();
        for n in 0..5 {
            let (outcomes_a, outcomes_b);
            (a, outcomes_a) = every.step(a, batch(n), &devices, |_| false);
            assert_eq!(outcomes_a.len(), 1);
            (b, outcomes_b) = stretched.step(b, batch(n), &devices, |run| run.state.step == 5);
            read.push(outcomes_b.iter().map(|o| o.at.step).collect::<Vec<_>>());
        }
        assert_eq!(read, [vec![], vec![], vec![1, 2, 3], vec![], vec![4, 5]], "a stretch of 3, then a due read");
        (b, _) = stretched.step(b, batch(5), &devices, |_| false);
        let flushed;
        (b, flushed) = stretched.flush(b, &devices);
        assert_eq!(flushed.iter().map(|o| o.at.step).collect::<Vec<_>>(), [6]);
        assert!(stretched.flush(b.clone(), &devices).1.is_empty(), "nothing left to read");
        (a, _) = every.step(a, batch(5), &devices, |_| false);
        let config = tiny_settings().config;
        let latents = |run: &Run| {
            let x = images_tensor(batch(9).x01, 4, &config, &Device::flex());
            run.model.valid().encode(x).into_data().try_to_vec::<f32>().unwrap()
        };
        assert!(latents(&a) == latents(&b), "the same steps either way");
        assert!(every.rate() > 0.0);
    }

    /// An epoch's end writes its sample grid and held-out line, and saves
    /// a checkpoint at the next epoch's start.
    #[test]
    fn an_epoch_end_samples_reports_and_saves() {
        let dir = tempfile::tempdir().unwrap();
        let device = Device::flex().autodiff();
        let ckpt = dir.path().join(CHECKPOINT);
        let mut run = Run::open(tiny_settings(), false, None, &ckpt, &device).unwrap();
        (run, _) = run.step(batch(0), std::slice::from_ref(&device));
        let mut report = Report::open(dir.path(), 10, true, run.state.step).unwrap();
        run.end_epoch(dir.path(), None, &mut report, &ckpt).unwrap();
        assert_eq!((run.state.epoch, run.state.cursor), (1, 0));
        let grid = image::open(dir.path().join("samples").join("epoch-0001.png")).unwrap();
        assert_eq!(grid.width(), grid.height(), "an 8 × 8 grid");
        let log = std::fs::read_to_string(dir.path().join(LOG)).unwrap();
        let line: LogLine = serde_json::from_str(log.lines().last().unwrap()).unwrap();
        assert_eq!((line.event.as_str(), line.step, line.epoch), ("epoch", 1, 0));
        let back = Run::open(tiny_settings(), true, None, &ckpt, &device).unwrap();
        assert_eq!((back.state.epoch, back.state.cursor, back.state.step), (1, 0, 1));
    }
}
