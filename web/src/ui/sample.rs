//! Sample panel: a 4×4 grid of faces from a seed, one temperature per level.

use std::cell::RefCell;
use std::rc::Rc;

use wasm_bindgen::JsCast;
use web_sys::{Event, HtmlElement, HtmlInputElement, MouseEvent};

use super::live::Live;
use super::{App, canvas_pixel, create, draw_tiles, ms, now, on, parsed, report};
use crate::error::Result;
use crate::face::Face;

/// Faces in the grid (the benchmark's batch too).
pub const GRID: usize = 16;
const COLS: usize = 4;

/// Colder fine levels, warmer coarse ones: the paper's "effective temperature".
pub fn default_temperatures(levels: usize) -> Vec<f64> {
    (0..levels)
        .map(|l| if levels == 1 { 0.8 } else { 0.6 + 0.3 * l as f64 / (levels - 1) as f64 })
        .map(|t| (t * 20.0).round() / 20.0)
        .collect()
}

pub fn init(app: &Rc<App>) -> Result<Rc<Live>> {
    let levels = app.engine.levels();
    let elements = &app.page.sample;
    let temps_box = &elements.temperatures;
    temps_box.set_inner_html("");
    let live = Live::new();
    for (level, t) in app.temperatures().into_iter().enumerate() {
        let name = match level {
            0 => "level 0 (finest)".to_string(),
            l if l + 1 == levels => format!("level {l} (coarsest)"),
            l => format!("level {l}"),
        };
        // Built as elements (not markup looked up again by id), so the
        // handler below holds its own input and output.
        let label = create("label");
        let span = create("span");
        span.set_text_content(Some(&name));
        let input: HtmlInputElement = create("input").unchecked_into();
        input.set_type("range");
        for (attribute, value) in [("min", "0"), ("max", "1.5"), ("step", "0.05")] {
            input.set_attribute(attribute, value).ok();
        }
        input.set_value(&t.to_string());
        let output: HtmlElement = create("output").unchecked_into();
        output.set_text_content(Some(&format!("{t:.2}")));
        for child in [&span, input.as_ref(), output.as_ref()] {
            label.append_child(child).ok();
        }
        temps_box.append_child(&label).ok();
        let (a, l) = (app.clone(), live.clone());
        on(&input, "input", move |e: Event| {
            let v: f64 = e
                .target()
                .and_then(|t| t.dyn_into::<HtmlInputElement>().ok())
                .map(|i| i.value_as_number())
                .unwrap_or(0.8);
            let mut temps = a.temperatures();
            temps[level] = v;
            a.set_temperatures(temps);
            output.set_text_content(Some(&format!("{v:.2}")));
            l.trigger();
        });
    }
    let faces: Rc<RefCell<Vec<Face>>> = Rc::new(RefCell::new(Vec::new()));
    let grid = elements.grid.clone();
    {
        let (a, faces, grid) = (app.clone(), faces.clone(), grid.clone());
        live.set(move || {
            let (a, faces, grid) = (a.clone(), faces.clone(), grid.clone());
            async move {
                let seed = parsed::<u64>(&a.page.sample.seed).unwrap_or(0);
                let t = now();
                let result = a.engine.sample(GRID, &a.temperatures(), seed).await.map(|new| {
                    let c = a.engine.config();
                    draw_tiles(
                        &grid,
                        &new.iter().map(|f| f.x01.as_slice()).collect::<Vec<_>>(),
                        c.channels,
                        c.image_size,
                        COLS,
                    );
                    *faces.borrow_mut() = new;
                    format!(
                        "{GRID} faces in {} on {} — click one to use it in the other panels",
                        ms(now() - t),
                        a.backend_label()
                    )
                });
                report(&a.page.sample.status, result);
            }
        });
    }
    let l = live.clone();
    on(&elements.seed, "input", move |_: Event| l.trigger());
    let (l, seed) = (live.clone(), elements.seed.clone());
    on(&elements.reseed, "click", move |_: MouseEvent| {
        let next = parsed::<u64>(&seed).unwrap_or(0).wrapping_add(1);
        seed.set_value(&next.to_string());
        l.trigger();
    });
    let (a, faces_for_click) = (app.clone(), faces.clone());
    let size = app.engine.config().image_size;
    let canvas = grid.clone();
    on(&grid, "click", move |e: MouseEvent| {
        let Some((x, y)) = canvas_pixel(&canvas, e.client_x() as f64, e.client_y() as f64) else { return };
        let index = (y / (size + 1)) * COLS + x / (size + 1);
        let face = faces_for_click.borrow().get(index).cloned();
        if let Some(face) = face {
            a.pick(face);
            report(&a.page.sample.status, Ok(format!("Face {} picked: the other panels now use it", index + 1)));
        }
    });
    Ok(live)
}
