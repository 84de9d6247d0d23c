// Browser benchmark: loads the built page with `?bench` on every backend
// headless Chromium offers here and prints the page's figures (time to
// first face, ms per face in a batch of 16, ms per inpainting stroke).
// Usage: node bench.mjs [DIST_DIR]
import puppeteer from 'puppeteer-core';
import { serve, chromeArgs, chromePath } from './serve.mjs';

const [dist = '../../dist'] = process.argv.slice(2);
const server = await serve(dist);
try {
  for (const [name, query] of [['webgpu', '?bench'], ['cpu', '?bench&backend=cpu']]) {
    const browser = await puppeteer.launch({ executablePath: chromePath(), args: chromeArgs(true), protocolTimeout: 20 * 60 * 1000 });
    try {
      const page = await browser.newPage();
      await page.goto(server.url + query);
      await page.waitForSelector('#bench[data-done], #app[data-state="failed"]', { timeout: 20 * 60 * 1000 });
      const text = await page.$eval('#bench', (e) => e.textContent || '');
      const status = await page.$eval('#status', (e) => e.textContent);
      console.log(`== ${name}\n${text || 'no result: ' + status}\n`);
    } finally {
      await browser.close();
    }
  }
} finally {
  server.close();
}
