//! Explore panel: sliders for the top level's latents (the sparse, global
//! factors) and a looping random walk of one level's latents.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::Closure;
use web_sys::{Event, HtmlInputElement, HtmlSelectElement, MouseEvent};

use super::live::Live;
use super::{App, create, draw_image, ms, now, on, report};
use crate::error::Result;

/// Frames of one walk loop.
const FRAMES: usize = 24;
/// Frame interval of the animation.
const FRAME_MS: i32 = 80;

struct Sliders {
    generation: u64,
    channel: usize,
    /// The picked face's latents of the top level (all channels).
    original: Vec<f32>,
    values: Vec<f32>,
}

pub fn init(app: &Rc<App>) -> Result<Rc<Live>> {
    let levels = app.engine.levels();
    let top = levels - 1;
    let c = app.engine.config().clone();
    let per_channel = app.engine.lattice().level_elements(top, 1).len();
    let elements = &app.page.explore;
    let box_ = &elements.sliders;
    box_.set_inner_html("");
    let live = Live::new();
    let state =
        Rc::new(RefCell::new(Sliders { generation: u64::MAX, channel: 0, original: Vec::new(), values: Vec::new() }));
    let mut inputs = Vec::with_capacity(per_channel);
    for j in 0..per_channel {
        let input: HtmlInputElement = create("input").unchecked_into();
        input.set_type("range");
        input.set_id(&format!("factor-{j}"));
        for (k, v) in [("min", "-3"), ("max", "3"), ("step", "0.05"), ("value", "0")] {
            input.set_attribute(k, v).ok();
        }
        input.set_attribute("aria-label", &format!("top-level latent {}", j + 1)).ok();
        box_.append_child(&input).ok();
        inputs.push(input.clone());
        let (st, l) = (state.clone(), live.clone());
        on(&input, "input", move |e: Event| {
            let v = e
                .target()
                .and_then(|t| t.dyn_into::<HtmlInputElement>().ok())
                .map(|i| i.value_as_number())
                .unwrap_or(0.0);
            let mut s = st.borrow_mut();
            let k = s.channel * per_channel + j;
            if k < s.values.len() {
                s.values[k] = v as f32;
            }
            drop(s);
            l.trigger();
        });
    }
    let set_sliders = Rc::new(move |s: &Sliders| {
        for (j, input) in inputs.iter().enumerate() {
            if let Some(v) = s.values.get(s.channel * per_channel + j) {
                input.set_value_as_number(*v as f64);
            }
        }
    });
    {
        let (a, st, set_sliders) = (app.clone(), state.clone(), set_sliders.clone());
        live.set(move || {
            let (a, st, set_sliders) = (a.clone(), st.clone(), set_sliders.clone());
            async move {
                let result = async {
                    let face = a.picked();
                    if st.borrow().generation != a.generation() {
                        let original = a.engine.level_latents(&face, top).await?;
                        let mut s = st.borrow_mut();
                        *s = Sliders {
                            generation: a.generation(),
                            channel: s.channel,
                            values: original.clone(),
                            original,
                        };
                        set_sliders(&s);
                    }
                    let t = now();
                    let values = st.borrow().values.clone();
                    let edited = a.engine.with_level_latents(&face, top, values).await?;
                    draw_image(&a.page.explore.canvas, &edited.x01, c.channels, c.image_size);
                    Ok(format!("Decoded in {} on {}", ms(now() - t), a.backend_label()))
                }
                .await;
                report(&a.page.explore.status, result);
            }
        });
    }
    {
        let (st, l, set_sliders) = (state.clone(), live.clone(), set_sliders.clone());
        on(&elements.channel, "input", move |e: Event| {
            let ch = e
                .target()
                .and_then(|t| t.dyn_into::<HtmlSelectElement>().ok())
                .and_then(|s| s.value().parse().ok())
                .unwrap_or(0);
            let mut s = st.borrow_mut();
            s.channel = ch;
            set_sliders(&s);
            drop(s);
            l.trigger();
        });
    }
    {
        let (st, l) = (state.clone(), live.clone());
        on(&elements.reset, "click", move |_: MouseEvent| {
            let mut s = st.borrow_mut();
            s.values = s.original.clone();
            set_sliders(&s);
            drop(s);
            l.trigger();
        });
    }
    walk(app, levels);
    Ok(live)
}

/// The random-walk animation: compute one loop of frames, then play it.
fn walk(app: &Rc<App>, levels: usize) {
    let select = &app.page.explore.walk_level;
    select.set_inner_html("");
    for l in 0..levels {
        let label = if l == 0 {
            " (finest)"
        } else if l + 1 == levels {
            " (coarsest)"
        } else {
            ""
        };
        select.insert_adjacent_html("beforeend", &format!("<option value={l}>level {l}{label}</option>")).ok();
    }
    select.set_value(&(levels - 1).to_string());
    let button = &app.page.explore.walk_play;
    let timer: Rc<Cell<Option<i32>>> = Rc::new(Cell::new(None));
    let frames: Rc<RefCell<Vec<Vec<f32>>>> = Rc::new(RefCell::new(Vec::new()));
    let (a, b) = (app.clone(), button.clone());
    let c = app.engine.config().clone();
    on(button, "click", move |_: MouseEvent| {
        let window = web_sys::window().expect("window");
        // "Stop" stops both a running animation and a walk still being
        // computed (which then never starts its timer): a second click can
        // never leave an interval running.
        if b.get_attribute("aria-pressed").as_deref() == Some("true") {
            if let Some(id) = timer.take() {
                window.clear_interval_with_handle(id);
            }
            b.set_text_content(Some("Play walk"));
            let _ = b.set_attribute("aria-pressed", "false");
            return;
        }
        let (a, b, timer, frames, c) = (a.clone(), b.clone(), timer.clone(), frames.clone(), c.clone());
        b.set_text_content(Some("Stop"));
        let _ = b.set_attribute("aria-pressed", "true");
        wasm_bindgen_futures::spawn_local(async move {
            let level = a.page.explore.walk_level.value().parse().unwrap_or(0);
            let t = now();
            match a.engine.random_walk(&a.picked(), level, FRAMES, a.generation() ^ level as u64).await {
                Ok(walk) => {
                    report(
                        &a.page.explore.walk_status,
                        Ok(format!("{FRAMES} frames of level {level} in {} on {}", ms(now() - t), a.backend_label())),
                    );
                    *frames.borrow_mut() = walk;
                }
                Err(e) => return report(&a.page.explore.walk_status, Err(e)),
            }
            let canvas = a.page.explore.walk_canvas.clone();
            let frame = Cell::new(0usize);
            let tick = Closure::<dyn FnMut()>::new(move || {
                let f = frames.borrow();
                if let Some(img) = f.get(frame.get() % f.len().max(1)) {
                    draw_image(&canvas, img, c.channels, c.image_size);
                }
                frame.set(frame.get() + 1);
            });
            let window = web_sys::window().expect("window");
            if b.get_attribute("aria-pressed").as_deref() == Some("true") && timer.get().is_none() {
                let id = window
                    .set_interval_with_callback_and_timeout_and_arguments_0(tick.as_ref().unchecked_ref(), FRAME_MS)
                    .expect("interval");
                timer.set(Some(id));
            }
            tick.forget();
        });
    });
}
