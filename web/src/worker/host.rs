//! The worker's side of the protocol without the worker: a [`Host`] owns the
//! engine and the strokes' samplers and answers one [`Request`] at a time.
//! DOM-free, so the native tests drive it exactly as the page does.

use std::collections::BTreeMap;

use burn::prelude::*;
use rgflow::explore::inpaint::ConeSampler;

use super::protocol::{ModelInfo, Request, Response, StrokeInfo};
use crate::backend::{self, BackendKind, Preference};
use crate::engine::Engine;
use crate::error::{Result, WebError};

/// Strokes kept at once: the page ends each one, so more means a page that
/// lost track of its strokes; the oldest go first.
const MAX_STROKES: usize = 8;

/// Faces per timed batch when the two backends are compared at start-up
/// (after one warm-up face each, which pays for compiling kernels).
const RACE_FACES: usize = 2;

/// The engine and its state between requests.
#[derive(Default)]
pub struct Host {
    device: Option<(Device, BackendKind)>,
    /// No backend was forced and WebGPU started: the model loads on the
    /// CPU, and PickBackend times WebGPU against it.
    race: bool,
    /// A model loaded in race mode waits for PickBackend.
    race_pending: bool,
    engine: Option<Engine>,
    /// Live strokes by id (ids only grow, so the first is the oldest).
    strokes: BTreeMap<u32, ConeSampler>,
    next_stroke: u32,
}

impl Host {
    pub fn new() -> Self {
        Self::default()
    }

    /// Answers one request.
    pub async fn handle(&mut self, request: Request) -> Result<Response> {
        if let Request::Start { forced } = request {
            let preference = if forced == Some(BackendKind::Cpu) { Preference::Cpu } else { Preference::Auto };
            let chosen = backend::choose(preference).await;
            self.race = forced.is_none() && chosen.kind == BackendKind::WebGpu;
            self.race_pending = false;
            self.device = Some((chosen.device, chosen.kind));
            self.engine = None;
            self.strokes.clear();
            return Ok(Response::Started { backend: chosen.kind, fallback_reason: chosen.fallback_reason });
        }
        if let Request::Load { bytes, source } = request {
            let Some((device, kind)) = self.device.clone() else {
                return Err(WebError::Input("the engine has no backend yet: start it before loading weights".into()));
            };
            self.engine = None;
            self.strokes.clear();
            // Unforced on WebGPU: the CPU first (no kernels to compile before
            // the first face), the weights kept for PickBackend.
            let engine = if self.race {
                self.race_pending = true;
                Engine::load(bytes, &source, Device::flex(), BackendKind::Cpu)?
            } else {
                Engine::load(bytes, &source, device, kind)?
            };
            let info = ModelInfo {
                config_json: serde_json::to_string(engine.config())
                    .map_err(|e| WebError::Backend(format!("the model's config as JSON: {e}")))?,
                num_parameters: engine.flow().num_parameters(),
                backend: engine.backend(),
            };
            self.engine = Some(engine);
            return Ok(Response::Loaded(info));
        }
        if let Request::PickBackend = request {
            let engine = self.engine.take().ok_or_else(|| WebError::Input("no model is loaded yet".into()))?;
            let (true, Some((device, _))) = (std::mem::take(&mut self.race_pending), self.device.clone()) else {
                let backend = engine.backend();
                self.engine = Some(engine);
                return Ok(Response::Picked { backend, choice: None });
            };
            self.strokes.clear();
            let (engine, choice) = faster_engine(engine, device).await?;
            let backend = engine.backend();
            self.engine = Some(engine);
            return Ok(Response::Picked { backend, choice: Some(choice) });
        }
        let engine = self.engine.as_ref().ok_or_else(|| WebError::Input("no model is loaded yet".into()))?;
        Ok(match request {
            Request::Start { .. } | Request::Load { .. } | Request::PickBackend => unreachable!("answered above"),
            Request::Sample { n, temperatures, seed } => Response::Faces(engine.sample(n, &temperatures, seed).await?),
            Request::Encode { x01 } => {
                let (face, bits_per_dim) = engine.encode(x01).await?;
                Response::Scored { face, bits_per_dim }
            }
            Request::MixStrip { a, b } => Response::Images(engine.mix_strip(&a, &b).await?),
            Request::LevelLatents { face, level } => Response::Values(engine.level_latents(&face, level).await?),
            Request::WithLevelLatents { face, level, values } => {
                Response::Face(engine.with_level_latents(&face, level, values).await?)
            }
            Request::RandomWalk { face, level, frames, seed } => {
                Response::Images(engine.random_walk(&face, level, frames, seed).await?)
            }
            Request::ReceptiveField { face, site, channel } => {
                Response::Values(engine.receptive_field(&face, site, channel).await?)
            }
            Request::StartStroke { face, unknown, temperature, rounds, seed } => {
                let options = engine.stroke_options(temperature, rounds, seed)?;
                let sampler = engine.cone_sampler(&face, &unknown, options)?;
                let id = self.next_stroke;
                self.next_stroke = self.next_stroke.wrapping_add(1);
                let info = StrokeInfo {
                    id,
                    blocks_per_round: sampler.blocks_per_round(),
                    blocks_total: sampler.blocks_total(),
                };
                while self.strokes.len() >= MAX_STROKES {
                    self.strokes.pop_first();
                }
                self.strokes.insert(id, sampler);
                Response::StrokeStarted(info)
            }
            Request::StrokeRounds { stroke, rounds } => {
                let sampler = self
                    .strokes
                    .get_mut(&stroke)
                    .ok_or_else(|| WebError::Input(format!("stroke {stroke} has ended (or never started)")))?;
                for _ in 0..rounds {
                    engine.sampler_round(sampler).await?;
                }
                Response::Values(engine.sampled(sampler).await?)
            }
            Request::EndStroke { stroke } => {
                self.strokes.remove(&stroke);
                Response::Ended
            }
        })
    }
}

/// The model on the CPU (`on_cpu`) and the same on WebGPU (`gpu`), each
/// timed on a small batch of faces after a warm-up one; the faster is kept,
/// with the reason.
async fn faster_engine(on_cpu: Engine, gpu: Device) -> Result<(Engine, String)> {
    let on_gpu = on_cpu.on(gpu, BackendKind::WebGpu)?;
    let (gpu_ms, cpu_ms) = (ms_per_face(&on_gpu).await?, ms_per_face(&on_cpu).await?);
    let timing = format!("{cpu_ms:.0} ms per face on the CPU, {gpu_ms:.0} on WebGPU");
    Ok(if gpu_ms <= cpu_ms {
        (on_gpu, format!("faster here than the CPU ({timing})"))
    } else {
        (on_cpu, format!("faster here than WebGPU ({timing})"))
    })
}

/// Milliseconds per face of a batch of [`RACE_FACES`] faces, after one face
/// to warm up (kernels compile on first use).
async fn ms_per_face(engine: &Engine) -> Result<f64> {
    let temperatures = vec![0.8; engine.levels()];
    engine.sample(1, &temperatures, 0).await?;
    let start = web_time::Instant::now();
    engine.sample(RACE_FACES, &temperatures, 1).await?;
    Ok(start.elapsed().as_secs_f64() * 1e3 / RACE_FACES as f64)
}
