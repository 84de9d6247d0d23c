//! The engine's Web Worker (built by `trunk` beside the page's binary, from
//! the `<link data-type="worker">` in `index.html`); the loop lives in the library.

fn main() {
    #[cfg(target_arch = "wasm32")]
    rgflow_web::worker::serve::serve();
    #[cfg(not(target_arch = "wasm32"))]
    eprintln!("rgflow-worker is the browser demo's engine worker: run `trunk serve` at the repository root");
}
