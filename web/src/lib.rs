//! The browser demo of RG-Flow: WebGPU (burn-wgpu) with a CPU fallback
//! (burn-flex), running the `rgflow` crate itself — the demo and the trainer
//! share one implementation of the model and of its scale-aware operations.
//!
//! [`engine`] holds every operation without touching the DOM (and is what
//! the wasm-bindgen tests call); [`worker`] runs it in a Web Worker, and `ui`
//! wires the worker's client to the page of `index.html`.
//!
//! The `engine` feature brings the model's compute on the CPU: the engine
//! and the worker's side; `webgpu` (on by default) adds WebGPU. The page's
//! binary is built with neither (`data-cargo-no-default-features` in
//! `index.html`) and the CPU worker's without `webgpu`, so their modules
//! carry none of CubeCL: it registers its kernel builders from start-up
//! constructors, which keeps all of them in any binary that merely links it.

pub mod backend;
#[cfg(feature = "engine")]
pub mod engine;
pub mod error;
pub mod face;
pub mod worker;

#[cfg(target_arch = "wasm32")]
mod bench;
#[cfg(target_arch = "wasm32")]
pub mod ui;
#[cfg(target_arch = "wasm32")]
pub mod weights;

pub use backend::BackendKind;
#[cfg(feature = "engine")]
pub use engine::Engine;
pub use error::{Result, WebError};
pub use face::Face;

/// Entry point of the page (called by the binary's `main`).
#[cfg(target_arch = "wasm32")]
pub fn start() {
    std::panic::set_hook(Box::new(|info| {
        let text = format!("The demo crashed: {info}");
        web_sys::console::error_1(&text.clone().into());
        ui::page_status(&text, true);
    }));
    wasm_bindgen_futures::spawn_local(ui::start());
}
