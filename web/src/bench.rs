//! The browser benchmark (`?bench`): time to first face, ms per face in a
//! batch of 16, ms per inpainting stroke. Results go to `#bench` (and the
//! console) for `tests/browser/bench.mjs` to collect.

use web_sys::HtmlElement;

use crate::error::Result;
use crate::face::Face;
use crate::ui::now;
use crate::worker::client::EngineClient;

/// Timed repetitions after one warm-up.
const REPEATS: usize = 3;
/// Sampler rounds of one stroke (as the Inpaint panel's default).
pub const STROKE_ROUNDS: usize = 8;

/// `marks`: the start-up's steps, in ms from navigation start (the first
/// face among them).
pub async fn run(engine: &EngineClient, out: &HtmlElement, marks: &[(&str, f64)]) {
    let show = |line: &str, done: bool| show(out, line, done);
    show(&format!("backend: {}", engine.backend().label()), false);
    let mark = |name: &str| marks.iter().find(|(n, _)| *n == name).map(|(_, t)| *t);
    if let (Some(first), Some(start)) = (mark("first face"), mark("page wasm started")) {
        show(
            &format!(
                "time to first face: {first:.0} ms from navigation start, {:.0} ms from the page's wasm start \
                 (the worker's wasm, weights download, backend start and the first face decoded)",
                first - start
            ),
            false,
        );
    }
    let mut steps = marks.to_vec();
    steps.sort_by(|a, b| a.1.total_cmp(&b.1));
    let steps: Vec<String> = steps.iter().map(|(name, t)| format!("{name} {t:.0}")).collect();
    show(&format!("start-up, ms from navigation start: {}", steps.join(", ")), false);
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

async fn measure(engine: &EngineClient, show: &impl Fn(&str, bool)) -> Result<()> {
    let temps = crate::ui::default_temperatures(engine.levels());
    let batch = crate::ui::GRID;
    engine.sample(batch, &temps, 1).await?;
    let t = now();
    for r in 0..REPEATS {
        engine.sample(batch, &temps, 2 + r as u64).await?;
    }
    let per_face = (now() - t) / (REPEATS * batch) as f64;
    show(&format!("ms per face (batch of {batch}, after one warm-up batch): {per_face:.1}"), false);
    // The same, timed inside the worker: the model's compute without the
    // messages to and from the page.
    let in_worker = engine.ms_per_face(batch).await?;
    show(&format!("ms per face in the worker (batch of {batch}, compute only): {in_worker:.1}"), false);
    let face: Face = engine.sample(1, &temps, 9).await?.remove(0);
    let size = engine.config().image_size;
    // A 6×6 stroke near the centre.
    let mut mask = vec![false; size * size];
    for r in size / 2 - 3..size / 2 + 3 {
        for c in size / 2 - 3..size / 2 + 3 {
            mask[r * size + c] = true;
        }
    }
    // As the Inpaint panel runs one: rounds in the worker, two at a time,
    // all asked for at once.
    let stroke = || async {
        let stroke = engine.stroke(&face, &mask, 0.8, STROKE_ROUNDS, 1).await?;
        let mut image = Vec::new();
        for answer in stroke.rounds_in_steps(STROKE_ROUNDS, 2) {
            image = answer.await?;
        }
        Ok::<_, crate::WebError>(image)
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
