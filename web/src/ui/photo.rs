//! Your photo: upload an image; it is centre-cropped, resized to L×L,
//! encoded and scored, and can then be used in the other panels.

use std::rc::Rc;

use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;
use web_sys::{Event, HtmlInputElement, MouseEvent};

use super::live::Live;
use super::{App, draw_image, ms, now, on, report, status};
use crate::error::{Result, WebError};
use rgflow::pixels::{self, Crop};

pub fn init(app: &Rc<App>) -> Result<Rc<Live>> {
    let elements = &app.page.photo;
    let a = app.clone();
    on(&elements.file, "change", move |e: Event| {
        let Some(file) = e
            .target()
            .and_then(|t| t.dyn_into::<HtmlInputElement>().ok())
            .and_then(|i| i.files())
            .and_then(|f| f.get(0))
        else {
            return;
        };
        let a = a.clone();
        status(&a.page.photo.status, &format!("Reading {}…", file.name()), false);
        wasm_bindgen_futures::spawn_local(async move {
            let result = load(&a, &file).await;
            report(&a.page.photo.status, result);
        });
    });
    let a = app.clone();
    on(&elements.use_photo, "click", move |_: MouseEvent| match a.photo() {
        Some(face) => {
            a.pick(face);
            status(
                &a.page.photo.status,
                "The photo is now the face of the Mix, Inpaint, Explore and Receptive panels",
                false,
            );
        }
        None => status(&a.page.photo.status, "Upload a photo first", true),
    });
    // Nothing to refresh: the panel changes only on upload.
    Ok(Live::new())
}

/// The largest photo accepted: it is read whole into the page's memory.
const MAX_PHOTO_BYTES: f64 = 20e6;

async fn load(app: &App, file: &web_sys::File) -> Result<String> {
    let name = file.name();
    if file.size() > MAX_PHOTO_BYTES {
        return Err(WebError::Input(format!(
            "{name}: {:.1} MB; photos of up to {:.0} MB are accepted",
            file.size() / 1e6,
            MAX_PHOTO_BYTES / 1e6
        )));
    }
    let buffer = JsFuture::from(file.array_buffer()).await.map_err(WebError::from)?;
    let bytes = js_sys::Uint8Array::new(&buffer).to_vec();
    let c = app.engine.config().clone();
    let chw = pixels::decode_and_prepare(&bytes, Crop::CenterSquare, c.image_size, c.channels)
        .map_err(|e| WebError::Input(format!("{name}: {e}")))?;
    let x01: Vec<f32> = chw.iter().map(|&k| rgflow::preprocess::from_level(k)).collect();
    let t = now();
    let (face, bpd) = app.engine.encode(x01).await?;
    draw_image(&app.page.photo.canvas, &face.x01, c.channels, c.image_size);
    app.page.photo.use_photo.set_disabled(false);
    app.set_photo(face);
    Ok(format!("{name}: {bpd:.3} bits/dim (encoded in {} on {})", ms(now() - t), app.backend_label()))
}
