//! Mix panel: levels `≥ λ` from face A (the picked one), finer levels from
//! face B (a seed or the uploaded photo); the strip shows every λ.

use std::cell::RefCell;
use std::rc::Rc;

use web_sys::{Event, HtmlCanvasElement, HtmlInputElement, HtmlSelectElement};

use super::live::Live;
use super::{App, by_id, draw_image, draw_tiles, input_value, ms, now, on, report};
use crate::engine::Face;
use crate::error::{Result, WebError};

/// The strip for one (A, B) pair, kept while only λ moves.
struct Strip {
    key: (u64, String),
    images: Vec<Vec<f32>>,
}

pub fn init(app: &Rc<App>) -> Result<Rc<Live>> {
    let levels = app.engine.levels();
    let lambda: HtmlInputElement = by_id("mix-lambda")?;
    lambda.set_max(&levels.to_string());
    lambda.set_value(&(levels / 2).to_string());
    super::dom::set_text("mix-lambda-out", &(levels / 2).to_string());
    let live = Live::new();
    let cache: Rc<RefCell<Option<Strip>>> = Rc::new(RefCell::new(None));
    let a = app.clone();
    live.set(move || {
        let (a, cache) = (a.clone(), cache.clone());
        async move {
            let result = update(&a, &cache).await;
            report("mix-status", result);
        }
    });
    for id in ["mix-lambda", "mix-b-seed", "mix-b-source"] {
        let target: web_sys::EventTarget = by_id(id)?;
        let l = live.clone();
        on(&target, "input", move |_: Event| {
            if let Some(v) = input_value("mix-lambda") {
                super::dom::set_text("mix-lambda-out", &v);
            }
            l.trigger();
        });
    }
    Ok(live)
}

async fn face_b(app: &App, source: &str, seed: u64) -> Result<Face> {
    if source == "photo" {
        return app.photo().ok_or_else(|| WebError::Input("no photo yet: upload one in “Your photo”".into()));
    }
    Ok(app.engine.sample(1, &app.temperatures(), seed).await?.remove(0))
}

async fn update(app: &App, cache: &RefCell<Option<Strip>>) -> Result<String> {
    let c = app.engine.config().clone();
    let lambda = input_value("mix-lambda").and_then(|v| v.parse::<usize>().ok()).unwrap_or(0).min(app.engine.levels());
    let source = by_id::<HtmlSelectElement>("mix-b-source")?.value();
    let seed = input_value("mix-b-seed").and_then(|v| v.trim().parse::<u64>().ok()).unwrap_or(1);
    let key = (app.generation(), format!("{source}/{seed}/{:?}", app.temperatures()));
    let t = now();
    let fresh = cache.borrow().as_ref().is_none_or(|s| s.key != key);
    if fresh {
        let a = app.picked();
        let b = face_b(app, &source, seed).await?;
        draw_image(&by_id::<HtmlCanvasElement>("mix-a")?, &a.x01, c.channels, c.image_size);
        draw_image(&by_id::<HtmlCanvasElement>("mix-b")?, &b.x01, c.channels, c.image_size);
        let images = app.engine.mix_strip(&a, &b).await?;
        let tiles: Vec<&[f32]> = images.iter().map(Vec::as_slice).collect();
        draw_tiles(&by_id::<HtmlCanvasElement>("mix-strip")?, &tiles, c.channels, c.image_size, tiles.len());
        *cache.borrow_mut() = Some(Strip { key, images });
    }
    let strip = cache.borrow();
    let strip = strip.as_ref().expect("strip computed above");
    draw_image(&by_id::<HtmlCanvasElement>("mix-out")?, &strip.images[lambda], c.channels, c.image_size);
    Ok(if fresh {
        format!("{} mixtures in {} on {}", strip.images.len(), ms(now() - t), app.backend_label())
    } else {
        format!("λ = {lambda}: levels {lambda}… from A, finer from B")
    })
}
