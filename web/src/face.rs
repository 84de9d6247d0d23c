//! A face as the page and the engine exchange it: pixels and latents on the
//! host (the page draws one and sends it back to be mixed, explored or
//! inpainted).

/// One image together with its latents, both on the host.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Face {
    /// Pixels in `[0, 1]`, `[C, L, L]` flattened.
    pub x01: Vec<f32>,
    /// Latents, `[C, L, L]` flattened (level of a site: `RgFlow::lattice().site_level`).
    pub z: Vec<f32>,
}
