//! Mix panel: levels `≥ λ` from face A (the picked one), finer levels from
//! face B (a seed or the uploaded photo); the strip shows every λ.

use std::cell::RefCell;
use std::rc::Rc;

use web_sys::Event;

use super::live::Live;
use super::{App, draw_image, draw_tiles, ms, now, on, parsed, report};
use crate::error::{Result, WebError};
use crate::face::Face;

/// The strip for one (A, B) pair, kept while only λ moves.
struct Strip {
    key: (u64, String),
    images: Vec<Vec<f32>>,
}

pub fn init(app: &Rc<App>) -> Result<Rc<Live>> {
    let levels = app.engine.levels();
    let elements = &app.page.mix;
    elements.lambda.set_max(&levels.to_string());
    elements.lambda.set_value(&(levels / 2).to_string());
    elements.lambda_out.set_text_content(Some(&(levels / 2).to_string()));
    let live = Live::new();
    let cache: Rc<RefCell<Option<Strip>>> = Rc::new(RefCell::new(None));
    let a = app.clone();
    live.set(move || {
        let (a, cache) = (a.clone(), cache.clone());
        async move {
            let result = update(&a, &cache).await;
            report(&a.page.mix.status, result);
        }
    });
    let targets: [&web_sys::EventTarget; 3] = [&elements.lambda, &elements.b_seed, &elements.b_source];
    for target in targets {
        let (l, a) = (live.clone(), app.clone());
        on(target, "input", move |_: Event| {
            let mix = &a.page.mix;
            mix.lambda_out.set_text_content(Some(&mix.lambda.value()));
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
    let elements = &app.page.mix;
    let lambda = parsed::<usize>(&elements.lambda).unwrap_or(0).min(app.engine.levels());
    let source = elements.b_source.value();
    let seed = parsed::<u64>(&elements.b_seed).unwrap_or(1);
    let key = (app.generation(), format!("{source}/{seed}/{:?}", app.temperatures()));
    let t = now();
    let fresh = cache.borrow().as_ref().is_none_or(|s| s.key != key);
    if fresh {
        let a = app.picked();
        let b = face_b(app, &source, seed).await?;
        draw_image(&elements.a, &a.x01, c.channels, c.image_size);
        draw_image(&elements.b, &b.x01, c.channels, c.image_size);
        let images = app.engine.mix_strip(&a, &b).await?;
        let tiles: Vec<&[f32]> = images.iter().map(Vec::as_slice).collect();
        draw_tiles(&elements.strip, &tiles, c.channels, c.image_size, tiles.len());
        *cache.borrow_mut() = Some(Strip { key, images });
    }
    let strip = cache.borrow();
    let strip = strip.as_ref().expect("strip computed above");
    draw_image(&elements.out, &strip.images[lambda], c.channels, c.image_size);
    Ok(if fresh {
        format!("{} mixtures in {} on {}", strip.images.len(), ms(now() - t), app.backend_label())
    } else {
        format!("λ = {lambda}: levels {lambda}… from A, finer from B")
    })
}
