//! The browser demo of RG-Flow (wasm, WebGPU with a CPU fallback).
//!
//! It will run the `rgflow` crate itself, so the demo and the trainer share
//! one implementation of the model and of its scale-aware operations.
