//! "Live" updates: a slider fires many events while one computation runs;
//! run the job again once it finishes (with the latest settings) instead of
//! queueing one run per event.

use std::cell::{Cell, RefCell};
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Poll, Waker};

type Job = Rc<dyn Fn() -> Pin<Box<dyn Future<Output = ()>>>>;

/// A job that at most runs once at a time and once more after that.
pub struct Live {
    busy: Cell<bool>,
    again: Cell<bool>,
    job: RefCell<Option<Job>>,
    /// Who waits for the job to stop running ([`Live::idle`]).
    idle_waiters: RefCell<Vec<Waker>>,
}

impl Live {
    pub fn new() -> Rc<Self> {
        Rc::new(Self {
            busy: Cell::new(false),
            again: Cell::new(false),
            job: RefCell::new(None),
            idle_waiters: RefCell::new(Vec::new()),
        })
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
            me.idle_waiters.take().into_iter().for_each(Waker::wake);
        });
    }

    /// Resolves once the job is not running (at once if it is not).
    pub fn idle(&self) -> impl Future<Output = ()> + '_ {
        poll_fn(|cx| {
            if self.busy.get() {
                self.idle_waiters.borrow_mut().push(cx.waker().clone());
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
    }
}
