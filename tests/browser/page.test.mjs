// End-to-end test of the demo page in headless Chromium: it loads the built
// site, checks the backend line, moves a temperature slider with the
// keyboard, and checks that the face grid changed and is not blank. Saves a
// screenshot per run. Also: the page stays responsive while the engine's
// worker inpaints, a missing weight file gives a message on the page, an element missing from the page fails the load and is named, a
// foreign `?model=` is refused, a poisoned cache entry is replaced,
// an oversized upload is refused, and "Play walk" clicked twice stops.
// Usage: node page.test.mjs DIST_DIR OUT_DIR
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import puppeteer from 'puppeteer-core';
import { serve, chromeArgs, chromePath } from './serve.mjs';

const [dist = '../../dist', out = '../../target/browser'] = process.argv.slice(2);
const TIMEOUT = 10 * 60 * 1000;
fs.mkdirSync(out, { recursive: true });

async function gridPixels(page) {
  return page.$eval('#sample-grid', (c) => Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data));
}

function spread(pixels) {
  const values = pixels.filter((_, i) => i % 4 !== 3);
  const mean = values.reduce((a, b) => a + b, 0) / values.length;
  return Math.sqrt(values.reduce((a, b) => a + (b - mean) ** 2, 0) / values.length);
}

async function run(browser, base, name, query, expectBackend) {
  const page = await browser.newPage();
  await page.setViewport({ width: 1000, height: 1200 });
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  await page.goto(base + query);
  await page.waitForSelector('#app[data-state="ready"], #app[data-state="failed"]', { timeout: TIMEOUT });
  const status = await page.$eval('#status', (e) => e.textContent);
  assert.equal(await page.$eval('#app', (e) => e.dataset.state), 'ready', `${name}: page did not start: ${status}`);
  // (The backend line may change after start-up: the page times both backends.)
  await page.waitForFunction((source) => new RegExp(source).test(document.querySelector('#backend').textContent),
    { timeout: TIMEOUT }, expectBackend.source).catch(() => {});
  const backend = await page.$eval('#backend', (e) => e.textContent);
  assert.match(backend, expectBackend, `${name}: backend line`);
  await page.waitForFunction(() => /faces in/.test(document.querySelector('#sample-status').textContent), { timeout: TIMEOUT });
  const before = await gridPixels(page);
  assert.ok(spread(before) > 10, `${name}: the face grid is blank`);

  // Move the coarsest level's temperature slider with the keyboard.
  const sliders = await page.$$('#sample-temps input[type=range]');
  assert.ok(sliders.length >= 2, `${name}: one slider per level`);
  const firstStatus = await page.$eval('#sample-status', (e) => e.textContent);
  await sliders[sliders.length - 1].focus();
  for (let i = 0; i < 4; i++) await page.keyboard.press('ArrowRight');
  await page.waitForFunction((s) => {
    const t = document.querySelector('#sample-status').textContent;
    return /faces in/.test(t) && t !== s;
  }, { timeout: TIMEOUT }, firstStatus).catch(() => {});
  // The job re-runs for the last value; wait until it settles.
  await new Promise((r) => setTimeout(r, 500));
  await page.waitForFunction(() => /faces in/.test(document.querySelector('#sample-status').textContent), { timeout: TIMEOUT });
  const after = await gridPixels(page);
  assert.ok(spread(after) > 10, `${name}: the face grid is blank after moving the slider`);
  const changed = after.filter((v, i) => v !== before[i]).length;
  assert.ok(changed > before.length / 20, `${name}: the grid did not change (${changed} values)`);
  await page.screenshot({ path: path.join(out, `page-${name}.png`), fullPage: true });
  assert.deepEqual(errors, [], `${name}: page errors`);
  console.log(`ok ${name}: ${backend}; ${changed} of ${before.length} grid values changed; screenshot ${out}/page-${name}.png`);
  await page.close();
}

// Every other panel once (CPU backend): its job runs and reports no error.
async function panels(browser, base) {
  const page = await browser.newPage();
  await page.setViewport({ width: 1000, height: 1200 });
  await page.goto(base + '?backend=cpu');
  await page.waitForSelector('#app[data-state="ready"]', { timeout: TIMEOUT });
  const settle = async (id, pattern) => {
    await page.waitForFunction((id, p) => new RegExp(p).test(document.getElementById(id).textContent)
      || document.getElementById(id).classList.contains('error'), { timeout: TIMEOUT }, id, pattern.source);
    const [text, error] = await page.$eval('#' + id, (e) => [e.textContent, e.classList.contains('error')]);
    assert.ok(!error, `${id}: ${text}`);
    return text;
  };
  await page.click('#tab-mix');
  console.log('  mix:', await settle('mix-status', /mixtures in/));
  await page.click('#tab-inpaint');
  await page.click('#inpaint-erase');
  console.log('  inpaint:', await settle('inpaint-status', /rounds in/));
  console.log('  inpaint stroke:', await brushStroke(page, settle));
  console.log('  responsive:', await responsive(page, settle));
  await page.click('#tab-explore');
  console.log('  explore:', await settle('explore-status', /Decoded in/));
  // Play, then Stop while the walk is still being computed: no animation may start.
  await page.click('#walk-play');
  await page.click('#walk-play');
  console.log('  walk:', await settle('walk-status', /frames of level/));
  const still = await page.$eval('#walk-canvas', (c) => c.toDataURL());
  await new Promise((r) => setTimeout(r, 1000));
  assert.equal(await page.$eval('#walk-canvas', (c) => c.toDataURL()), still, 'a stopped walk keeps still');
  assert.equal(await page.$eval('#walk-play', (b) => b.getAttribute('aria-pressed')), 'false');
  await page.click('#walk-play');
  await settle('walk-status', /frames of level/);
  await page.click('#walk-play');
  await page.click('#tab-receptive');
  const first = await settle('rf-status', /pixels;/);
  console.log('  receptive:', first);
  await page.focus('#rf-face');
  await page.keyboard.press('ArrowRight');
  await page.waitForFunction((s) => document.getElementById('rf-status').textContent !== s
    && /pixels;/.test(document.getElementById('rf-status').textContent), { timeout: TIMEOUT }, first);
  console.log('  receptive, next site:', await settle('rf-status', /pixels;/));
  await page.click('#tab-photo');
  // A generated face as the upload (never a dataset image), then a non-image.
  const png = await page.$eval('#inpaint-canvas', (c) => c.toDataURL('image/png'));
  const file = path.join(out, 'upload.png');
  fs.writeFileSync(file, Buffer.from(png.split(',')[1], 'base64'));
  await (await page.$('#photo-file')).uploadFile(file);
  console.log('  photo:', await settle('photo-status', /bits\/dim/));
  const junk = path.join(out, 'notes.txt');
  fs.writeFileSync(junk, 'not an image');
  await (await page.$('#photo-file')).uploadFile(junk);
  await page.waitForFunction(() => document.getElementById('photo-status').classList.contains('error'), { timeout: TIMEOUT });
  console.log('  non-image:', await page.$eval('#photo-status', (e) => e.textContent));
  // An oversized upload is refused before it is read.
  const huge = path.join(out, 'huge.png');
  fs.writeFileSync(huge, Buffer.alloc(21e6));
  await (await page.$('#photo-file')).uploadFile(huge);
  await page.waitForFunction(() => /photos of up to/.test(document.getElementById('photo-status').textContent), { timeout: TIMEOUT });
  console.log('  oversized:', await page.$eval('#photo-status', (e) => e.textContent));
  fs.rmSync(huge);
  await page.screenshot({ path: path.join(out, 'page-panels.png'), fullPage: true });
  console.log('ok panels');
  await page.close();
}

// Paints a horizontal stroke on the Inpaint canvas with the mouse: the
// completion (drawn while the brush moves, then once more) changes the
// painted pixels, fills them (not the painting grey), and nothing else.
async function brushStroke(page, settle) {
  await page.click('#inpaint-reset');
  await settle('inpaint-status', /Paint over/);
  const pixels = () => page.$eval('#inpaint-canvas', (c) => Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data));
  const size = await page.$eval('#inpaint-canvas', (c) => c.width);
  const radius = Number(await page.$eval('#inpaint-brush', (e) => e.value));
  const before = await pixels();
  const box = await (await page.$('#inpaint-canvas')).boundingBox();
  const at = (x, y) => [box.x + (x + 0.5) * box.width / size, box.y + (y + 0.5) * box.height / size];
  const [x0, x1, y] = [8, 20, 10];
  await page.mouse.move(...at(x0, y));
  await page.mouse.down();
  for (let x = x0 + 1; x <= x1; x++) await page.mouse.move(...at(x, y));
  await page.mouse.up();
  // Settled: the status names a finished fill and stays the same for a while.
  let text = await settle('inpaint-status', /rounds in/);
  for (;;) {
    await new Promise((r) => setTimeout(r, 1000));
    const again = await settle('inpaint-status', /rounds in/);
    if (again === text) break;
    text = again;
  }
  const after = await pixels();
  const outside = [];
  let [near, filled] = [0, 0];
  for (let s = 0; s < size * size; s++) {
    const [px, py] = [s % size, Math.floor(s / size)];
    const distance = Math.hypot(Math.max(x0 - px, 0, px - x1), py - y);
    const changed = [0, 1, 2].some((c) => before[4 * s + c] !== after[4 * s + c]);
    const grey = [0, 1, 2].every((c) => Math.abs(after[4 * s + c] - 127.5) <= 1);
    if (changed && distance > radius + 1e-9) outside.push(s);
    if (distance <= 1) {
      near += 1;
      if (changed && !grey) filled += 1;
    }
  }
  assert.deepEqual(outside, [], 'pixels changed outside the brush stroke');
  assert.ok(filled >= 0.8 * near, `only ${filled} of the ${near} pixels on the stroke were filled`);
  return `${filled} of ${near} pixels on the stroke filled, none changed outside it; ${text}`;
}

// The page keeps running while the engine works (it is in a Web Worker): a
// 5 ms timer keeps ticking through a 32-round inpainting fill. Were the fill
// on the main thread, the longest gap between ticks would be the fill itself.
async function responsive(page, settle) {
  await page.click('#inpaint-reset');
  await settle('inpaint-status', /Paint over/);
  await page.$eval('#inpaint-rounds', (e) => { e.value = e.max; e.dispatchEvent(new Event('input')); });
  await settle('inpaint-status', /Paint over/);
  const r = await page.evaluate(() => new Promise((resolve) => {
    const status = document.getElementById('inpaint-status');
    const rounds = document.getElementById('inpaint-rounds').value;
    const ticks = [];
    const timer = setInterval(() => ticks.push(performance.now()), 5);
    const t0 = performance.now();
    const observer = new MutationObserver(() => {
      if (!new RegExp(`^${rounds} rounds in`).test(status.textContent) && !status.classList.contains('error')) return;
      const t1 = performance.now();
      clearInterval(timer);
      observer.disconnect();
      const points = [t0, ...ticks.filter((t) => t > t0 && t < t1), t1];
      const maxGap = Math.max(...points.slice(1).map((t, i) => t - points[i]));
      resolve({ maxGap, busy: t1 - t0, ticks: points.length - 2, text: status.textContent, error: status.classList.contains('error') });
    });
    observer.observe(status, { childList: true, characterData: true, subtree: true });
    document.getElementById('inpaint-erase').click();
  }));
  assert.ok(!r.error, `inpaint-status: ${r.text}`);
  assert.ok(r.busy > 50, `the fill took ${r.busy.toFixed(0)} ms: too short to tell a frozen page from a live one`);
  assert.ok(r.maxGap < Math.max(50, r.busy / 4),
    `the page froze for ${r.maxGap.toFixed(0)} ms of a ${r.busy.toFixed(0)} ms fill (the engine runs on the main thread?)`);
  return `a 5 ms timer ticked ${r.ticks} times during a ${r.busy.toFixed(0)} ms fill, longest gap ${r.maxGap.toFixed(0)} ms; ${r.text}`;
}

async function missingWeights(browser, base) {
  const page = await browser.newPage();
  await page.goto(base + '?backend=cpu&model=models/missing.rgflow');
  await page.waitForSelector('#app[data-state="failed"]', { timeout: TIMEOUT });
  const status = await page.$eval('#status', (e) => e.textContent);
  assert.match(status, /missing\.rgflow.*404/, 'message for a missing weight file');
  console.log(`ok missing weights: “${status}”`);
  await page.close();
}

// The page finds every element it uses at start: one missing fails the load
// and names it (not later, on a click).
async function missingElement(browser, base) {
  const html = fs.readFileSync(path.join(dist, 'index.html'), 'utf8');
  assert.ok(html.includes('id="mix-out"'), 'the page has #mix-out');
  const page = await browser.newPage();
  await page.setRequestInterception(true);
  page.on('request', (req) => {
    if (new URL(req.url()).pathname === '/') {
      req.respond({ status: 200, contentType: 'text/html; charset=utf-8', body: html.replace('id="mix-out"', 'id="mix-gone"') });
    } else {
      req.continue();
    }
  });
  await page.goto(base + '?backend=cpu');
  await page.waitForSelector('#app[data-state="failed"]', { timeout: TIMEOUT });
  const status = await page.$eval('#status', (e) => e.textContent);
  assert.match(status, /#mix-out is missing/, 'message for a missing element');
  console.log(`ok missing element: “${status}”`);
  await page.close();
}

// ?model= loads weight files from this site only.
async function foreignWeights(browser, base) {
  for (const model of ['https://example.com/evil.rgflow', 'data:application/octet-stream;base64,AAAA']) {
    const page = await browser.newPage();
    await page.goto(base + '?backend=cpu&model=' + encodeURIComponent(model));
    await page.waitForSelector('#app[data-state="failed"]', { timeout: TIMEOUT });
    const status = await page.$eval('#status', (e) => e.textContent);
    assert.match(status, /only weight files on this site/, `message for ?model=${model}`);
    console.log(`ok foreign weights refused: “${status}”`);
    await page.close();
  }
}

// A cached weight file that does not load (here: garbage with the server's
// size and date, so it passes revalidation) is evicted and fetched again.
async function poisonedCache(browser, base) {
  const page = await browser.newPage();
  await page.goto(base + '?backend=cpu');
  await page.waitForSelector('#app[data-state="ready"]', { timeout: TIMEOUT });
  const url = new URL('models/celeba32.rgflow', base).href;
  const cachedLength = () => page.evaluate(async (u) => {
    const hit = await (await caches.open('rgflow-weights')).match(u);
    return hit ? (await hit.arrayBuffer()).byteLength : -1;
  }, url);
  const real = await cachedLength();
  assert.ok(real > 1000, `the validated file is cached (${real} bytes)`);
  await page.evaluate(async (u) => {
    const head = await fetch(u, { method: 'HEAD' });
    const headers = { 'content-length': head.headers.get('content-length'), 'last-modified': head.headers.get('last-modified') };
    const garbage = new Uint8Array(Number(headers['content-length'])).fill(7);
    await (await caches.open('rgflow-weights')).put(u, new Response(garbage, { headers }));
  }, url);
  assert.equal(await cachedLength(), real, 'the poisoned entry has the real size');
  await page.reload();
  await page.waitForSelector('#app[data-state="ready"], #app[data-state="failed"]', { timeout: TIMEOUT });
  const status = await page.$eval('#status', (e) => e.textContent);
  assert.equal(await page.$eval('#app', (e) => e.dataset.state), 'ready', `page after a poisoned cache: ${status}`);
  const bytes = await page.evaluate(async (u) => {
    const hit = await (await caches.open('rgflow-weights')).match(u);
    return Array.from(new Uint8Array(await hit.arrayBuffer()).slice(0, 16));
  }, url);
  assert.ok(bytes.some((b) => b !== 7), 'the poisoned entry was replaced by the real file');
  console.log('ok poisoned cache entry evicted and re-fetched');
  await page.close();
}

const server = await serve(dist);
try {
  const gpu = await puppeteer.launch({ executablePath: chromePath(), args: chromeArgs(true), protocolTimeout: TIMEOUT });
  try {
    await run(gpu, server.url, 'webgpu', '?backend=webgpu', /^WebGPU$/);
    // No backend asked for: the page times both workers and says which won.
    await run(gpu, server.url, 'auto', '',
      /^(WebGPU — faster here than the CPU|CPU — faster here than WebGPU) \(\d+ ms per face on the CPU, \d+ on WebGPU\)$/);
    await run(gpu, server.url, 'cpu', '?backend=cpu', /CPU/);
    await panels(gpu, server.url);
    await missingWeights(gpu, server.url);
    await missingElement(gpu, server.url);
    await foreignWeights(gpu, server.url);
    await poisonedCache(gpu, server.url);
  } finally {
    await gpu.close();
  }
  // Without the WebGPU flag the page must fall back to the CPU and say so.
  const plain = await puppeteer.launch({ executablePath: chromePath(), args: chromeArgs(false), protocolTimeout: TIMEOUT });
  try {
    await run(plain, server.url, 'fallback', '', /CPU — /);
  } finally {
    await plain.close();
  }
} finally {
  server.close();
}
