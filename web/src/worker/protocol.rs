//! The messages between the page and the engine's Web Worker: what the page
//! asks ([`Request`]) and what the worker answers ([`Response`]), each in an
//! [`Envelope`] carrying the id that pairs an answer with its question.
//!
//! Messages travel as postcard bytes in one transferred `Uint8Array` (no
//! copy, no JSON of thousands of floats); [`encode`] and [`decode`] are the
//! only (de)serialisation, so both ends agree by construction.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::backend::BackendKind;
use crate::error::{Result, WebError};
use crate::face::Face;

/// A question from the page, answered by one [`Response`] (or an error).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Request {
    /// Starts the compute backend: `forced` (`?backend=`), or WebGPU where
    /// it works and the worker has it (else the CPU). Answered by
    /// [`Response::Started`].
    Start { forced: Option<BackendKind> },
    /// Loads a weight file (as written by `trainer export`); `source` names
    /// it in errors. Answered by [`Response::Loaded`].
    Load {
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
        source: String,
    },
    /// `n` faces from the prior, one temperature per level: [`Response::Faces`].
    Sample { n: usize, temperatures: Vec<f64>, seed: u64 },
    /// Times the backend: one face to warm up (kernels compile on first
    /// use), then `n` faces, timed in the worker so that other requests in
    /// its queue do not count: [`Response::MsPerFace`].
    TimeFaces { n: usize },
    /// Encodes and scores an image in `[0, 1]`: [`Response::Scored`].
    Encode { x01: Vec<f32> },
    /// The mixtures of `a` (coarse levels) and `b` (fine) for every cut-off:
    /// [`Response::Images`].
    MixStrip { a: Face, b: Face },
    /// One level's latents of a face: [`Response::Values`].
    LevelLatents { face: Face, level: usize },
    /// The face with one level's latents replaced: [`Response::Face`].
    WithLevelLatents { face: Face, level: usize, values: Vec<f32> },
    /// A closed random walk of one level's latents: [`Response::Images`].
    RandomWalk { face: Face, level: usize, frames: usize, seed: u64 },
    /// `∂x/∂z` of one latent: [`Response::Values`].
    ReceptiveField { face: Face, site: usize, channel: usize },
    /// Starts an inpainting stroke: a sampler of completions of the sites
    /// marked in `unknown` (`[L·L]`), kept in the worker between rounds.
    /// Answered by [`Response::StrokeStarted`].
    StartStroke { face: Face, unknown: Vec<bool>, temperature: f64, rounds: usize, seed: u64 },
    /// Runs `rounds` more sampler rounds of a stroke: [`Response::Values`]
    /// (the completion as it stands, `[C, L, L]`).
    StrokeRounds { stroke: u32, rounds: usize },
    /// Drops a stroke's sampler: [`Response::Ended`].
    EndStroke { stroke: u32 },
}

/// The worker's answer to a [`Request`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Response {
    /// The backend runs; `fallback_reason` says why it is not WebGPU.
    Started {
        backend: BackendKind,
        fallback_reason: Option<String>,
    },
    /// The weights loaded.
    Loaded(ModelInfo),
    Faces(Vec<Face>),
    Face(Face),
    /// An encoded image and its bits per dimension.
    Scored {
        face: Face,
        bits_per_dim: f64,
    },
    /// Several images, `[C, L, L]` flattened each.
    Images(Vec<Vec<f32>>),
    Values(Vec<f32>),
    StrokeStarted(StrokeInfo),
    Ended,
    /// Milliseconds per face of a timed batch.
    MsPerFace(f64),
}

/// What the page needs to know of a loaded model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    /// The model's `RgFlowConfig` as JSON (burn's `Config` format, the one
    /// the weight file holds).
    pub config_json: String,
    pub num_parameters: usize,
    /// The backend the model runs on.
    pub backend: BackendKind,
}

/// A started stroke: its id and how much of the network a round re-runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StrokeInfo {
    pub id: u32,
    /// Blocks one round re-runs (encode and decode of the causal cone).
    pub blocks_per_round: usize,
    /// Blocks of one pass of the whole network.
    pub blocks_total: usize,
}

/// A message with the id of the request it belongs to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope<T> {
    pub id: u32,
    pub body: T,
}

/// Everything the worker posts to the page.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum FromWorker {
    /// The worker listens (messages posted before this would be lost).
    Ready,
    /// The answer to request `id`: the response, or the error's text.
    Reply(Envelope<std::result::Result<Response, String>>),
    /// The worker panicked; it takes no more requests.
    Crashed(String),
}

/// A message as bytes.
pub fn encode<T: Serialize>(message: &T) -> Vec<u8> {
    // Every message type here is plain data: serialising cannot fail.
    postcard::to_allocvec(message).expect("protocol messages serialise")
}

/// Bytes as a message; `what` names the message in the error.
pub fn decode<T: DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T> {
    postcard::from_bytes(bytes).map_err(|e| WebError::Backend(format!("malformed {what} ({} bytes): {e}", bytes.len())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_survive_the_round_trip() {
        let face = Face { x01: vec![0.25, 1.0], z: vec![-1.5, f32::MAX] };
        let requests = [
            Request::Start { forced: Some(BackendKind::Cpu) },
            Request::Start { forced: None },
            Request::Load { bytes: vec![0, 1, 255], source: "models/x.rgflow".into() },
            Request::Sample { n: 16, temperatures: vec![0.6, 0.9], seed: u64::MAX },
            Request::TimeFaces { n: 2 },
            Request::StartStroke {
                face: face.clone(),
                unknown: vec![true, false],
                temperature: 0.8,
                rounds: 8,
                seed: 3,
            },
        ];
        for request in requests {
            let envelope = Envelope { id: 7, body: request };
            assert_eq!(decode::<Envelope<Request>>(&encode(&envelope), "request").unwrap(), envelope);
        }
        let replies = [
            FromWorker::Ready,
            FromWorker::Reply(Envelope { id: 1, body: Ok(Response::Faces(vec![face.clone()])) }),
            FromWorker::Reply(Envelope { id: 2, body: Err("level 9 is not a level".into()) }),
            FromWorker::Reply(Envelope {
                id: 3,
                body: Ok(Response::Started { backend: BackendKind::Cpu, fallback_reason: Some("asked".into()) }),
            }),
            FromWorker::Crashed("boom".into()),
        ];
        for reply in replies {
            assert_eq!(decode::<FromWorker>(&encode(&reply), "reply").unwrap(), reply);
        }
    }

    #[test]
    fn malformed_bytes_are_an_error_naming_the_message() {
        let bytes = encode(&Envelope { id: 1, body: Request::Sample { n: 2, temperatures: vec![1.0], seed: 0 } });
        let error = decode::<Envelope<Request>>(&bytes[..bytes.len() - 3], "request").unwrap_err();
        assert!(error.to_string().contains("malformed request"), "{error}");
    }
}
