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

/// The engine and its state between requests.
#[derive(Default)]
pub struct Host {
    device: Option<(Device, BackendKind)>,
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
            let engine = Engine::load(bytes, &source, device, kind)?;
            let info = ModelInfo {
                config_json: serde_json::to_string(engine.config())
                    .map_err(|e| WebError::Backend(format!("the model's config as JSON: {e}")))?,
                num_parameters: engine.flow().num_parameters(),
                backend: engine.backend(),
            };
            self.engine = Some(engine);
            return Ok(Response::Loaded(info));
        }
        let engine = self.engine.as_ref().ok_or_else(|| WebError::Input("no model is loaded yet".into()))?;
        Ok(match request {
            Request::Start { .. } | Request::Load { .. } => unreachable!("answered above"),
            Request::Sample { n, temperatures, seed } => Response::Faces(engine.sample(n, &temperatures, seed).await?),
            Request::TimeFaces { n } => {
                let n = n.max(1);
                let temperatures = vec![0.8; engine.levels()];
                engine.sample(1, &temperatures, 0).await?;
                let start = web_time::Instant::now();
                engine.sample(n, &temperatures, 1).await?;
                Response::MsPerFace(start.elapsed().as_secs_f64() * 1e3 / n as f64)
            }
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
