//! The browser demo of RG-Flow: WebGPU (burn-wgpu) with a CPU fallback
//! (burn-flex), running the `rgflow` crate itself — the demo and the trainer
//! share one implementation of the model and of its scale-aware operations.
//!
//! [`engine`] holds every operation without touching the DOM (and is what
//! the wasm-bindgen tests call); [`worker`] runs it in a Web Worker, and `ui`
//! wires the worker's client to the page of `index.html`.

pub mod backend;
pub mod engine;
pub mod error;
pub mod worker;

#[cfg(target_arch = "wasm32")]
mod bench;
#[cfg(target_arch = "wasm32")]
pub mod ui;
#[cfg(target_arch = "wasm32")]
pub mod weights;

pub use engine::{BackendKind, Engine, Face};
pub use error::{Result, WebError};

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
