//! The engine in a Web Worker: the page's main thread only draws and takes
//! input, while the model runs in the worker (its own wasm module, built by
//! trunk from the `rgflow-worker` binary), so the page stays responsive
//! during a batch of faces or an inpainting stroke on either backend.
//!
//! [`protocol`] is what crosses between them, [`host`] answers requests (and
//! runs natively in tests), `serve` is the worker's message loop and
//! `client` the page's [`Engine`](crate::Engine)-like view of the worker.

#[cfg(feature = "engine")]
pub mod host;
pub mod protocol;

#[cfg(target_arch = "wasm32")]
pub mod client;
#[cfg(all(feature = "engine", target_arch = "wasm32"))]
pub mod serve;
