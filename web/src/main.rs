//! The page's wasm binary (built by `trunk`); everything lives in the library.

fn main() {
    #[cfg(target_arch = "wasm32")]
    rgflow_web::start();
    #[cfg(not(target_arch = "wasm32"))]
    eprintln!("rgflow-web is the browser demo: run `trunk serve` at the repository root");
}
