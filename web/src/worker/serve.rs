//! The worker's message loop: requests arrive as transferred bytes, wait in
//! an inbox and are answered one at a time by a [`Host`] (one at a time, so a
//! stroke's sampler is never in two rounds at once and answers keep their
//! order).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::poll_fn;
use std::rc::Rc;
use std::task::{Poll, Waker};

use js_sys::Uint8Array;
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use web_sys::{DedicatedWorkerGlobalScope, MessageEvent};

use super::host::Host;
use super::protocol::{Envelope, FromWorker, Request, decode, encode};

/// Requests not yet answered, and the loop's waker while it waits for one.
#[derive(Default)]
struct Inbox {
    queue: VecDeque<Envelope<Request>>,
    waiting: Option<Waker>,
}

/// Posts a message to the page, its bytes transferred (not copied).
fn post(scope: &DedicatedWorkerGlobalScope, message: &FromWorker) {
    let bytes = Uint8Array::from(encode(message).as_slice());
    let transfer = js_sys::Array::of1(&bytes.buffer());
    if let Err(e) = scope.post_message_with_transfer(&bytes, &transfer) {
        web_sys::console::error_2(&"rgflow worker: posting a reply failed".into(), &e);
    }
}

/// Runs the engine's worker: answers the page's requests.
pub fn serve() {
    let scope: DedicatedWorkerGlobalScope = js_sys::global().unchecked_into();
    {
        let scope = scope.clone();
        std::panic::set_hook(Box::new(move |info| {
            let text = format!("The demo's engine crashed: {info}");
            web_sys::console::error_1(&text.clone().into());
            post(&scope, &FromWorker::Crashed(text));
        }));
    }
    let inbox = Rc::new(RefCell::new(Inbox::default()));
    {
        let (inbox, reply_to) = (inbox.clone(), scope.clone());
        let on_message = Closure::<dyn Fn(MessageEvent)>::new(move |event: MessageEvent| {
            let bytes = Uint8Array::new(&event.data()).to_vec();
            match decode::<Envelope<Request>>(&bytes, "request from the page") {
                Ok(envelope) => {
                    let mut inbox = inbox.borrow_mut();
                    inbox.queue.push_back(envelope);
                    if let Some(waker) = inbox.waiting.take() {
                        waker.wake();
                    }
                }
                // No id to answer to: the page's protocol is not ours.
                Err(e) => post(&reply_to, &FromWorker::Crashed(e.to_string())),
            }
        });
        scope.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
        // The worker lives as long as the page: so does its handler.
        on_message.forget();
    }
    post(&scope, &FromWorker::Ready);
    wasm_bindgen_futures::spawn_local(async move {
        let mut host = Host::new();
        loop {
            let Envelope { id, body } = poll_fn(|cx| {
                let mut inbox = inbox.borrow_mut();
                match inbox.queue.pop_front() {
                    Some(envelope) => Poll::Ready(envelope),
                    None => {
                        inbox.waiting = Some(cx.waker().clone());
                        Poll::Pending
                    }
                }
            })
            .await;
            let body = host.handle(body).await.map_err(|e| e.to_string());
            post(&scope, &FromWorker::Reply(Envelope { id, body }));
        }
    });
}
