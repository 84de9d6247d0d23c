//! Which compute backend runs the model, and (with the `engine` feature, in
//! the worker) picking its device: WebGPU when the browser has an adapter,
//! else burn-flex on the CPU — saying why it fell back.

#[cfg(feature = "engine")]
use burn::prelude::*;

/// Which compute backend runs the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum BackendKind {
    /// burn-wgpu on the browser's WebGPU (or native wgpu).
    WebGpu,
    /// burn-flex on the CPU (single-threaded in wasm).
    Cpu,
}

impl BackendKind {
    pub fn label(self) -> &'static str {
        match self {
            BackendKind::WebGpu => "WebGPU",
            BackendKind::Cpu => "CPU (burn-flex)",
        }
    }
}

#[cfg(feature = "engine")]
/// The chosen device, its kind, and the reason when WebGPU was not used.
pub struct Chosen {
    pub device: Device,
    pub kind: BackendKind,
    pub fallback_reason: Option<String>,
}

#[cfg(feature = "engine")]
/// What the caller wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preference {
    /// WebGPU if it works, else the CPU.
    Auto,
    /// The CPU, even where WebGPU exists (`?backend=cpu`).
    Cpu,
}

impl BackendKind {
    /// The backend `?backend=` names (`cpu` or `webgpu`), if any.
    pub fn from_query(value: Option<&str>) -> Option<Self> {
        match value {
            Some("cpu") => Some(BackendKind::Cpu),
            Some("webgpu") => Some(BackendKind::WebGpu),
            _ => None,
        }
    }
}

#[cfg(feature = "engine")]
/// Initialises WebGPU asynchronously (a browser cannot block) or falls back.
pub async fn choose(preference: Preference) -> Chosen {
    let cpu = |reason: String| Chosen { device: Device::flex(), kind: BackendKind::Cpu, fallback_reason: Some(reason) };
    if preference == Preference::Cpu {
        return cpu("the CPU backend was asked for".into());
    }
    if let Some(reason) = missing_webgpu() {
        return cpu(reason);
    }
    #[cfg(feature = "webgpu")]
    match Device::wgpu_options().init_async().await {
        Ok(device) => Chosen { device, kind: BackendKind::WebGpu, fallback_reason: None },
        Err(e) => cpu(format!("WebGPU did not start ({e})")),
    }
    #[cfg(not(feature = "webgpu"))]
    cpu("this engine is built for the CPU only".into())
}

/// Why WebGPU cannot work here, if that is known before asking for an adapter.
/// (The global scope's navigator: a window's or, in the engine's worker, a
/// worker's.)
#[cfg(target_arch = "wasm32")]
pub fn missing_webgpu() -> Option<String> {
    let navigator = js_sys::Reflect::get(&js_sys::global(), &"navigator".into()).ok()?;
    let gpu = js_sys::Reflect::get(&navigator, &"gpu".into()).ok()?;
    (gpu.is_undefined() || gpu.is_null()).then(|| "this browser has no WebGPU (navigator.gpu is missing)".to_string())
}

#[cfg(not(target_arch = "wasm32"))]
pub fn missing_webgpu() -> Option<String> {
    None
}
