//! Inpaint panel: paint over a face (mouse, pen or finger) and watch the
//! model draw a completion of the painted pixels while the brush moves,
//! round by round, re-running only the O(log L) blocks in their causal cone
//! (in the engine's worker: the brush never waits for a round).

use std::cell::RefCell;
use std::rc::Rc;

use web_sys::{Event, HtmlCanvasElement, MouseEvent, PointerEvent};

use super::live::Live;
use super::{App, canvas_pixel, draw_image, ms, now, on, parsed, report};
use crate::error::Result;
use crate::face::Face;

/// Rounds between two redraws.
const SHOW_EVERY: usize = 2;

/// The face being edited.
struct Canvas {
    generation: u64,
    /// The picked face as it was before any painting.
    base: Face,
    /// What is on screen: known pixels from `base`, painted ones filled in.
    image: Vec<f32>,
    /// Sites painted so far (`[L·L]`).
    mask: Vec<bool>,
    /// Sites painted while a fill was running (they stay grey until the next).
    painted_since: Vec<bool>,
    drawing: bool,
    /// Seed of the completion shown ("Another completion" moves it on).
    seed: u64,
}

impl Canvas {
    fn new(app: &App) -> Self {
        let base = app.picked();
        let plane = base.x01.len() / app.engine.config().channels;
        Self {
            generation: app.generation(),
            image: base.x01.clone(),
            base,
            mask: vec![false; plane],
            painted_since: vec![false; plane],
            drawing: false,
            seed: 1,
        }
    }

    /// Marks a disc of `radius` around `(x, y)` as unknown (grey on screen).
    fn paint(&mut self, size: usize, x: usize, y: usize, radius: f64) {
        let plane = size * size;
        let r = radius.ceil() as isize;
        for dy in -r..=r {
            for dx in -r..=r {
                let (px, py) = (x as isize + dx, y as isize + dy);
                if px < 0
                    || py < 0
                    || px >= size as isize
                    || py >= size as isize
                    || ((dx * dx + dy * dy) as f64) > radius * radius
                {
                    continue;
                }
                let s = py as usize * size + px as usize;
                if !self.mask[s] || !self.painted_since[s] {
                    self.mask[s] = true;
                    self.painted_since[s] = true;
                    for ch in 0..self.image.len() / plane {
                        self.image[ch * plane + s] = 0.5;
                    }
                }
            }
        }
    }
}

pub fn init(app: &Rc<App>) -> Result<Rc<Live>> {
    let size = app.engine.config().image_size;
    let channels = app.engine.config().channels;
    let state = Rc::new(RefCell::new(Canvas::new(app)));
    let elements = &app.page.inpaint;
    let canvas = elements.canvas.clone();
    let live = Live::new();
    let redraw = {
        let canvas = canvas.clone();
        move |s: &Canvas| draw_image(&canvas, &s.image, channels, size)
    };
    {
        let (a, st, redraw) = (app.clone(), state.clone(), redraw.clone());
        live.set(move || {
            let (a, st, redraw) = (a.clone(), st.clone(), redraw.clone());
            async move {
                if st.borrow().generation != a.generation() {
                    *st.borrow_mut() = Canvas::new(&a);
                }
                redraw(&st.borrow());
                if !st.borrow().mask.contains(&true) {
                    report(
                        &a.page.inpaint.status,
                        Ok("Paint over the face (or press “Erase centre”) to inpaint".into()),
                    );
                    return;
                }
                let result = fill(&a, &st, &redraw).await;
                report(&a.page.inpaint.status, result);
            }
        });
    }
    let brush = elements.brush.clone();
    let stroke = move |state: &Rc<RefCell<Canvas>>, canvas: &HtmlCanvasElement, e: &PointerEvent| {
        let Some((x, y)) = canvas_pixel(canvas, e.client_x() as f64, e.client_y() as f64) else { return };
        let radius = parsed::<f64>(&brush).unwrap_or(2.0);
        state.borrow_mut().paint(size, x, y, radius);
    };
    // Every brush movement asks for a completion; `Live` runs at most one
    // at a time and then one more for whatever was painted meanwhile.
    {
        let (st, cv, redraw, l, stroke) = (state.clone(), canvas.clone(), redraw.clone(), live.clone(), stroke.clone());
        on(&canvas, "pointerdown", move |e: PointerEvent| {
            e.prevent_default();
            let _ = cv.set_pointer_capture(e.pointer_id());
            st.borrow_mut().drawing = true;
            stroke(&st, &cv, &e);
            redraw(&st.borrow());
            l.trigger();
        });
    }
    {
        let (st, cv, redraw, l) = (state.clone(), canvas.clone(), redraw.clone(), live.clone());
        on(&canvas, "pointermove", move |e: PointerEvent| {
            if st.borrow().drawing {
                stroke(&st, &cv, &e);
                redraw(&st.borrow());
                l.trigger();
            }
        });
    }
    for end in ["pointerup", "pointercancel"] {
        let st = state.clone();
        on(&canvas, end, move |_: PointerEvent| st.borrow_mut().drawing = false);
    }
    {
        let (st, l) = (state.clone(), live.clone());
        on(&elements.erase, "click", move |_: MouseEvent| {
            let c = size as f64 / 2.0;
            st.borrow_mut().paint(size, c as usize, c as usize, size as f64 / 6.0);
            l.trigger();
        });
    }
    {
        let (a, st, l) = (app.clone(), state.clone(), live.clone());
        on(&elements.reset, "click", move |_: MouseEvent| {
            *st.borrow_mut() = Canvas::new(&a);
            l.trigger();
        });
    }
    {
        let (st, l) = (state.clone(), live.clone());
        on(&elements.another, "click", move |_: MouseEvent| {
            st.borrow_mut().seed += 1;
            l.trigger();
        });
    }
    // A new temperature or round count redraws the completion.
    for slider in [&elements.temperature, &elements.rounds] {
        let l = live.clone();
        on(slider, "input", move |_: Event| l.trigger());
    }
    Ok(live)
}

/// Draws a completion of everything painted so far, redrawing as it goes.
async fn fill(app: &App, state: &RefCell<Canvas>, redraw: &impl Fn(&Canvas)) -> Result<String> {
    let rounds = parsed::<usize>(&app.page.inpaint.rounds).unwrap_or(8).max(1);
    let temperature = parsed::<f64>(&app.page.inpaint.temperature).unwrap_or(0.8);
    let plane = state.borrow().mask.len();
    let (face, mask, seed) = {
        let mut s = state.borrow_mut();
        s.painted_since = vec![false; plane];
        (s.base.clone(), s.mask.clone(), s.seed)
    };
    let t = now();
    let stroke = app.engine.stroke(&face, &mask, temperature, rounds, seed).await?;
    // Rounds in the worker, asked for at once (so it never waits for the
    // page); the page draws what they give every few.
    for answer in stroke.rounds_in_steps(rounds, SHOW_EVERY) {
        let image = answer.await?;
        let mut s = state.borrow_mut();
        // Pixels painted meanwhile stay grey until the next run fills them.
        for (e, v) in image.into_iter().enumerate() {
            if mask[e % plane] && !s.painted_since[e % plane] {
                s.image[e] = v;
            }
        }
        redraw(&s);
    }
    let elapsed = now() - t;
    Ok(format!(
        "{rounds} rounds in {} ({} per round) on {}; each round re-ran {} of {} blocks (encode + decode of the cone)",
        ms(elapsed),
        ms(elapsed / rounds as f64),
        app.backend_label(),
        stroke.blocks_per_round(),
        2 * stroke.blocks_total()
    ))
}
