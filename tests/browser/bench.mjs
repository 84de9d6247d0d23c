// Browser benchmark: loads the built page with `?bench` on every backend
// headless Chromium offers here and prints the page's figures (time to
// first face, ms per face in a batch of 16, ms per inpainting stroke).
// Usage: node bench.mjs [DIST_DIR] [MINUTES_PER_BACKEND] [BACKENDS]
// BACKENDS is a comma-separated subset of cpu,webgpu,auto (default cpu,webgpu;
// auto: the page times both at start-up and keeps the faster).
import puppeteer from 'puppeteer-core';
import { serve, chromeArgs, chromePath } from './serve.mjs';

const [dist = '../../dist', minutes = '20', backends = 'cpu,webgpu'] = process.argv.slice(2);
const LIMIT = Number(minutes) * 60 * 1000;
const QUERIES = { cpu: '?bench&backend=cpu', webgpu: '?bench&backend=webgpu', auto: '?bench' };
const chosen = backends.split(',');
for (const name of chosen) {
  if (!(name in QUERIES)) throw new Error(`unknown backend '${name}' (expected a subset of ${Object.keys(QUERIES).join(',')})`);
}
const server = await serve(dist);
try {
  for (const name of chosen) {
    const query = QUERIES[name];
    const browser = await puppeteer.launch({ executablePath: chromePath(), args: chromeArgs(true), protocolTimeout: 20 * 60 * 1000 });
    try {
      const page = await browser.newPage();
      // When the page turns ready (its first face drawn), by the page's own
      // clock: the same measure for any build of the page.
      await page.evaluateOnNewDocument(() => {
        new MutationObserver((_, observer) => {
          const app = document.getElementById('app');
          if (app && app.dataset.state === 'ready') {
            window.__readyAt = performance.now();
            observer.disconnect();
          }
        }).observe(document, { subtree: true, attributes: true, attributeFilter: ['data-state'] });
      });
      await page.goto(server.url + query);
      // A slow backend (SwiftShader) reports what it measured within the limit.
      const finished = await page.waitForSelector('#bench[data-done], #app[data-state="failed"]', { timeout: LIMIT })
        .then(() => true, () => false);
      const text = await page.$eval('#bench', (e) => e.textContent || '');
      const status = await page.$eval('#status', (e) => e.textContent);
      const readyAt = await page.evaluate(() => window.__readyAt);
      const ready = readyAt === undefined ? '' : `page ready (first face drawn) ${readyAt.toFixed(0)} ms after navigation start\n`;
      console.log(`== ${name}${finished ? '' : ` (stopped after ${minutes} min)`}\n${ready}${text || 'no result: ' + status}\n`);
    } finally {
      await browser.close();
    }
  }
} finally {
  server.close();
}
