//! The engine's Web Worker for the CPU backend only: built without the
//! `webgpu` feature, so it carries no CubeCL (2 MB against 9.5, and none of
//! CubeCL's start-up constructors) and starts sooner; the page's first faces
//! come from it unless WebGPU is forced. The loop lives in the library.

rgflow_web::worker_main!();
