//! Fetching the weight file: progress while it streams, the browser's Cache
//! Storage for later visits (revalidated against the server's size and
//! date when the server answers), and a clear error for a missing file.

use js_sys::{Reflect, Uint8Array};
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use web_sys::{Cache, ReadableStreamDefaultReader, Request, RequestInit, Response};

use crate::error::{Result, WebError};

/// Name of the Cache Storage bucket.
const CACHE_NAME: &str = "rgflow-weights";

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

/// Downloads `url`, calling `progress(loaded, total)` as bytes arrive.
pub async fn load(url: &str, progress: &dyn Fn(u64, Option<u64>)) -> Result<(Vec<u8>, Origin)> {
    let cache = open_cache().await;
    if let Some(cache) = &cache
        && let Some(bytes) = from_cache(cache, url).await
    {
        progress(bytes.len() as u64, Some(bytes.len() as u64));
        return Ok((bytes, Origin::Cache));
    }
    let response = fetch(url, "GET").await?;
    if !response.ok() {
        return Err(fetch_error(url, format!("the server answered {} {}", response.status(), response.status_text())));
    }
    let total = version_of(&response).0.and_then(|l| l.parse::<u64>().ok());
    let for_cache = response.clone().ok();
    let body = response.body().ok_or_else(|| fetch_error(url, "empty response"))?;
    let reader: ReadableStreamDefaultReader = body.get_reader().unchecked_into();
    let mut bytes = Vec::with_capacity(total.unwrap_or(0) as usize);
    loop {
        let chunk = JsFuture::from(reader.read()).await.map_err(|e| fetch_error(url, format!("download broke off ({})", WebError::from(e))))?;
        if Reflect::get(&chunk, &"done".into()).map(|d| d.is_truthy()).unwrap_or(true) {
            break;
        }
        let value: JsValue = Reflect::get(&chunk, &"value".into()).map_err(WebError::from)?;
        bytes.extend(Uint8Array::new(&value).to_vec());
        progress(bytes.len() as u64, total);
    }
    if let (Some(cache), Some(copy)) = (cache, for_cache) {
        let _ = JsFuture::from(cache.put_with_str(url, &copy)).await;
    }
    Ok((bytes, Origin::Network))
}
