//! Fetching the weight file: progress while it streams, the browser's Cache
//! Storage for later visits (revalidated against the server's size and
//! date when the server answers), and a clear error for a missing file.
//!
//! Only same-origin `http(s)` files are fetched, at most
//! [`MAX_WEIGHTS_BYTES`] of them, and a file enters the cache only after the
//! caller validated it ([`remember`]), so a bad file is never kept.

use js_sys::{Reflect, Uint8Array};
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use web_sys::{Cache, ReadableStreamDefaultReader, Request, RequestInit, Response};

use crate::error::{Result, WebError};

/// Name of the Cache Storage bucket.
const CACHE_NAME: &str = "rgflow-weights";

/// The largest weight file the page downloads (a 32 M-parameter f16 model;
/// the shipped one is a few MB).
pub const MAX_WEIGHTS_BYTES: u64 = 64 << 20;

/// `raw` (a `?model=` value) resolved against the page, if it names an
/// `http(s)` file on the page's own origin: other origins, `data:` and
/// `blob:` URLs are refused with a message.
pub fn same_origin_url(raw: &str) -> Result<String> {
    let location = web_sys::window().ok_or_else(|| WebError::Page("no window".into()))?.location();
    let page = location.href().map_err(WebError::from)?;
    let refuse = |why: &str| {
        WebError::Input(format!(
            "?model={raw}: {why}; only weight files on this site ({}) are loaded",
            location.origin().unwrap_or_default()
        ))
    };
    let url = web_sys::Url::new_with_base(raw, &page).map_err(|_| refuse("not a URL"))?;
    if !matches!(url.protocol().as_str(), "http:" | "https:") {
        return Err(refuse(&format!("a {} URL", url.protocol())));
    }
    if Some(url.origin()) != location.origin().ok() {
        return Err(refuse(&format!("another origin ({})", url.origin())));
    }
    Ok(url.href())
}

fn fetch_error(url: &str, reason: impl Into<String>) -> WebError {
    WebError::Fetch { url: url.to_string(), reason: reason.into() }
}

async fn fetch(url: &str, method: &str) -> Result<Response> {
    let window = web_sys::window().ok_or_else(|| WebError::Page("no window".into()))?;
    let init = RequestInit::new();
    init.set_method(method);
    let request = Request::new_with_str_and_init(url, &init).map_err(|e| fetch_error(url, format!("{e:?}")))?;
    let response = JsFuture::from(window.fetch_with_request(&request))
        .await
        .map_err(|e| fetch_error(url, format!("network error ({})", WebError::from(e))))?;
    Ok(response.unchecked_into())
}

/// The `Content-Length` and `Last-Modified`/`ETag` that identify a version.
fn version_of(response: &Response) -> (Option<String>, Option<String>) {
    let headers = response.headers();
    let length = headers.get("content-length").ok().flatten();
    let tag = headers.get("etag").ok().flatten().or_else(|| headers.get("last-modified").ok().flatten());
    (length, tag)
}

async fn open_cache() -> Option<Cache> {
    let window = web_sys::window()?;
    // Cache Storage exists only in secure contexts (https, localhost).
    let caches = window.caches().ok()?;
    JsFuture::from(caches.open(CACHE_NAME)).await.ok()?.dyn_into().ok()
}

/// A cached copy of `url`, if its version still matches the server's (or
/// the server cannot be asked).
async fn from_cache(cache: &Cache, url: &str) -> Option<Vec<u8>> {
    let hit = JsFuture::from(cache.match_with_str(url)).await.ok()?;
    let cached: Response = hit.dyn_into().ok()?;
    if let Ok(head) = fetch(url, "HEAD").await
        && head.ok()
        && version_of(&head) != version_of(&cached)
    {
        return None;
    }
    let buffer = JsFuture::from(cached.array_buffer().ok()?).await.ok()?;
    Some(Uint8Array::new(&buffer).to_vec())
}

/// Forgets a cached copy (e.g. one that failed validation).
pub async fn evict(url: &str) {
    if let Some(cache) = open_cache().await {
        let _ = JsFuture::from(cache.delete_with_str(url)).await;
    }
}

/// Where the bytes came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Network,
    Cache,
}

/// A downloaded weight file.
pub struct Download {
    pub bytes: Vec<u8>,
    pub origin: Origin,
    /// The response to keep in Cache Storage once the bytes are validated.
    pending: Option<Response>,
}

/// Downloads `url` (at most [`MAX_WEIGHTS_BYTES`]), calling
/// `progress(loaded, total)` as bytes arrive. With `use_cache`, a cached copy
/// of the server's current version is used instead.
pub async fn load(url: &str, use_cache: bool, progress: &dyn Fn(u64, Option<u64>)) -> Result<Download> {
    let cache = open_cache().await;
    if use_cache
        && let Some(cache) = &cache
        && let Some(bytes) = from_cache(cache, url).await
    {
        progress(bytes.len() as u64, Some(bytes.len() as u64));
        return Ok(Download { bytes, origin: Origin::Cache, pending: None });
    }
    let response = fetch(url, "GET").await?;
    if !response.ok() {
        return Err(fetch_error(url, format!("the server answered {} {}", response.status(), response.status_text())));
    }
    let too_big =
        |n: u64| fetch_error(url, format!("{n} bytes; weight files of up to {MAX_WEIGHTS_BYTES} bytes are loaded"));
    // The announced length sizes the progress bar, never an allocation beyond the cap.
    let total = version_of(&response).0.and_then(|l| l.parse::<u64>().ok());
    if let Some(n) = total.filter(|&n| n > MAX_WEIGHTS_BYTES) {
        return Err(too_big(n));
    }
    let for_cache = response.clone().ok();
    let body = response.body().ok_or_else(|| fetch_error(url, "empty response"))?;
    let reader: ReadableStreamDefaultReader = body.get_reader().unchecked_into();
    let mut bytes = Vec::with_capacity(total.unwrap_or(0) as usize);
    loop {
        let chunk = JsFuture::from(reader.read())
            .await
            .map_err(|e| fetch_error(url, format!("download broke off ({})", WebError::from(e))))?;
        if Reflect::get(&chunk, &"done".into()).map(|d| d.is_truthy()).unwrap_or(true) {
            break;
        }
        let value: JsValue = Reflect::get(&chunk, &"value".into()).map_err(WebError::from)?;
        let chunk = Uint8Array::new(&value);
        let len = bytes.len() as u64 + u64::from(chunk.length());
        if len > MAX_WEIGHTS_BYTES {
            let _ = JsFuture::from(reader.cancel()).await;
            return Err(too_big(len));
        }
        bytes.extend(chunk.to_vec());
        progress(bytes.len() as u64, total);
    }
    Ok(Download { bytes, origin: Origin::Network, pending: for_cache })
}

/// Keeps a downloaded file in Cache Storage for later visits; call it only
/// after the bytes were validated.
pub async fn remember(url: &str, download: Download) {
    if let (Some(cache), Some(response)) = (open_cache().await, download.pending) {
        let _ = JsFuture::from(cache.put_with_str(url, &response)).await;
    }
}
