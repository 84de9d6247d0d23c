//! "Live" updates: a slider fires many events while one computation runs;
//! run the job again once it finishes (with the latest settings) instead of
//! queueing one run per event.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;

type Job = Rc<dyn Fn() -> Pin<Box<dyn Future<Output = ()>>>>;

/// A job that at most runs once at a time and once more after that.
pub struct Live {
    busy: Cell<bool>,
    again: Cell<bool>,
    job: RefCell<Option<Job>>,
}

impl Live {
    pub fn new() -> Rc<Self> {
        Rc::new(Self { busy: Cell::new(false), again: Cell::new(false), job: RefCell::new(None) })
    }

    /// Sets the job (after construction, so it may refer to its own `Live`).
    pub fn set<F, Fut>(&self, job: F)
    where
        F: Fn() -> Fut + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        *self.job.borrow_mut() = Some(Rc::new(move || Box::pin(job())));
    }

    /// Runs the job now, or once more when the running one ends.
    pub fn trigger(self: &Rc<Self>) {
        if self.busy.get() {
            self.again.set(true);
            return;
        }
        let Some(job) = self.job.borrow().clone() else { return };
        self.busy.set(true);
        let me = self.clone();
        wasm_bindgen_futures::spawn_local(async move {
            loop {
                me.again.set(false);
                job().await;
                if !me.again.get() {
                    break;
                }
            }
            me.busy.set(false);
        });
    }
}
