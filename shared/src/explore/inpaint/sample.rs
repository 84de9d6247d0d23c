//! [`ConeSampler`]: completions drawn from the model inside the hole's causal cone.
//!
//! The hole starts at the harmonic fill. One round, for `K` completions at once:
//! 1. encode the current images (known pixels + the current fill);
//! 2. move the latents the hole depends on (its causal cone's) by a
//!    Crank–Nicolson step `w ← √(1-β²)·w + β·ξ` in the Gaussian quantiles of
//!    the prior at each level's temperature — a move that keeps the prior, so
//!    `β = 1` redraws a latent from it and small `β` nudges it. A latent's
//!    `β²` is the round's times the share of its receptive field inside the
//!    hole: coarse latents, which the known pixels pin down, move little;
//! 3. decode the hole's pixels (only the cone's blocks run: the hole depends
//!    on nothing else) and put the known pixels back.
//!
//! The round's `β` falls geometrically (1 to 0.1 by default), so early rounds
//! draw the hole's content and later ones let the encoding of the pasted image
//! pull the cone's latents towards values that agree with the known pixels —
//! the RePaint idea for a flow. With `metropolis` a move is kept only as often
//! as the known pixels agree with it (see [`ConeSampler::settle`]). The latent
//! moves run on the host from one seeded generator, so every backend draws
//! the same completions.
//!
//! [`ConeSampler::new`] runs the passes as burn ops on any device;
//! [`ConeSampler::packed`] runs them on a [`PackedFlow`] in host memory,
//! where a round's cost follows the cone's blocks (the CPU backends).

use burn::prelude::*;
use burn::tensor::{IndexingUpdateOp, Int};
use rand::SeedableRng;
use rand::rngs::StdRng;

use super::Hole;
use crate::cone::{Direction, FlowCache, PackedCache, PackedFlow};
use crate::config::PriorKind;
use crate::error::{Error, Result};
use crate::flow::RgFlow;
use crate::gather::index_tensor;
use crate::preprocess;
use crate::prior::Prior;
use crate::sampling::LevelTemperatures;

/// Settings of a [`ConeSampler`].
#[derive(Debug, Clone, PartialEq)]
pub struct SampleOptions {
    /// Completions drawn together (one batch).
    pub samples: usize,
    /// Rounds [`ConeSampler::run`] takes; the step `β` reaches `noise[1]` at the last.
    pub rounds: usize,
    /// Temperature of the prior the cone's latents move under, per level.
    pub temperatures: LevelTemperatures,
    /// The Crank–Nicolson step `β` of the first and the last round (geometric
    /// in between), each in `(0, 1]`: `1` redraws the cone's latents outright.
    pub noise: [f64; 2],
    /// Seed of the latent moves.
    pub seed: u64,
    /// Run only the cone's blocks (the same numbers as full passes, faster).
    pub local: bool,
    /// Keep a round's move for a completion only as often as the known pixels
    /// agree with it ([`ConeSampler::settle`]); otherwise every move is kept.
    /// On held-out faces it lowers a single completion's error and brings its
    /// bits/dim to the truth's, but the completions come out smoother and
    /// closer to each other than the truth is to them (README, Inpainting).
    pub metropolis: bool,
}

impl SampleOptions {
    /// Defaults for a model with `levels` levels, at one temperature: 4
    /// completions, 16 rounds, `β` from 1 to 0.1, seed 0, local, every move kept.
    pub fn new(levels: usize, temperature: f64) -> Self {
        Self {
            samples: 4,
            rounds: 16,
            temperatures: LevelTemperatures::uniform(levels, temperature),
            noise: [1.0, 0.1],
            seed: 0,
            local: true,
            metropolis: false,
        }
    }

    /// The step `β` of round `r` (0-based); past the last round it stays at `noise[1]`.
    pub fn noise_at(&self, round: usize) -> f64 {
        let [first, last] = self.noise;
        if self.rounds <= 1 {
            return first;
        }
        let f = round.min(self.rounds - 1) as f64 / (self.rounds - 1) as f64;
        first * (last / first).powf(f)
    }

    fn check(&self, levels: usize) -> Result<()> {
        if self.samples == 0 || self.rounds == 0 {
            return Err(Error::Config(format!(
                "inpainting takes at least one sample and one round, got {} and {}",
                self.samples, self.rounds
            )));
        }
        if let Some(b) = self.noise.iter().find(|b| !(**b > 0.0 && **b <= 1.0)) {
            return Err(Error::Config(format!("the noise steps must lie in (0, 1], got {b}")));
        }
        LevelTemperatures::new(self.temperatures.0.clone(), levels).map(|_| ())
    }
}

/// Draws `K` completions of one image's hole from the model, round by round.
///
/// ```
/// # use burn::prelude::*;
/// use rgflow::explore::inpaint::{ConeSampler, SampleOptions};
/// let device = Device::flex();
/// let flow = rgflow::RgFlowConfig::from_level_specs(8, 3, "1", "1", "1", "8")?.init(&device);
/// let image = vec![0.4f32; 3 * 8 * 8];
/// let mut hole = vec![false; 64];
/// hole[3 * 8 + 3] = true;
/// let options = SampleOptions { samples: 2, rounds: 3, ..SampleOptions::new(flow.lattice().levels(), 0.7) };
/// let mut sampler = ConeSampler::new(&flow, &image, &hole, options, &device)?;
/// sampler.run();
/// assert_eq!(sampler.images().dims(), [2, 3, 8, 8]);
/// # Ok::<(), rgflow::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct ConeSampler {
    flow: RgFlow,
    /// Where the passes run: `None`, burn ops on `device`.
    packed: Option<PackedFlow>,
    device: Device,
    hole: Hole,
    options: SampleOptions,
    /// The given image in `[0, 1]`, `[K, C·L²]`.
    x01: Tensor<2>,
    /// Its logits, `[K, C·L²]` (values in the hole unused).
    known: Tensor<2>,
    /// One row of `known` on the host, for the packed passes to paste from
    /// (empty on burn ops).
    known_host: Vec<f32>,
    /// Column `e` of an image comes from column `paste[e]` of `[known, filled]`.
    paste: Tensor<1, Int>,
    /// The completions so far.
    current: Chain,
    /// The last round's move, encoded, with the cone latents it proposed
    /// (before the known pixels were put back): awaiting acceptance.
    pending: Option<(Chain, Vec<f32>)>,
    /// `current`'s cone latents and log-det as read back, `[K·M]` and `[K]`.
    read: Option<(Vec<f32>, Vec<f32>)>,
    /// Canonical element indices of the cone's latents, and their temperatures.
    cone_elements: Vec<usize>,
    /// `cone_elements` on the device, built once.
    cone_index: Tensor<1, Int>,
    cone_temperatures: Vec<f64>,
    /// Per cone latent, the share of its receptive field inside the hole: a
    /// round's move has variance `β²·share` for it, so latents the known
    /// pixels pin down (coarse ones, whose fields are mostly known) move little.
    cone_share: Vec<f64>,
    rng: StdRng,
    round: usize,
    accepted: usize,
    proposed: usize,
}

/// [`Chain::Tensors`].
#[derive(Debug, Clone)]
struct TensorChain {
    /// `[K, C·L²]`.
    images: Tensor<2>,
    /// The forward pass over `images`, when local.
    cache: Option<FlowCache>,
    /// `[K, C·L²]`.
    latents: Tensor<2>,
    /// `log|det ∂z/∂x01|`: the flow's and the logit map's, `[K]`.
    log_det: Tensor<1>,
}

/// `K` logit images and their encoding.
#[derive(Debug, Clone)]
enum Chain {
    /// On the sampler's device.
    Tensors(Box<TensorChain>),
    /// In host memory, for a [`PackedFlow`].
    Host {
        /// `[K, C·L²]`.
        images: Vec<f32>,
        /// The forward pass over `images` (its output: the latents).
        cache: PackedCache,
        /// As above, `[K]`.
        log_det: Vec<f32>,
    },
}

impl ConeSampler {
    /// Prepares to fill the sites marked in `unknown` (`[L²]`, all channels) of
    /// the image `x01` (`C·L²` values in `[0, 1]`, channel-major), on `device`.
    /// The hole starts at the harmonic fill.
    pub fn new(flow: &RgFlow, x01: &[f32], unknown: &[bool], options: SampleOptions, device: &Device) -> Result<Self> {
        Self::build(flow, None, x01, unknown, options, device)
    }

    /// As [`Self::new`], with the passes run on `packed` in host memory:
    /// a round costs the cone's blocks and no per-op overheads.
    pub fn packed(packed: &PackedFlow, x01: &[f32], unknown: &[bool], options: SampleOptions) -> Result<Self> {
        Self::build(packed.flow(), Some(packed.clone()), x01, unknown, options, &packed.device())
    }

    fn build(
        flow: &RgFlow,
        packed: Option<PackedFlow>,
        x01: &[f32],
        unknown: &[bool],
        options: SampleOptions,
        device: &Device,
    ) -> Result<Self> {
        let c = flow.config().clone();
        let (l, plane) = (c.image_size, c.image_size * c.image_size);
        let n = c.channels * plane;
        if x01.len() != n {
            return Err(Error::Shape(format!(
                "inpainting takes one {}×{l}×{l} image ({n} values), got {} values",
                c.channels,
                x01.len()
            )));
        }
        options.check(flow.lattice().levels())?;
        let hole = Hole::new(flow, unknown)?;
        let k = options.samples;
        let image = |values: Vec<f32>| Tensor::<2>::from_data(TensorData::new(values, [1, n]), device).repeat_dim(0, k);
        let logits = |x: Tensor<2>| {
            preprocess::logit_transform(x.reshape([k, c.channels, l, l]), c.logit_constraint).0.reshape([k, n])
        };
        let given = x01.to_vec();
        let x01 = image(given.clone());
        let known = logits(x01.clone());
        let paste = index_tensor((0..n).map(|e| if unknown[e % plane] { n + e } else { e }).collect(), device);
        let images = logits(image(super::harmonic_fill(&given, unknown, l)));
        let site_temperature = flow.element_temperatures(&options.temperatures)?;
        let cone_elements: Vec<usize> = (0..n).filter(|e| hole.cone_sites()[e % plane]).collect();
        let cone_temperatures = cone_elements.iter().map(|&e| site_temperature[e] as f64).collect();
        let share: Vec<f64> = (0..plane)
            .map(|site| {
                if !hole.cone_sites()[site] {
                    return 0.0;
                }
                let field = flow.lattice().receptive_cone(site);
                let inside = field.iter().zip(unknown).filter(|(f, u)| **f && **u).count();
                inside as f64 / field.iter().filter(|f| **f).count() as f64
            })
            .collect();
        let cone_share = cone_elements.iter().map(|&e| share[e % plane]).collect();
        // Host values only for the packed passes: a synchronous read-back
        // would fail on WebGPU in the browser.
        let (current, known_host) = match &packed {
            Some(packed) => {
                (encode_host(packed, host(images), None, &options, &hole), host(known.clone().slice([0..1, 0..n])))
            }
            None => (encode(flow, images, None, options.local, &hole), Vec::new()),
        };
        Ok(Self {
            flow: flow.clone(),
            packed,
            device: device.clone(),
            known_host,
            hole,
            rng: StdRng::seed_from_u64(options.seed),
            options,
            x01,
            known,
            paste,
            current,
            pending: None,
            read: None,
            cone_index: index_tensor(cone_elements.clone(), device),
            cone_elements,
            cone_temperatures,
            cone_share,
            round: 0,
            accepted: 0,
            proposed: 0,
        })
    }

    /// What a round needs read back, `[K, M + 1]`: the newest images' latents
    /// at the cone's `M` sites (channel-major canonical order), then their
    /// log-det. Read it and hand it to [`Self::redraw`] or [`Self::settle`].
    pub fn readout(&self) -> Tensor<2> {
        match self.pending.as_ref().map_or(&self.current, |(p, _)| p) {
            Chain::Tensors(chain) => {
                let TensorChain { latents, log_det, .. } = chain.as_ref();
                let cone = latents.clone().select(1, self.cone_index.clone());
                Tensor::cat(vec![cone, log_det.clone().unsqueeze_dim(1)], 1)
            }
            Chain::Host { cache, log_det, .. } => {
                let n = self.flow.config().num_dims();
                let m = self.cone_elements.len();
                let mut values = Vec::with_capacity(log_det.len() * (m + 1));
                for (z, &ldj) in cache.output().chunks_exact(n).zip(log_det) {
                    values.extend(self.cone_elements.iter().map(|&e| z[e]));
                    values.push(ldj);
                }
                Tensor::from_data(TensorData::new(values, [log_det.len(), m + 1]), &self.device)
            }
        }
    }

    /// Decides on the last round's move with the values [`Self::readout`]
    /// gave (`K·(M + 1)`): without `metropolis`, or in the first round, every
    /// completion takes it; with it, completion `k` takes it with probability
    /// `min(1, α)`, where `log α` is the log-prior of its cone latents after the
    /// known pixels were put back minus that of the latents the move proposed,
    /// plus the change in log-det — so a move the known pixels agree with is
    /// kept, and one whose paste leaves a seam (improbable latents) is not.
    pub fn settle(&mut self, readout: &[f32]) -> Result<()> {
        let (k, m) = (self.options.samples, self.cone_elements.len());
        if readout.len() != k * (m + 1) {
            return Err(Error::Shape(format!(
                "{} values read back, the sampler needs {k} samples × ({m} cone latents + 1)",
                readout.len()
            )));
        }
        let cone: Vec<f32> = readout.chunks(m + 1).flat_map(|r| r[..m].iter().copied()).collect();
        let log_det: Vec<f32> = readout.chunks(m + 1).map(|r| r[m]).collect();
        let Some((pending, proposed)) = self.pending.take() else {
            self.read = Some((cone, log_det));
            return Ok(());
        };
        let first = self.round == 1;
        let (old_cone, old_log_det) = self.read.take().expect("a move is made from read values");
        let prior = self.flow.prior();
        let take: Vec<bool> = (0..k)
            .map(|s| {
                if !self.options.metropolis || first {
                    return true;
                }
                let mut log_alpha = (log_det[s] - old_log_det[s]) as f64;
                for j in 0..m {
                    let t = self.cone_temperatures[j];
                    if t > 0.0 {
                        log_alpha += prior.log_density(cone[s * m + j] as f64, t)
                            - prior.log_density(proposed[s * m + j] as f64, t);
                    }
                }
                let u: f64 = rand::Rng::random(&mut self.rng);
                u.ln() < log_alpha
            })
            .collect();
        self.proposed += k;
        self.accepted += take.iter().filter(|t| **t).count();
        let pick = |old: &[f32], new: &[f32], width: usize| -> Vec<f32> {
            (0..k)
                .flat_map(|s| if take[s] { &new[s * width..][..width] } else { &old[s * width..][..width] })
                .copied()
                .collect()
        };
        self.read = Some((pick(&old_cone, &cone, m), pick(&old_log_det, &log_det, 1)));
        self.current = if take.iter().all(|t| *t) { pending } else { self.current.clone().choose(pending, &take) };
        Ok(())
    }

    /// One round from the values [`Self::readout`] gave: settles the last
    /// move, then moves the cone's latents, decodes the hole, puts the known
    /// pixels back and encodes the result (the new pending move).
    pub fn redraw(&mut self, readout: &[f32]) -> Result<()> {
        self.settle(readout)?;
        let (k, m) = (self.options.samples, self.cone_elements.len());
        let beta_round = self.options.noise_at(self.round);
        let prior = self.flow.prior();
        let normal = Prior::new(PriorKind::Gaussian);
        let (cone, _) = self.read.as_ref().expect("settled");
        let moved: Vec<f32> = cone
            .iter()
            .enumerate()
            .map(|(i, &z)| {
                let t = self.cone_temperatures[i % m];
                let beta = beta_round * self.cone_share[i % m].sqrt();
                let keep = (1.0 - beta * beta).sqrt();
                let xi = normal.sample_unit(&mut self.rng) as f64;
                if t == 0.0 {
                    // A zero-temperature prior is a point mass at 0: shrink towards it.
                    return (keep * z as f64) as f32;
                }
                let w = keep * prior.to_gaussian(z as f64, t) + beta * xi;
                prior.from_gaussian(w, t) as f32
            })
            .collect();
        let proposal =
            match &mut self.current {
                Chain::Tensors(chain) => {
                    let TensorChain { latents, cache, .. } = chain.as_ref();
                    let z = latents.clone();
                    let [_, n] = z.dims();
                    let c = self.flow.config();
                    let moved_tensor = Tensor::<2>::from_data(TensorData::new(moved.clone(), [k, m]), &self.device);
                    let z = z
                        .select_assign(1, self.cone_index.clone(), moved_tensor, IndexingUpdateOp::Assign)
                        .reshape([k, c.channels, c.image_size, c.image_size]);
                    let decoded = if self.options.local {
                        self.flow.inverse_blocks(z, self.hole.cone_blocks())
                    } else {
                        self.flow.inverse_without_ldj(z)
                    };
                    let images =
                        Tensor::cat(vec![self.known.clone(), decoded.reshape([k, n])], 1).select(1, self.paste.clone());
                    encode(&self.flow, images, cache.as_ref(), self.options.local, &self.hole)
                }
                Chain::Host { cache, .. } => {
                    let packed = self.packed.as_ref().expect("a host chain has a packed flow");
                    let n = self.known_host.len();
                    let mut z = cache.output().to_vec();
                    for (z, moved) in z.chunks_exact_mut(n).zip(moved.chunks_exact(m)) {
                        for (&e, &v) in self.cone_elements.iter().zip(moved) {
                            z[e] = v;
                        }
                    }
                    if self.options.local {
                        packed.inverse_blocks(&mut z, self.hole.cone_blocks());
                    } else {
                        z = packed.run_cached(Direction::Inverse, &z).output().to_vec();
                    }
                    let mut images = self.known_host.repeat(k);
                    for (image, z) in images.chunks_exact_mut(n).zip(z.chunks_exact(n)) {
                        for &e in self.hole.elements() {
                            image[e] = z[e];
                        }
                    }
                    // Without Metropolis every move is kept, so the current pass
                    // is updated in place rather than copied.
                    let base = match (self.options.local, self.options.metropolis) {
                        (false, _) => None,
                        (true, true) => Some(cache.clone()),
                        (true, false) => Some(std::mem::replace(cache, PackedCache::empty())),
                    };
                    encode_host(packed, images, base, &self.options, &self.hole)
                }
            };
        self.pending = Some((proposal, moved));
        self.round += 1;
        Ok(())
    }

    /// One round, reading back synchronously.
    pub fn step(&mut self) {
        let values = self.readout().into_data().try_to_vec::<f32>().expect("f32 read-back");
        self.redraw(&values).expect("the values just read have the sampler's shape");
    }

    /// Runs the remaining rounds of [`SampleOptions::rounds`] and settles the last.
    pub fn run(&mut self) {
        while self.round < self.options.rounds {
            self.step();
        }
        if self.pending.is_some() {
            let values = self.readout().into_data().try_to_vec::<f32>().expect("f32 read-back");
            self.settle(&values).expect("the values just read have the sampler's shape");
        }
    }

    /// The completions in `[0, 1]`, `[K, C, L, L]`: the hole's pixels decoded
    /// (clamped), every other pixel the given image's value, bit for bit. A
    /// move not yet settled is not shown.
    pub fn images(&self) -> Tensor<4> {
        let c = self.flow.config();
        let k = self.options.samples;
        let (l, n) = (c.image_size, c.num_dims());
        let logits = match &self.current {
            Chain::Tensors(chain) => chain.images.clone(),
            Chain::Host { images, .. } => Tensor::from_data(TensorData::new(images.clone(), [k, n]), &self.device),
        };
        let logits = logits.reshape([k, c.channels, l, l]);
        let filled = preprocess::logit_to_pixels(logits, c.logit_constraint).clamp(0.0, 1.0).reshape([k, n]);
        Tensor::cat(vec![self.x01.clone(), filled], 1).select(1, self.paste.clone()).reshape([
            k,
            c.channels,
            c.image_size,
            c.image_size,
        ])
    }

    /// Rounds taken so far.
    pub fn rounds(&self) -> usize {
        self.round
    }

    /// The fraction of moves kept after the first round (1 without `metropolis`).
    pub fn acceptance(&self) -> f64 {
        if self.proposed == 0 { 1.0 } else { self.accepted as f64 / self.proposed as f64 }
    }

    /// The hole being filled.
    pub fn hole(&self) -> &Hole {
        &self.hole
    }

    /// Settings.
    pub fn options(&self) -> &SampleOptions {
        &self.options
    }

    /// Blocks a round evaluates: the cone's, once to decode and once to
    /// encode (all of them twice when not local).
    pub fn blocks_per_round(&self) -> usize {
        2 * if self.options.local { self.hole.cone_block_count() } else { self.blocks_total() }
    }

    /// Blocks a full pass evaluates.
    pub fn blocks_total(&self) -> usize {
        self.flow.lattice().num_blocks()
    }
}

/// Encodes logit images `[K, C·L²]`: from `base` when local (they differ from
/// its images in the hole alone, so only the cone's blocks run).
fn encode(flow: &RgFlow, images: Tensor<2>, base: Option<&FlowCache>, local: bool, hole: &Hole) -> Chain {
    let c = flow.config();
    let [k, n] = images.dims();
    let shaped = images.clone().reshape([k, c.channels, c.image_size, c.image_size]);
    let (cache, z, ldj) = match (local, base) {
        (true, Some(base)) => {
            let (cache, _) = flow.update_cached(base, shaped.clone(), hole.unknown());
            let z = cache.output(c.channels, c.image_size);
            let ldj = cache.log_det();
            (Some(cache), z, ldj)
        }
        (true, None) => {
            let cache = flow.run_cached(Direction::Forward, shaped.clone());
            let (z, ldj) = (cache.output(c.channels, c.image_size), cache.log_det());
            (Some(cache), z, ldj)
        }
        (false, _) => {
            let (z, ldj) = flow.forward(shaped.clone());
            (None, z, ldj)
        }
    };
    let log_det = ldj + preprocess::logit_log_det(shaped, c.logit_constraint);
    Chain::Tensors(Box::new(TensorChain { images, cache, latents: z.reshape([k, n]), log_det }))
}

/// [`encode`] on a [`PackedFlow`]: logit images `[K, C·L²]`, updating `base`
/// in place when local (it encodes images that differ in the hole alone).
fn encode_host(
    packed: &PackedFlow,
    images: Vec<f32>,
    base: Option<PackedCache>,
    options: &SampleOptions,
    hole: &Hole,
) -> Chain {
    let cache = match (options.local, base) {
        (true, Some(mut cache)) => {
            packed.update(&mut cache, &images, hole.unknown());
            cache
        }
        _ => packed.run_cached(Direction::Forward, &images),
    };
    let constraint = packed.flow().config().logit_constraint;
    let n = packed.flow().config().num_dims();
    let log_det = cache
        .log_det()
        .into_iter()
        .zip(images.chunks_exact(n))
        .map(|(ldj, image)| ldj + preprocess::logit_log_det_host(image, constraint) as f32)
        .collect();
    Chain::Host { images, cache, log_det }
}

/// A tensor's values on the host.
fn host(t: Tensor<2>) -> Vec<f32> {
    t.into_data().try_into_vec_as::<f32>().expect("f32 values")
}

impl Chain {
    /// Row `k` from `new` where `take[k]`, else from `self`.
    fn choose(self, new: Chain, take: &[bool]) -> Chain {
        match (self, new) {
            (Chain::Tensors(old), Chain::Tensors(new)) => {
                let TensorChain { images, cache, latents, log_det } = *old;
                let TensorChain { images: new_images, cache: new_cache, latents: new_latents, log_det: new_log_det } =
                    *new;
                let rows = |old: Tensor<2>, new: Tensor<2>| choose_rows(old, new, take);
                let k = take.len();
                let cache = match (cache, new_cache) {
                    (Some(old), Some(new)) => Some(FlowCache {
                        direction: new.direction,
                        states: old.states.into_iter().zip(new.states).map(|(o, n)| rows(o, n)).collect(),
                        block_ldj: old.block_ldj.into_iter().zip(new.block_ldj).map(|(o, n)| rows(o, n)).collect(),
                    }),
                    _ => None,
                };
                Chain::Tensors(Box::new(TensorChain {
                    images: rows(images, new_images),
                    cache,
                    latents: rows(latents, new_latents),
                    log_det: rows(log_det.reshape([k, 1]), new_log_det.reshape([k, 1])).reshape([k]),
                }))
            }
            (
                Chain::Host { images, cache, log_det },
                Chain::Host { images: mut new_images, cache: mut new_cache, log_det: mut new_log_det },
            ) => {
                // Copy the rejected completions' rows back into the new chain.
                let rows = |old: &[f32], new: &mut [f32]| {
                    let width = old.len() / take.len();
                    for (k, (old, new)) in old.chunks_exact(width).zip(new.chunks_exact_mut(width)).enumerate() {
                        if !take[k] {
                            new.copy_from_slice(old);
                        }
                    }
                };
                rows(&images, &mut new_images);
                rows(&log_det, &mut new_log_det);
                for (old, new) in cache.states.iter().zip(&mut new_cache.states) {
                    rows(old, new);
                }
                for (old, new) in cache.block_ldj.iter().zip(&mut new_cache.block_ldj) {
                    rows(old, new);
                }
                Chain::Host { images: new_images, cache: new_cache, log_det: new_log_det }
            }
            _ => unreachable!("a sampler's chains all run on one engine"),
        }
    }
}

/// Row `k` of `new` where `take_new[k]`, else of `old`: `[K, N]`.
fn choose_rows(old: Tensor<2>, new: Tensor<2>, take_new: &[bool]) -> Tensor<2> {
    let k = take_new.len();
    let device = old.device();
    let rows = (0..k).map(|r| if take_new[r] { k + r } else { r }).collect();
    Tensor::cat(vec![old, new], 0).select(0, index_tensor(rows, &device))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RgFlowConfig;
    use crate::testing::{host_uniform, jitter_parameters};

    fn setup(size: usize) -> (RgFlow, Tensor<4>, Vec<bool>) {
        let device = Device::flex();
        let flow = jitter_parameters(
            RgFlowConfig::from_level_specs(size, 3, "2", "1", "1", "16").unwrap().init(&device),
            0.05,
            7,
        );
        let x01 = host_uniform([1, 3, size, size], 0.1, 0.9, 4, &device);
        let mut hole = vec![false; size * size];
        for r in 4..9 {
            for c in 5..11 {
                hole[r * size + c] = true;
            }
        }
        (flow, x01, hole)
    }

    fn values(t: Tensor<4>) -> Vec<f32> {
        t.into_data().try_to_vec::<f32>().unwrap()
    }

    fn options(flow: &RgFlow, seed: u64, local: bool) -> SampleOptions {
        SampleOptions { samples: 3, rounds: 4, seed, local, ..SampleOptions::new(flow.lattice().levels(), 0.8) }
    }

    /// A sampler on burn ops, or on the flow packed.
    fn sampler(flow: &RgFlow, x01: &[f32], hole: &[bool], options: SampleOptions, packed: bool) -> ConeSampler {
        if packed {
            ConeSampler::packed(&PackedFlow::new(flow), x01, hole, options).unwrap()
        } else {
            ConeSampler::new(flow, x01, hole, options, &Device::flex()).unwrap()
        }
    }

    #[test]
    fn known_pixels_stay_and_seeds_decide_the_fill() {
        for packed in [false, true] {
            known_pixels_stay_and_seeds_decide_the_fill_on(packed);
        }
    }

    fn known_pixels_stay_and_seeds_decide_the_fill_on(packed: bool) {
        let (flow, x01, hole) = setup(16);
        let given = values(x01.clone());
        let draw = |seed| {
            let mut s = sampler(&flow, &given, &hole, options(&flow, seed, true), packed);
            s.run();
            values(s.images())
        };
        let (a, again, b) = (draw(1), draw(1), draw(2));
        assert_eq!(a, again, "the same seed draws the same completions");
        let n = given.len();
        let mut differ = [0usize; 2];
        for (i, v) in a.iter().enumerate() {
            let (k, e) = (i / n, i % n);
            if hole[e % 256] {
                differ[0] += usize::from(*v != b[i]);
                // Completions differ from each other too.
                differ[1] += usize::from(k > 0 && *v != a[e]);
            } else {
                assert_eq!(*v, given[e], "known pixel {e} of completion {k} changed");
            }
        }
        let hole_values = 3 * 3 * hole.iter().filter(|h| **h).count();
        assert!(differ[0] > hole_values * 9 / 10, "seeds 1 and 2 differ at {} of {hole_values}", differ[0]);
        assert!(differ[1] > hole_values / 2, "completions differ at {} of {hole_values}", differ[1]);
    }

    #[test]
    fn local_rounds_equal_full_rounds() {
        let (flow, x01, hole) = setup(32);
        // Without Metropolis: its decisions read a log-det whose local and full
        // sums differ in rounding, so one could flip and the chains part.
        let plain = |local| SampleOptions { metropolis: false, ..options(&flow, 5, local) };
        let given = values(x01);
        for packed in [false, true] {
            let mut local = sampler(&flow, &given, &hole, plain(true), packed);
            let mut full = sampler(&flow, &given, &hole, plain(false), packed);
            assert!(local.blocks_per_round() < full.blocks_per_round() / 2);
            for round in 0..4 {
                let (a, b) = (local.readout(), full.readout());
                let diff = (a - b).abs().max().into_scalar::<f32>();
                assert!(diff < 1e-3, "round {round}: cone latents or log-dets differ by {diff}");
                local.step();
                full.step();
                let (a, b) = (values(local.images()), values(full.images()));
                if packed {
                    // The packed passes give a row the same bits whatever else runs.
                    assert_eq!(a, b, "round {round}: packed images differ");
                } else {
                    let diff = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max);
                    assert!(diff < 1e-5, "round {round}: images differ by {diff}");
                }
            }
        }
    }

    /// The packed passes draw the completions the burn ops draw, to rounding.
    #[test]
    fn packed_rounds_follow_the_tensor_rounds() {
        let (flow, x01, hole) = setup(32);
        let given = values(x01);
        let plain = SampleOptions { metropolis: false, ..options(&flow, 3, true) };
        let mut tensors = sampler(&flow, &given, &hole, plain.clone(), false);
        let mut packed = sampler(&flow, &given, &hole, plain, true);
        for round in 0..4 {
            tensors.step();
            packed.step();
            let diff = (tensors.images() - packed.images()).abs().max().into_scalar::<f32>();
            assert!(diff < 1e-3, "round {round}: images differ by {diff}");
        }
    }

    #[test]
    fn bad_settings_are_named() {
        let (flow, x01, hole) = setup(16);
        let levels = flow.lattice().levels();
        let bad = [
            SampleOptions { samples: 0, ..SampleOptions::new(levels, 0.8) },
            SampleOptions { noise: [1.0, 0.0], ..SampleOptions::new(levels, 0.8) },
            SampleOptions { temperatures: LevelTemperatures(vec![0.5; levels + 1]), ..SampleOptions::new(levels, 0.8) },
        ];
        for options in bad {
            let e = ConeSampler::new(&flow, &values(x01.clone()), &hole, options.clone(), &Device::flex())
                .unwrap_err()
                .to_string();
            assert!(e.contains("sample") || e.contains("noise") || e.contains("temperatures"), "{options:?}: {e}");
        }
        let e = ConeSampler::new(
            &flow,
            &values(x01.clone()),
            &[false; 256],
            SampleOptions::new(levels, 0.8),
            &Device::flex(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("no unknown pixel"), "{e}");
        let e = ConeSampler::new(&flow, &values(x01), &hole[..100], SampleOptions::new(levels, 0.8), &Device::flex())
            .unwrap_err();
        assert!(e.to_string().contains("100 entries"), "{e}");
    }

    #[test]
    fn metropolis_rounds_keep_known_pixels_and_replay_from_the_seed() {
        let (flow, x01, hole) = setup(16);
        let given = values(x01.clone());
        for packed in [false, true] {
            let run = || {
                let options = SampleOptions { metropolis: true, rounds: 6, ..options(&flow, 9, true) };
                let mut s = sampler(&flow, &given, &hole, options, packed);
                s.run();
                (values(s.images()), s.acceptance())
            };
            let ((a, kept), (b, _)) = (run(), run());
            assert_eq!(a, b);
            assert!((0.0..1.0).contains(&kept) && kept > 0.0, "packed {packed}: acceptance {kept}");
            for (i, v) in a.iter().enumerate() {
                if !hole[(i % given.len()) % 256] {
                    assert_eq!(*v, given[i % given.len()], "known pixel {i} changed");
                }
            }
        }
        let mut s = ConeSampler::new(&flow, &given, &hole, options(&flow, 9, true), &Device::flex()).unwrap();
        let e = s.redraw(&[0.0; 5]).unwrap_err().to_string();
        assert!(e.contains("5 values read back"), "{e}");
    }

    #[test]
    fn noise_falls_geometrically() {
        let o = SampleOptions { rounds: 3, noise: [1.0, 0.25], ..SampleOptions::new(2, 1.0) };
        let b: Vec<f64> = (0..5).map(|r| o.noise_at(r)).collect();
        assert!((b[0] - 1.0).abs() < 1e-12 && (b[1] - 0.5).abs() < 1e-12 && (b[2] - 0.25).abs() < 1e-12);
        assert_eq!(b[3], b[2]);
    }
}
