//! Every element of `index.html` the page works with, looked up once at
//! start through one typed struct: a missing id, or an element of another
//! kind than the code expects, fails the load with its name — not later,
//! when someone clicks.

use web_sys::{
    HtmlButtonElement, HtmlCanvasElement, HtmlElement, HtmlInputElement, HtmlProgressElement, HtmlSelectElement,
};

use super::dom::by_id;
use crate::error::Result;

/// A struct of elements, each found by its id (`field: Type = "id"`).
macro_rules! elements {
    ($(#[$doc:meta])* $name:ident { $($(#[$field_doc:meta])* $field:ident: $ty:ty = $id:literal),* $(,)? }) => {
        $(#[$doc])*
        pub struct $name {
            $($(#[$field_doc])* pub $field: $ty,)*
        }

        impl $name {
            fn find() -> Result<Self> {
                Ok(Self { $($field: by_id($id)?,)* })
            }
        }
    };
}

elements!(
    /// The Sample panel.
    SampleElements {
        seed: HtmlInputElement = "sample-seed",
        reseed: HtmlButtonElement = "sample-reseed",
        /// Where the per-level temperature sliders are added.
        temperatures: HtmlElement = "sample-temps",
        grid: HtmlCanvasElement = "sample-grid",
        status: HtmlElement = "sample-status",
    }
);

elements!(
    /// The Mix panel.
    MixElements {
        b_source: HtmlSelectElement = "mix-b-source",
        b_seed: HtmlInputElement = "mix-b-seed",
        lambda: HtmlInputElement = "mix-lambda",
        lambda_out: HtmlElement = "mix-lambda-out",
        a: HtmlCanvasElement = "mix-a",
        b: HtmlCanvasElement = "mix-b",
        out: HtmlCanvasElement = "mix-out",
        strip: HtmlCanvasElement = "mix-strip",
        status: HtmlElement = "mix-status",
    }
);

elements!(
    /// The Inpaint panel.
    InpaintElements {
        brush: HtmlInputElement = "inpaint-brush",
        rounds: HtmlInputElement = "inpaint-rounds",
        temperature: HtmlInputElement = "inpaint-temperature",
        erase: HtmlButtonElement = "inpaint-erase",
        another: HtmlButtonElement = "inpaint-another",
        reset: HtmlButtonElement = "inpaint-reset",
        canvas: HtmlCanvasElement = "inpaint-canvas",
        status: HtmlElement = "inpaint-status",
    }
);

elements!(
    /// The Explore panel: the top level's sliders and the random walk.
    ExploreElements {
        channel: HtmlSelectElement = "explore-channel",
        reset: HtmlButtonElement = "explore-reset",
        /// Where the sliders are added.
        sliders: HtmlElement = "explore-sliders",
        canvas: HtmlCanvasElement = "explore-canvas",
        status: HtmlElement = "explore-status",
        walk_level: HtmlSelectElement = "walk-level",
        walk_play: HtmlButtonElement = "walk-play",
        walk_canvas: HtmlCanvasElement = "walk-canvas",
        walk_status: HtmlElement = "walk-status",
    }
);

elements!(
    /// The Receptive fields panel.
    ReceptiveElements {
        level: HtmlSelectElement = "rf-level",
        channel: HtmlSelectElement = "rf-channel",
        face: HtmlCanvasElement = "rf-face",
        sites: HtmlCanvasElement = "rf-sites",
        field: HtmlCanvasElement = "rf-field",
        status: HtmlElement = "rf-status",
    }
);

elements!(
    /// The Your photo panel.
    PhotoElements {
        file: HtmlInputElement = "photo-file",
        use_photo: HtmlButtonElement = "photo-use",
        canvas: HtmlCanvasElement = "photo-canvas",
        status: HtmlElement = "photo-status",
    }
);

elements!(
    /// The page's frame: state, facts, progress and the benchmark's output.
    FrameElements {
        /// The root; its `data-state` is `loading`, `ready` or `failed`.
        app: HtmlElement = "app",
        backend: HtmlElement = "backend",
        model: HtmlElement = "model",
        load_progress: HtmlProgressElement = "load-progress",
        status: HtmlElement = "status",
        /// Where `?bench` writes its figures.
        bench: HtmlElement = "bench",
    }
);

/// One tab of the tab bar and the panel it shows.
pub struct Tab {
    /// The panel's name (`sample`, `mix`, …): ids `tab-{name}` and `panel-{name}`.
    pub name: &'static str,
    pub button: HtmlButtonElement,
    pub panel: HtmlElement,
}

/// The panels in tab order.
pub const PANELS: [&str; 6] = ["sample", "mix", "inpaint", "explore", "receptive", "photo"];

/// The whole page (see the module docs).
pub struct Page {
    pub frame: FrameElements,
    /// In [`PANELS`] order.
    pub tabs: Vec<Tab>,
    pub sample: SampleElements,
    pub mix: MixElements,
    pub inpaint: InpaintElements,
    pub explore: ExploreElements,
    pub receptive: ReceptiveElements,
    pub photo: PhotoElements,
}

impl Page {
    /// Looks every element up; the error names the first one missing or of
    /// the wrong kind.
    pub fn find() -> Result<Self> {
        let tabs = PANELS
            .iter()
            .map(|&name| {
                Ok(Tab { name, button: by_id(&format!("tab-{name}"))?, panel: by_id(&format!("panel-{name}"))? })
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            frame: FrameElements::find()?,
            tabs,
            sample: SampleElements::find()?,
            mix: MixElements::find()?,
            inpaint: InpaintElements::find()?,
            explore: ExploreElements::find()?,
            receptive: ReceptiveElements::find()?,
            photo: PhotoElements::find()?,
        })
    }
}
