//! The page's side: an [`EngineWorker`] spawns the engine's Web Worker and
//! pairs each request with its answer; an [`EngineClient`] is a loaded model
//! seen through it, with the same operations as [`crate::Engine`] but every
//! one computed off the main thread, so the page keeps drawing and taking
//! input while a batch or an inpainting stroke runs.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::{Future, poll_fn};
use std::rc::Rc;
use std::task::{Poll, Waker};

use js_sys::Uint8Array;
use rgflow::{MeraLattice, RgFlowConfig};
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use web_sys::{Event, MessageEvent, Worker, WorkerOptions, WorkerType};

use super::protocol::{Envelope, FromWorker, ModelInfo, Request, Response, StrokeInfo, decode, encode};
use crate::backend::BackendKind;
use crate::error::{Result, WebError};
use crate::face::Face;

/// The workers' loaders, written by trunk next to the page (`data-loader-shim`
/// on the workers' `<link>`s in `index.html`): the engine with WebGPU and the
/// CPU backend, and the CPU backend alone (a quarter of the download, and it
/// starts sooner).
pub const WEBGPU_WORKER_URL: &str = "./rgflow-worker_loader.js";
pub const CPU_WORKER_URL: &str = "./rgflow-worker-cpu_loader.js";

/// Where one answer will be put, and who waits for it.
#[derive(Default)]
struct Slot {
    reply: Option<Result<Response>>,
    waker: Option<Waker>,
}

impl Slot {
    fn fill(&mut self, reply: Result<Response>) {
        self.reply = Some(reply);
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }
}

/// The connection's state, shared with the worker's event handlers.
#[derive(Default)]
struct Link {
    /// Requests awaiting their answer, by id.
    pending: HashMap<u32, Rc<RefCell<Slot>>>,
    /// Messages posted before the worker listens (it drops those), sent on `Ready`.
    backlog: Vec<Uint8Array>,
    ready: bool,
    /// When the worker began to listen (ms from navigation start).
    ready_at: Option<f64>,
    /// Why the worker is gone, once it is: every later request fails with it.
    gone: Option<String>,
}

impl Link {
    /// The worker is gone: every waiting request fails with `why`.
    fn fail(&mut self, why: String) {
        for (_, slot) in self.pending.drain() {
            slot.borrow_mut().fill(Err(WebError::Engine(why.clone())));
        }
        self.backlog.clear();
        self.gone = Some(why);
    }
}

/// The engine's Web Worker and the requests in flight to it.
pub struct EngineWorker {
    worker: Worker,
    link: Rc<RefCell<Link>>,
    next_id: Cell<u32>,
    _on_message: Closure<dyn Fn(MessageEvent)>,
    _on_error: Closure<dyn Fn(Event)>,
}

fn post(worker: &Worker, bytes: &Uint8Array) -> Result<()> {
    worker.post_message_with_transfer(bytes, &js_sys::Array::of1(&bytes.buffer())).map_err(WebError::from)
}

impl EngineWorker {
    /// Starts the worker at `url` (an ES module). Requests may be sent at
    /// once: they wait until the worker has compiled its wasm and listens.
    /// `on_crash` hears why, if the worker dies later.
    pub fn spawn(url: &str, on_crash: impl Fn(&str) + 'static) -> Result<Rc<Self>> {
        let options = WorkerOptions::new();
        options.set_type(WorkerType::Module);
        let worker = Worker::new_with_options(url, &options).map_err(|e| {
            WebError::Engine(format!("the engine's worker ({url}) did not start: {}", WebError::from(e)))
        })?;
        let link = Rc::new(RefCell::new(Link::default()));
        let on_crash = Rc::new(on_crash);
        let on_message = {
            let (link, worker, on_crash) = (link.clone(), worker.clone(), on_crash.clone());
            Closure::<dyn Fn(MessageEvent)>::new(move |event: MessageEvent| {
                let bytes = Uint8Array::new(&event.data()).to_vec();
                let mut link = link.borrow_mut();
                match decode::<FromWorker>(&bytes, "message from the engine's worker") {
                    Ok(FromWorker::Ready) => {
                        link.ready = true;
                        link.ready_at = Some(crate::ui::now());
                        for message in std::mem::take(&mut link.backlog) {
                            if let Err(e) = post(&worker, &message) {
                                link.fail(format!("sending a request to the engine's worker: {e}"));
                                break;
                            }
                        }
                    }
                    Ok(FromWorker::Reply(Envelope { id, body })) => {
                        if let Some(slot) = link.pending.remove(&id) {
                            slot.borrow_mut().fill(body.map_err(WebError::Engine));
                        }
                    }
                    Ok(FromWorker::Crashed(why)) => {
                        link.fail(why.clone());
                        drop(link);
                        on_crash(&why);
                    }
                    Err(e) => link.fail(e.to_string()),
                }
            })
        };
        let on_error = {
            let (link, on_crash, url) = (link.clone(), on_crash.clone(), url.to_string());
            Closure::<dyn Fn(Event)>::new(move |event: Event| {
                event.prevent_default();
                let message = js_sys::Reflect::get(&event, &"message".into()).ok().and_then(|m| m.as_string());
                let mut link = link.borrow_mut();
                let why = match (link.ready, message) {
                    (false, Some(m)) if !m.is_empty() => format!("the engine's worker ({url}) did not start: {m}"),
                    (false, _) => format!("the engine's worker ({url}) did not load"),
                    (true, m) => format!("the engine's worker failed: {}", m.unwrap_or_default()),
                };
                link.fail(why.clone());
                drop(link);
                on_crash(&why);
            })
        };
        worker.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
        worker.set_onerror(Some(on_error.as_ref().unchecked_ref()));
        Ok(Rc::new(Self { worker, link, next_id: Cell::new(0), _on_message: on_message, _on_error: on_error }))
    }

    /// Sends a request now and returns its answer's future (so several may
    /// be in flight: the worker answers them in order).
    pub fn call(&self, request: Request) -> impl Future<Output = Result<Response>> + 'static {
        let slot = Rc::new(RefCell::new(Slot::default()));
        let id = self.next_id.get();
        self.next_id.set(id.wrapping_add(1));
        let sent = {
            let mut link = self.link.borrow_mut();
            match &link.gone {
                Some(why) => Err(WebError::Engine(why.clone())),
                None => {
                    let bytes = Uint8Array::from(encode(&Envelope { id, body: request }).as_slice());
                    link.pending.insert(id, slot.clone());
                    if link.ready {
                        post(&self.worker, &bytes)
                    } else {
                        link.backlog.push(bytes);
                        Ok(())
                    }
                }
            }
        };
        if sent.is_err() {
            self.link.borrow_mut().pending.remove(&id);
        }
        async move {
            sent?;
            poll_fn(|cx| {
                let mut slot = slot.borrow_mut();
                match slot.reply.take() {
                    Some(reply) => Poll::Ready(reply),
                    None => {
                        slot.waker = Some(cx.waker().clone());
                        Poll::Pending
                    }
                }
            })
            .await
        }
    }

    /// When the worker began to listen (its wasm compiled), in ms from
    /// navigation start; `None` before.
    pub fn ready_at(&self) -> Option<f64> {
        self.link.borrow().ready_at
    }

    /// Starts the compute backend (`forced`: that one, as `?backend=` asks;
    /// else WebGPU where it works and the worker has it): which one runs,
    /// and why it is not WebGPU.
    pub fn start(
        &self,
        forced: Option<BackendKind>,
    ) -> impl Future<Output = Result<(BackendKind, Option<String>)>> + 'static {
        let reply = self.call(Request::Start { forced });
        async move {
            match reply.await? {
                Response::Started { backend, fallback_reason } => Ok((backend, fallback_reason)),
                other => Err(unexpected("Start", &other)),
            }
        }
    }
}

fn unexpected(request: &str, response: &Response) -> WebError {
    let name = format!("{response:?}");
    let name = name.split(['(', ' ', '{']).next().unwrap_or_default();
    WebError::Backend(format!("the engine answered a {request} request with {name}"))
}

/// Asks and unpacks the one answer that fits (a macro: each arm binds its own fields).
macro_rules! ask {
    ($worker:expr, $request:expr, $name:literal, $pattern:pat => $value:expr) => {
        match $worker.call($request).await? {
            $pattern => Ok($value),
            other => Err(unexpected($name, &other)),
        }
    };
}

impl Drop for EngineWorker {
    fn drop(&mut self) {
        // A worker the page no longer talks to (the slower backend's, after
        // the start-up race) gives its memory back; its handlers go first, so
        // a message already queued finds no dropped closure.
        self.worker.set_onmessage(None);
        self.worker.set_onerror(None);
        self.worker.terminate();
    }
}

/// A loaded model, computed in the worker.
pub struct EngineClient {
    /// Swapped once at most, by [`Self::switch_to`].
    worker: RefCell<Rc<EngineWorker>>,
    config: RgFlowConfig,
    lattice: MeraLattice,
    num_parameters: usize,
    backend: std::cell::Cell<BackendKind>,
}

impl EngineClient {
    /// Loads a weight file in the worker.
    pub async fn load(worker: &Rc<EngineWorker>, bytes: Vec<u8>, source: &str) -> Result<Self> {
        let request = Request::Load { bytes, source: source.to_string() };
        let ModelInfo { config_json, num_parameters, backend } =
            ask!(worker, request, "Load", Response::Loaded(info) => info)?;
        let config: RgFlowConfig = serde_json::from_str(&config_json)
            .map_err(|e| WebError::Backend(format!("the engine's model config: {e}")))?;
        let lattice = MeraLattice::new(config.image_size, config.kernel_size);
        Ok(Self {
            worker: RefCell::new(worker.clone()),
            config,
            lattice,
            num_parameters,
            backend: std::cell::Cell::new(backend),
        })
    }

    /// From now on, the model `other` has loaded (the same weights) answers,
    /// on its backend; this one's worker ends once its last stroke has.
    pub fn switch_to(&self, other: EngineClient) {
        self.worker.replace(other.worker.into_inner());
        self.backend.set(other.backend.get());
    }

    fn worker(&self) -> Rc<EngineWorker> {
        self.worker.borrow().clone()
    }

    pub fn config(&self) -> &RgFlowConfig {
        &self.config
    }

    pub fn lattice(&self) -> &MeraLattice {
        &self.lattice
    }

    pub fn num_parameters(&self) -> usize {
        self.num_parameters
    }

    pub fn backend(&self) -> BackendKind {
        self.backend.get()
    }

    /// Number of levels (index 0 = finest).
    pub fn levels(&self) -> usize {
        self.lattice.levels()
    }

    /// Milliseconds per face on this worker's backend: a warm-up face, then
    /// `n` faces timed in the worker.
    pub async fn ms_per_face(&self, n: usize) -> Result<f64> {
        ask!(self.worker(), Request::TimeFaces { n }, "TimeFaces", Response::MsPerFace(ms) => ms)
    }

    /// `n` faces from the prior (see [`crate::Engine::sample`]).
    pub async fn sample(&self, n: usize, temperatures: &[f64], seed: u64) -> Result<Vec<Face>> {
        let request = Request::Sample { n, temperatures: temperatures.to_vec(), seed };
        ask!(self.worker(), request, "Sample", Response::Faces(faces) => faces)
    }

    /// An image encoded and scored: the face and its bits per dimension.
    pub async fn encode(&self, x01: Vec<f32>) -> Result<(Face, f64)> {
        ask!(self.worker(), Request::Encode { x01 }, "Encode", Response::Scored { face, bits_per_dim } => (face, bits_per_dim))
    }

    /// Mixtures of `a` (levels `≥ λ`) and `b` for every `λ`: `levels + 1` images.
    pub async fn mix_strip(&self, a: &Face, b: &Face) -> Result<Vec<Vec<f32>>> {
        let request = Request::MixStrip { a: a.clone(), b: b.clone() };
        ask!(self.worker(), request, "MixStrip", Response::Images(images) => images)
    }

    /// One level's latents of a face, `[C·sites]`.
    pub async fn level_latents(&self, face: &Face, level: usize) -> Result<Vec<f32>> {
        let request = Request::LevelLatents { face: face.clone(), level };
        ask!(self.worker(), request, "LevelLatents", Response::Values(values) => values)
    }

    /// The face with one level's latents replaced.
    pub async fn with_level_latents(&self, face: &Face, level: usize, values: Vec<f32>) -> Result<Face> {
        let request = Request::WithLevelLatents { face: face.clone(), level, values };
        ask!(self.worker(), request, "WithLevelLatents", Response::Face(face) => face)
    }

    /// A closed random walk of one level's latents: `frames` images.
    pub async fn random_walk(&self, face: &Face, level: usize, frames: usize, seed: u64) -> Result<Vec<Vec<f32>>> {
        let request = Request::RandomWalk { face: face.clone(), level, frames, seed };
        ask!(self.worker(), request, "RandomWalk", Response::Images(images) => images)
    }

    /// `∂x/∂z` of the latent at `site` (row-major) and `channel`: `[C, L, L]`.
    pub async fn receptive_field(&self, face: &Face, site: usize, channel: usize) -> Result<Vec<f32>> {
        let request = Request::ReceptiveField { face: face.clone(), site, channel };
        ask!(self.worker(), request, "ReceptiveField", Response::Values(values) => values)
    }

    /// Starts drawing a completion of the sites marked in `unknown` (`[L·L]`)
    /// with the Inpaint panel's settings (see [`crate::Engine::stroke_options`]).
    pub async fn stroke(
        &self,
        face: &Face,
        unknown: &[bool],
        temperature: f64,
        rounds: usize,
        seed: u64,
    ) -> Result<Stroke> {
        let request = Request::StartStroke { face: face.clone(), unknown: unknown.to_vec(), temperature, rounds, seed };
        // The stroke's sampler lives in this worker, whatever answers later.
        let worker = self.worker();
        let info = ask!(worker, request, "StartStroke", Response::StrokeStarted(info) => info)?;
        Ok(Stroke { worker, info })
    }
}

/// An inpainting stroke's sampler, living in the worker until this is dropped.
pub struct Stroke {
    worker: Rc<EngineWorker>,
    info: StrokeInfo,
}

impl Stroke {
    /// Runs `rounds` more rounds: the completion as it stands, `[C, L, L]` in `[0, 1]`.
    ///
    /// The request is sent when this is called, not when the answer is
    /// awaited: ask for several before awaiting the first, and the worker
    /// runs them back to back while the page draws each answer.
    pub fn rounds(&self, rounds: usize) -> impl Future<Output = Result<Vec<f32>>> + 'static {
        let answer = self.worker.call(Request::StrokeRounds { stroke: self.info.id, rounds });
        async move {
            match answer.await? {
                Response::Values(values) => Ok(values),
                other => Err(unexpected("StrokeRounds", &other)),
            }
        }
    }

    /// A stroke's `rounds`, asked for all at once in steps of `every` (the
    /// last one shorter): each completion as its step ends, in order.
    pub fn rounds_in_steps(
        &self,
        rounds: usize,
        every: usize,
    ) -> Vec<impl Future<Output = Result<Vec<f32>>> + 'static> {
        let every = every.max(1);
        (0..rounds).step_by(every).map(|done| self.rounds(every.min(rounds - done))).collect()
    }

    /// Blocks one round re-runs (encode and decode of the causal cone).
    pub fn blocks_per_round(&self) -> usize {
        self.info.blocks_per_round
    }

    /// Blocks of one pass of the whole network.
    pub fn blocks_total(&self) -> usize {
        self.info.blocks_total
    }
}

impl Drop for Stroke {
    fn drop(&mut self) {
        // Sent now; nobody needs the answer.
        drop(self.worker.call(Request::EndStroke { stroke: self.info.id }));
    }
}
