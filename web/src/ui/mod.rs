//! The page: start-up (backend, weights), shared state and the tabs. Each
//! panel lives in its own module and only talks to [`crate::engine`].

mod dom;
mod explore;
mod inpaint;
mod live;
mod mix;
mod page;
mod photo;
mod receptive;
mod sample;

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use web_sys::{HtmlElement, KeyboardEvent, MouseEvent};

use crate::backend::{self, BackendKind};
use crate::error::Result;
use crate::face::Face;
use crate::weights;
use crate::worker::client::{CPU_WORKER_URL, EngineClient, EngineWorker, WEBGPU_WORKER_URL};
pub use dom::now;
use live::Live;
pub use page::Page;
pub use sample::{GRID, default_temperatures};

/// Default location of the weights, relative to the page.
pub const DEFAULT_MODEL_URL: &str = "models/celeba32.rgflow";

/// State shared by the panels.
pub struct App {
    /// The model, computed in the engine's worker.
    pub engine: Rc<EngineClient>,
    /// The page's elements.
    pub page: Page,
    /// The face the Mix, Inpaint, Explore and Receptive panels work on.
    picked: RefCell<Face>,
    /// Bumped whenever `picked` changes.
    generation: Cell<u64>,
    /// The uploaded photo, once there is one.
    photo: RefCell<Option<Face>>,
    /// Per-level temperatures set in the Sample panel.
    temperatures: RefCell<Vec<f64>>,
    /// Panel name → its refresh job.
    panels: RefCell<Vec<(&'static str, Rc<Live>)>>,
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

    fn register(&self, name: &'static str, live: Rc<Live>) {
        self.panels.borrow_mut().push((name, live));
    }

    /// Resolves once no panel's computation is running (each one's latest
    /// settings drawn).
    async fn settled(&self) {
        let panels: Vec<Rc<Live>> = self.panels.borrow().iter().map(|(_, live)| live.clone()).collect();
        for live in panels {
            live.idle().await;
        }
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
        for tab in &self.page.tabs {
            let shown = tab.name == id;
            tab.panel.set_hidden(!shown);
            let _ = tab.button.set_attribute("aria-selected", if shown { "true" } else { "false" });
            tab.button.set_tab_index(if shown { 0 } else { -1 });
        }
        self.refresh_active();
    }
}

/// Shows a message in a status line (`error` styles it as one).
pub fn status(line_element: &HtmlElement, text: &str, error: bool) {
    // Also on the console, where a tester or a bug report finds it.
    let line = wasm_bindgen::JsValue::from(format!("{}: {text}", line_element.id()));
    if error {
        web_sys::console::warn_1(&line)
    } else {
        web_sys::console::log_1(&line)
    }
    line_element.set_text_content(Some(text));
    let _ = line_element.class_list().toggle_with_force("error", error);
}

/// Shows a message in the page's `#status` line, found by its id: for a
/// crash or a failed start, when the [`Page`] may not exist.
pub fn page_status(text: &str, error: bool) {
    match dom::by_id::<HtmlElement>("status") {
        Ok(line) => status(&line, text, error),
        Err(_) => web_sys::console::error_1(&text.into()),
    }
}

/// Reports the outcome of a panel's job in its status line.
pub fn report(line: &HtmlElement, result: Result<String>) {
    match result {
        Ok(text) => status(line, &text, false),
        Err(e) => status(line, &e.to_string(), true),
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
        page_status(&format!("The demo could not start: {e}"), true);
        if let Ok(body) = dom::by_id::<HtmlElement>("app") {
            let _ = body.set_attribute("data-state", "failed");
        }
    }
}

async fn run(t0: f64) -> Result<()> {
    let page = Page::find()?;
    let frame = &page.frame;
    // The worker compiles the engine's wasm while the weights download; its
    // backend starts as soon as it listens. Unless WebGPU is forced, the
    // first faces come from the CPU engine's worker: a quarter of the WebGPU
    // one's download, without CubeCL's start-up. Where the browser has
    // WebGPU, it is then timed against the CPU in its own worker.
    let forced = BackendKind::from_query(query("backend").as_deref());
    let first_backend = forced.unwrap_or(BackendKind::Cpu);
    let worker_url = if first_backend == BackendKind::WebGpu { WEBGPU_WORKER_URL } else { CPU_WORKER_URL };
    let worker = EngineWorker::spawn(worker_url, |why| page_status(why, true))?;
    status(&frame.status, "Starting the compute backend…", false);
    let started = worker.start(Some(first_backend));
    let race = forced.is_none() && backend::missing_webgpu().is_none();

    let url = weights::same_origin_url(&query("model").unwrap_or_else(|| DEFAULT_MODEL_URL.to_string()))?;
    status(&frame.status, &format!("Loading the model ({url})…"), false);
    let progress = &frame.load_progress;
    let show = |loaded: u64, total: Option<u64>| match total {
        Some(total) if total > 0 => {
            progress.set_max(total as f64);
            progress.set_value(loaded as f64);
        }
        _ => progress.remove_attribute("value").unwrap_or(()),
    };
    let mut download = weights::load(&url, true, &show).await?;
    let mut marks = vec![("page wasm started", t0), ("weights downloaded", now())];
    let (kind, reason) = started.await?;
    marks.push(("backend started", now()));
    let line = match forced {
        Some(_) => backend_line(kind, reason.as_deref()),
        None if race => "CPU for now — timing WebGPU against it…".to_string(),
        None => backend_line(BackendKind::Cpu, backend::missing_webgpu().as_deref()),
    };
    frame.backend.set_text_content(Some(&line));
    // A cached copy that fails validation is dropped and fetched again; a
    // file enters the cache only once it loaded.
    let engine = match EngineClient::load(&worker, download.bytes.clone(), &url).await {
        Err(_) if download.origin == weights::Origin::Cache => {
            weights::evict(&url).await;
            download = weights::load(&url, false, &show).await?;
            EngineClient::load(&worker, download.bytes.clone(), &url).await?
        }
        loaded => loaded?,
    };
    marks.push(("model loaded", now()));
    let race_bytes = race.then(|| download.bytes.clone());
    let (size, origin) = (download.bytes.len(), download.origin);
    weights::remember(&url, download).await;
    let c = engine.config().clone();
    frame.model.set_text_content(Some(&format!(
        "{}×{}×{}, {} levels, {:.2} M parameters, {:.1} MB{}",
        c.channels,
        c.image_size,
        c.image_size,
        engine.levels(),
        engine.num_parameters() as f64 / 1e6,
        size as f64 / 1e6,
        if origin == weights::Origin::Cache { " (cached)" } else { "" }
    )));
    status(&frame.status, "Drawing the first faces…", false);
    let levels = engine.levels();
    let engine = Rc::new(engine);
    let first = engine.sample(1, &sample::default_temperatures(levels), 0).await?.remove(0);
    marks.push(("first face", now()));
    if let Some(at) = worker.ready_at() {
        marks.push(("worker listening", at));
    }
    let app = Rc::new(App {
        engine,
        page,
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
    tabs(&app);
    app.activate("sample");
    let frame = &app.page.frame;
    frame.load_progress.set_hidden(true);
    status(&frame.status, &format!("Ready in {:.0} ms.", now() - t0), false);
    let _ = frame.app.set_attribute("data-state", "ready");
    if let Some(bytes) = race_bytes {
        let line = race_webgpu(&app.engine, bytes, &url)
            .await
            .unwrap_or_else(|e| format!("CPU — WebGPU could not be timed against it ({e})"));
        frame.backend.set_text_content(Some(&line));
    }
    if query("bench").is_some() {
        // The active panel's first draw (16 faces) goes to the same worker:
        // let it finish, or its batch is timed as one of the benchmark's.
        app.settled().await;
        crate::bench::run(&app.engine, &frame.bench, &marks).await;
    }
    Ok(())
}

/// Faces per timed batch when the two backends are compared at start-up
/// (after one warm-up face each, which pays for compiling kernels).
const RACE_FACES: usize = 2;

/// Loads the model (`bytes`, from `url`) in a WebGPU worker and times it
/// against `engine`, which runs on the CPU: the faster answers from now on.
/// The backend line, saying why.
async fn race_webgpu(engine: &EngineClient, bytes: Vec<u8>, url: &str) -> Result<String> {
    // Until it is adopted, a crash of the WebGPU worker only loses the race
    // (the CPU keeps answering): the console hears of it, not the page.
    let adopted = Rc::new(Cell::new(false));
    let on_crash = {
        let adopted = adopted.clone();
        move |why: &str| match adopted.get() {
            true => page_status(why, true),
            false => web_sys::console::warn_1(&format!("the WebGPU worker, timed against the CPU: {why}").into()),
        }
    };
    let worker = EngineWorker::spawn(WEBGPU_WORKER_URL, on_crash)?;
    let (kind, reason) = worker.start(Some(BackendKind::WebGpu)).await?;
    if kind != BackendKind::WebGpu {
        return Ok(backend_line(BackendKind::Cpu, reason.as_deref()));
    }
    let on_gpu = EngineClient::load(&worker, bytes, url).await?;
    let gpu_ms = on_gpu.ms_per_face(RACE_FACES).await?;
    let cpu_ms = engine.ms_per_face(RACE_FACES).await?;
    let timing = format!("{cpu_ms:.0} ms per face on the CPU, {gpu_ms:.0} on WebGPU");
    Ok(if gpu_ms <= cpu_ms {
        adopted.set(true);
        engine.switch_to(on_gpu);
        format!("WebGPU — faster here than the CPU ({timing})")
    } else {
        format!("CPU — faster here than WebGPU ({timing})")
    })
}

/// The backend line: which backend, and why not WebGPU.
fn backend_line(kind: BackendKind, fallback_reason: Option<&str>) -> String {
    match (kind, fallback_reason) {
        (BackendKind::WebGpu, _) => "WebGPU".to_string(),
        (BackendKind::Cpu, Some(reason)) => format!("CPU — {reason}"),
        (BackendKind::Cpu, None) => "CPU".to_string(),
    }
}

/// Tab buttons: click, and arrow keys between tabs (WAI-ARIA tabs pattern).
fn tabs(app: &Rc<App>) {
    let n = app.page.tabs.len();
    for (i, tab) in app.page.tabs.iter().enumerate() {
        let (a, name) = (app.clone(), tab.name);
        dom::on(&tab.button, "click", move |_: MouseEvent| a.activate(name));
        let a = app.clone();
        dom::on(&tab.button, "keydown", move |e: KeyboardEvent| {
            let next = match e.key().as_str() {
                "ArrowRight" => (i + 1) % n,
                "ArrowLeft" => (i + n - 1) % n,
                "Home" => 0,
                "End" => n - 1,
                _ => return,
            };
            e.prevent_default();
            let next = &a.page.tabs[next];
            a.activate(next.name);
            let _ = next.button.focus();
        });
    }
}

/// Milliseconds as text.
pub fn ms(t: f64) -> String {
    if t < 10.0 { format!("{t:.1} ms") } else { format!("{t:.0} ms") }
}

pub(crate) use dom::{canvas_pixel, create, draw_field, draw_image, draw_tiles, on};

/// An input's value parsed as `T`, if it parses.
pub(crate) fn parsed<T: std::str::FromStr>(input: &web_sys::HtmlInputElement) -> Option<T> {
    input.value().trim().parse().ok()
}
