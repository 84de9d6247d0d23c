//! The engine in a Web Worker: the page's main thread only draws and takes
//! input, while the model runs in a worker (its own wasm module, built by
//! trunk from the `rgflow-worker-cpu` binary for the CPU backend or from
//! `rgflow-worker` for WebGPU), so the page stays responsive during a batch
//! of faces or an inpainting stroke on either backend.
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

/// The `main` of the engine's worker binaries (`rgflow-worker` with WebGPU,
/// `rgflow-worker-cpu` without): runs the module's static constructors once,
/// then serves the page.
///
/// Why the constructors: CubeCL registers thousands of kernel builders
/// through `inventory`, and a wasm binary that never calls the linker's
/// `__wasm_call_ctors` is linked as a "command", whose every export — each
/// of wasm-bindgen's allocations and table updates a message causes — re-runs
/// all of them (~70 ms at start-up, and again on each message). Calling it
/// from `main` links the module as a library that runs them only there. A
/// macro, so that the call is in the binaries alone: a test binary linking
/// this library must stay a command, or nothing would run them at all.
#[macro_export]
macro_rules! worker_main {
    () => {
        #[cfg(target_arch = "wasm32")]
        unsafe extern "C" {
            fn __wasm_call_ctors();
        }

        fn main() {
            #[cfg(target_arch = "wasm32")]
            {
                // SAFETY: the linker defines `__wasm_call_ctors`; it runs here
                // once, first, before anything reads what the constructors
                // register (`inventory` documents this way of running them).
                unsafe { __wasm_call_ctors() };
                $crate::worker::serve::serve();
            }
            #[cfg(not(target_arch = "wasm32"))]
            eprintln!("the browser demo's engine worker runs in a browser: run `trunk serve` at the repository root");
        }
    };
}
