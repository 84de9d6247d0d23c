//! The page: start-up (backend, weights), shared state and the tabs. Each
//! panel lives in its own module and only talks to [`crate::engine`].

mod dom;
mod explore;
mod inpaint;
mod live;
mod mix;
mod photo;
mod receptive;
mod sample;

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use wasm_bindgen::JsCast;
use web_sys::{HtmlElement, HtmlProgressElement, KeyboardEvent, MouseEvent};

use crate::backend::{self, Preference};
use crate::engine::{BackendKind, Engine, Face};
use crate::error::Result;
use crate::weights;
pub use dom::now;
use live::Live;
pub use sample::{GRID, default_temperatures};

/// Default location of the weights, relative to the page.
pub const DEFAULT_MODEL_URL: &str = "models/celeba32.rgflow";

/// State shared by the panels.
pub struct App {
    pub engine: Rc<Engine>,
    /// The face the Mix, Inpaint, Explore and Receptive panels work on.
    picked: RefCell<Face>,
    /// Bumped whenever `picked` changes.
    generation: Cell<u64>,
    /// The uploaded photo, once there is one.
    photo: RefCell<Option<Face>>,
    /// Per-level temperatures set in the Sample panel.
    temperatures: RefCell<Vec<f64>>,
    /// Panel id → its refresh job.
    panels: RefCell<Vec<(String, Rc<Live>)>>,
    active: RefCell<String>,
}

impl App {
    pub fn picked(&self) -> Face {
        self.picked.borrow().clone()
    }

    pub fn generation(&self) -> u64 {
        self.generation.get()
    }

    /// Makes `face` the one the other panels work on (they pick it up when shown).
    pub fn pick(&self, face: Face) {
        *self.picked.borrow_mut() = face;
        self.generation.set(self.generation.get() + 1);
    }

    pub fn photo(&self) -> Option<Face> {
        self.photo.borrow().clone()
    }

    pub fn set_photo(&self, face: Face) {
        *self.photo.borrow_mut() = Some(face);
    }

    pub fn temperatures(&self) -> Vec<f64> {
        self.temperatures.borrow().clone()
    }

    pub fn set_temperatures(&self, temps: Vec<f64>) {
        *self.temperatures.borrow_mut() = temps;
    }

    pub fn backend_label(&self) -> &'static str {
        self.engine.backend().label()
    }

    fn register(&self, id: &str, live: Rc<Live>) {
        self.panels.borrow_mut().push((id.to_string(), live));
    }

    fn refresh_active(&self) {
        let active = self.active.borrow().clone();
        if let Some((_, live)) = self.panels.borrow().iter().find(|(id, _)| *id == active) {
            live.trigger();
        }
    }

    /// Shows one panel and refreshes it.
    fn activate(&self, id: &str) {
        *self.active.borrow_mut() = id.to_string();
        for (panel, _) in self.panels.borrow().iter() {
            let shown = panel == id;
            if let Ok(section) = dom::by_id::<HtmlElement>(&format!("panel-{panel}")) {
                section.set_hidden(!shown);
            }
            if let Ok(tab) = dom::by_id::<HtmlElement>(&format!("tab-{panel}")) {
                let _ = tab.set_attribute("aria-selected", if shown { "true" } else { "false" });
                tab.set_tab_index(if shown { 0 } else { -1 });
            }
        }
        self.refresh_active();
    }
}

/// Shows a message in a panel's status line (`error` styles it as one).
pub fn status(id: &str, text: &str, error: bool) {
    // Also on the console, where a tester or a bug report finds it.
    let line = wasm_bindgen::JsValue::from(format!("{id}: {text}"));
    if error {
        web_sys::console::warn_1(&line)
    } else {
        web_sys::console::log_1(&line)
    }
    if let Ok(e) = dom::by_id::<HtmlElement>(id) {
        e.set_text_content(Some(text));
        let _ = e.class_list().toggle_with_force("error", error);
    }
}

/// Reports the outcome of a panel's job in its status line.
pub fn report(id: &str, result: Result<String>) {
    match result {
        Ok(text) => status(id, &text, false),
        Err(e) => status(id, &e.to_string(), true),
    }
}

fn query(name: &str) -> Option<String> {
    let search = web_sys::window()?.location().search().ok()?;
    web_sys::UrlSearchParams::new_with_str(&search).ok()?.get(name)
}

/// Starts the demo on the page; errors end up in `#status`, not the console.
pub async fn start() {
    let t0 = now();
    if let Err(e) = run(t0).await {
        status("status", &format!("The demo could not start: {e}"), true);
        if let Ok(body) = dom::by_id::<HtmlElement>("app") {
            let _ = body.set_attribute("data-state", "failed");
        }
    }
}

async fn run(t0: f64) -> Result<()> {
    let preference = if query("backend").as_deref() == Some("cpu") { Preference::Cpu } else { Preference::Auto };
    status("status", "Starting the compute backend…", false);
    let chosen = backend::choose(preference).await;
    let backend_text = match (&chosen.kind, &chosen.fallback_reason) {
        (BackendKind::WebGpu, _) => "WebGPU".to_string(),
        (BackendKind::Cpu, Some(reason)) => format!("CPU — {reason}"),
        (BackendKind::Cpu, None) => "CPU".to_string(),
    };
    dom::set_text("backend", &backend_text);

    let url = weights::same_origin_url(&query("model").unwrap_or_else(|| DEFAULT_MODEL_URL.to_string()))?;
    status("status", &format!("Loading the model ({url})…"), false);
    let progress: HtmlProgressElement = dom::by_id("load-progress")?;
    let show = |loaded: u64, total: Option<u64>| match total {
        Some(total) if total > 0 => {
            progress.set_max(total as f64);
            progress.set_value(loaded as f64);
        }
        _ => progress.remove_attribute("value").unwrap_or(()),
    };
    let mut download = weights::load(&url, true, &show).await?;
    // A cached copy that fails validation is dropped and fetched again; a
    // file enters the cache only once it loaded.
    let engine = match Engine::load(download.bytes.clone(), &url, chosen.device.clone(), chosen.kind) {
        Err(_) if download.origin == weights::Origin::Cache => {
            weights::evict(&url).await;
            download = weights::load(&url, false, &show).await?;
            Engine::load(download.bytes.clone(), &url, chosen.device, chosen.kind)?
        }
        loaded => loaded?,
    };
    let (size, origin) = (download.bytes.len(), download.origin);
    weights::remember(&url, download).await;
    let c = engine.config().clone();
    dom::set_text(
        "model",
        &format!(
            "{}×{}×{}, {} levels, {:.2} M parameters, {:.1} MB{}",
            c.channels,
            c.image_size,
            c.image_size,
            engine.levels(),
            engine.flow().num_parameters() as f64 / 1e6,
            size as f64 / 1e6,
            if origin == weights::Origin::Cache { " (cached)" } else { "" }
        ),
    );
    status("status", "Drawing the first faces…", false);
    let levels = engine.levels();
    let engine = Rc::new(engine);
    let first = engine.sample(1, &sample::default_temperatures(levels), 0).await?.remove(0);
    let first_face_ms = now() - t0;
    let app = Rc::new(App {
        engine,
        picked: RefCell::new(first),
        generation: Cell::new(0),
        photo: RefCell::new(None),
        temperatures: RefCell::new(sample::default_temperatures(levels)),
        panels: RefCell::new(Vec::new()),
        active: RefCell::new(String::new()),
    });
    app.register("sample", sample::init(&app)?);
    app.register("mix", mix::init(&app)?);
    app.register("inpaint", inpaint::init(&app)?);
    app.register("explore", explore::init(&app)?);
    app.register("receptive", receptive::init(&app)?);
    app.register("photo", photo::init(&app)?);
    tabs(&app)?;
    app.activate("sample");
    progress.set_hidden(true);
    status("status", &format!("Ready in {:.0} ms.", now() - t0), false);
    let root: HtmlElement = dom::by_id("app")?;
    let _ = root.set_attribute("data-state", "ready");
    if query("bench").is_some() {
        crate::bench::run(&app.engine, first_face_ms).await;
    }
    Ok(())
}

/// Tab buttons: click, and arrow keys between tabs (WAI-ARIA tabs pattern).
fn tabs(app: &Rc<App>) -> Result<()> {
    let ids: Vec<String> = app.panels.borrow().iter().map(|(id, _)| id.clone()).collect();
    for (i, id) in ids.iter().enumerate() {
        let tab: HtmlElement = dom::by_id(&format!("tab-{id}"))?;
        let (a, panel) = (app.clone(), id.clone());
        dom::on(&tab, "click", move |_: MouseEvent| a.activate(&panel));
        let (a, ids) = (app.clone(), ids.clone());
        dom::on(&tab, "keydown", move |e: KeyboardEvent| {
            let n = ids.len();
            let next = match e.key().as_str() {
                "ArrowRight" => (i + 1) % n,
                "ArrowLeft" => (i + n - 1) % n,
                "Home" => 0,
                "End" => n - 1,
                _ => return,
            };
            e.prevent_default();
            a.activate(&ids[next]);
            if let Ok(t) = dom::by_id::<HtmlElement>(&format!("tab-{}", ids[next])) {
                let _ = t.focus();
            }
        });
    }
    Ok(())
}

/// Milliseconds as text.
pub fn ms(t: f64) -> String {
    if t < 10.0 { format!("{t:.1} ms") } else { format!("{t:.0} ms") }
}

pub(crate) use dom::{by_id, canvas_pixel, create, draw_field, draw_image, draw_tiles, on};

/// Casts for event targets.
pub(crate) fn input_value(id: &str) -> Option<String> {
    dom::document().get_element_by_id(id)?.dyn_into::<web_sys::HtmlInputElement>().ok().map(|i| i.value())
}
