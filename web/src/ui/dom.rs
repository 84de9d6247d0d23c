//! Thin helpers over web-sys: typed element lookup, events, drawing images.

use wasm_bindgen::prelude::*;
use wasm_bindgen::{Clamped, JsCast};
use web_sys::{CanvasRenderingContext2d, Document, Element, HtmlCanvasElement, ImageData};

use crate::error::{Result, WebError};

pub fn document() -> Document {
    web_sys::window().expect("a window").document().expect("a document")
}

/// The element with this id, as type `T`.
pub fn by_id<T: JsCast>(id: &str) -> Result<T> {
    document()
        .get_element_by_id(id)
        .ok_or_else(|| WebError::Page(format!("element #{id} is missing")))?
        .dyn_into::<T>()
        .map_err(|_| WebError::Page(format!("element #{id} has the wrong type")))
}

/// Milliseconds since the page started (high resolution).
pub fn now() -> f64 {
    web_sys::window().and_then(|w| w.performance()).map(|p| p.now()).unwrap_or(0.0)
}

/// Calls `handler` on every `event` of `target`, for the page's lifetime.
pub fn on<E: JsCast + 'static>(target: &web_sys::EventTarget, event: &str, handler: impl FnMut(E) + 'static) {
    let mut handler = handler;
    let closure = Closure::<dyn FnMut(web_sys::Event)>::new(move |e: web_sys::Event| {
        if let Ok(e) = e.dyn_into::<E>() {
            handler(e)
        }
    });
    target.add_event_listener_with_callback(event, closure.as_ref().unchecked_ref()).expect("listener");
    closure.forget();
}

pub fn create(tag: &str) -> Element {
    document().create_element(tag).expect("element")
}

fn context(canvas: &HtmlCanvasElement) -> CanvasRenderingContext2d {
    canvas.get_context("2d").ok().flatten().expect("2d context").unchecked_into()
}

/// Draws `tiles` (`[C, L, L]` values in `[0, 1]`, C = 1 or 3) in a grid of
/// `cols` columns with a 1-pixel gap, resizing the canvas to fit.
pub fn draw_tiles(canvas: &HtmlCanvasElement, tiles: &[&[f32]], channels: usize, size: usize, cols: usize) {
    let cols = cols.max(1).min(tiles.len().max(1));
    let rows = tiles.len().div_ceil(cols).max(1);
    let (w, h) = (cols * (size + 1) - 1, rows * (size + 1) - 1);
    if canvas.width() as usize != w || canvas.height() as usize != h {
        canvas.set_width(w as u32);
        canvas.set_height(h as u32);
    }
    let mut rgba = vec![255u8; w * h * 4];
    let plane = size * size;
    for (t, tile) in tiles.iter().enumerate() {
        let (x0, y0) = ((t % cols) * (size + 1), (t / cols) * (size + 1));
        for p in 0..plane {
            let o = ((y0 + p / size) * w + x0 + p % size) * 4;
            for c in 0..3 {
                let v = tile[(if channels == 1 { 0 } else { c }) * plane + p];
                rgba[o + c] = rgflow::preprocess::to_level(v) as u8;
            }
        }
    }
    put(canvas, &rgba, w, h);
}

/// Draws one image.
pub fn draw_image(canvas: &HtmlCanvasElement, x01: &[f32], channels: usize, size: usize) {
    draw_tiles(canvas, &[x01], channels, size, 1);
}

/// Draws a signed field as a heat map (red +, blue −), scaled by its largest magnitude.
pub fn draw_field(canvas: &HtmlCanvasElement, field: &[f32], channels: usize, size: usize) {
    let plane = size * size;
    let summed: Vec<f32> = (0..plane).map(|p| (0..channels).map(|c| field[c * plane + p]).sum()).collect();
    let peak = summed.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
    let mut rgba = vec![255u8; plane * 4];
    for (p, v) in summed.iter().enumerate() {
        let a = (v.abs() / peak).sqrt();
        let fade = (255.0 * (1.0 - a)) as u8;
        let (r, g, b) = if *v >= 0.0 { (255, fade, fade) } else { (fade, fade, 255) };
        rgba[p * 4..p * 4 + 3].copy_from_slice(&[r, g, b]);
    }
    canvas.set_width(size as u32);
    canvas.set_height(size as u32);
    put(canvas, &rgba, size, size);
}

fn put(canvas: &HtmlCanvasElement, rgba: &[u8], w: usize, h: usize) {
    let data = ImageData::new_with_u8_clamped_array_and_sh(Clamped(rgba), w as u32, h as u32).expect("image data");
    context(canvas).put_image_data(&data, 0.0, 0.0).expect("put image data");
}

/// Canvas pixel under a pointer event, or `None` outside.
pub fn canvas_pixel(canvas: &HtmlCanvasElement, client_x: f64, client_y: f64) -> Option<(usize, usize)> {
    let rect = canvas.get_bounding_client_rect();
    let x = (client_x - rect.left()) / rect.width() * canvas.width() as f64;
    let y = (client_y - rect.top()) / rect.height() * canvas.height() as f64;
    (x >= 0.0 && y >= 0.0 && x < canvas.width() as f64 && y < canvas.height() as f64)
        .then_some((x as usize, y as usize))
}
