//! The engine's Web Worker with WebGPU (built by `trunk` beside the page's
//! binary, from a `<link data-type="worker">` in `index.html`); the loop
//! lives in the library.

rgflow_web::worker_main!();
