//! The browser benchmark (`?bench`): time to first face, ms per face in a
//! batch of 16, ms per inpainting stroke. Results go to `#bench` (and the
//! console) for `tests/browser/bench.mjs` to collect.

use web_sys::HtmlElement;

use crate::engine::{Engine, Face};
use crate::error::Result;
use crate::ui::now;

/// Timed repetitions after one warm-up.
const REPEATS: usize = 3;
/// Sampler rounds of one stroke (as the Inpaint panel's default).
pub const STROKE_ROUNDS: usize = 8;

pub async fn run(engine: &Engine, out: &HtmlElement, first_face_ms: f64) {
    let show = |line: &str, done: bool| show(out, line, done);
    show(&format!("backend: {}", engine.backend().label()), false);
    show(
        &format!(
            "time to first face: {first_face_ms:.0} ms (page start to the first face decoded, weights download included)"
        ),
        false,
    );
    if let Err(e) = measure(engine, &show).await {
        show(&format!("benchmark failed: {e}"), false);
    }
    show("", true);
}

/// Appends a line to `#bench` (as soon as it is measured, so a slow backend
/// still reports what it got); `done` marks the end for the test driver.
fn show(out: &HtmlElement, line: &str, done: bool) {
    if !line.is_empty() {
        web_sys::console::log_1(&line.into());
        let text = out.text_content().unwrap_or_default();
        out.set_text_content(Some(&format!("{text}{line}\n")));
    }
    if done {
        let _ = out.set_attribute("data-done", "true");
    }
}

async fn measure(engine: &Engine, show: &impl Fn(&str, bool)) -> Result<()> {
    let temps = crate::ui::default_temperatures(engine.levels());
    let batch = crate::ui::GRID;
    engine.sample(batch, &temps, 1).await?;
    let t = now();
    for r in 0..REPEATS {
        engine.sample(batch, &temps, 2 + r as u64).await?;
    }
    let per_face = (now() - t) / (REPEATS * batch) as f64;
    show(&format!("ms per face (batch of {batch}, after one warm-up batch): {per_face:.1}"), false);
    let face: Face = engine.sample(1, &temps, 9).await?.remove(0);
    let size = engine.config().image_size;
    // A 6×6 stroke near the centre.
    let mut mask = vec![false; size * size];
    for r in size / 2 - 3..size / 2 + 3 {
        for c in size / 2 - 3..size / 2 + 3 {
            mask[r * size + c] = true;
        }
    }
    let stroke = || async {
        let mut sampler = engine.cone_sampler(&face, &mask, engine.stroke_options(0.8, STROKE_ROUNDS, 1)?)?;
        for _ in 0..STROKE_ROUNDS {
            engine.sampler_round(&mut sampler).await?;
        }
        engine.sampled(&sampler).await
    };
    stroke().await?;
    let t = now();
    for _ in 0..REPEATS {
        stroke().await?;
    }
    let per_stroke = (now() - t) / REPEATS as f64;
    show(
        &format!(
            "ms per inpainting stroke ({STROKE_ROUNDS} sampler rounds, 6×6 pixels, after one warm-up stroke): {per_stroke:.0}"
        ),
        false,
    );
    Ok(())
}
