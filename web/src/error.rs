//! The demo's error type: every failure ends as a readable line on the page.

/// What can go wrong in the demo.
#[derive(Debug, thiserror::Error)]
pub enum WebError {
    /// The model crate refused (bad weight file, bad shape, bad settings).
    #[error(transparent)]
    Model(#[from] rgflow::Error),
    /// Fetching or caching the weight file failed.
    #[error("could not fetch {url}: {reason}")]
    Fetch { url: String, reason: String },
    /// A compute backend failed (WebGPU lost, readback failed).
    #[error("backend: {0}")]
    Backend(String),
    /// The engine's worker refused a request (its text as the engine said
    /// it), failed to start, or is gone.
    #[error("{0}")]
    Engine(String),
    /// Bad input from the user (not an image, wrong size).
    #[error("{0}")]
    Input(String),
    /// The page is missing an element the demo needs.
    #[error("page: {0}")]
    Page(String),
}

pub type Result<T> = std::result::Result<T, WebError>;

#[cfg(target_arch = "wasm32")]
impl From<wasm_bindgen::JsValue> for WebError {
    fn from(value: wasm_bindgen::JsValue) -> Self {
        let text = value
            .dyn_ref::<js_sys::Error>()
            .map(|e| String::from(e.message()))
            .or_else(|| value.as_string())
            .unwrap_or_else(|| format!("{value:?}"));
        WebError::Page(text)
    }
}

#[cfg(target_arch = "wasm32")]
use wasm_bindgen::JsCast;
