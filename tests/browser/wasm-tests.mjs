// Runs the demo's wasm-bindgen tests (web/tests/browser.rs) in headless
// Chromium with WebGPU, driving the page of `wasm-bindgen-test-runner`'s
// interactive mode over CDP. (Its own chromedriver mode gives up when the
// renderer is busy for 30 s, which SwiftShader's shader compilation exceeds.)
// Usage: node wasm-tests.mjs PATH/TO/browser-HASH.wasm
import { spawn } from 'node:child_process';
import puppeteer from 'puppeteer-core';
import { chromeArgs, chromePath } from './serve.mjs';

const [wasm] = process.argv.slice(2);
if (!wasm) throw new Error('usage: node wasm-tests.mjs TEST.wasm');
const TIMEOUT = 30 * 60 * 1000;
const address = `127.0.0.1:${20000 + Math.floor(Math.random() * 20000)}`;
const runner = spawn('wasm-bindgen-test-runner', [wasm], {
  env: { ...process.env, NO_HEADLESS: '1', WASM_BINDGEN_TEST_ADDRESS: address },
  stdio: ['ignore', 'pipe', 'inherit'],
});
await new Promise((resolve, reject) => {
  runner.stdout.on('data', (d) => { if (String(d).includes('available at')) resolve(); });
  runner.on('exit', (code) => reject(new Error(`wasm-bindgen-test-runner exited with ${code}`)));
});

let failed = true;
const browser = await puppeteer.launch({ executablePath: chromePath(), args: chromeArgs(true), protocolTimeout: TIMEOUT });
try {
  const page = await browser.newPage();
  page.on('console', (m) => { if (m.type() === 'error') console.error(`console: ${m.text()}`); });
  await page.goto(`http://${address}/`);
  await page.waitForFunction(() => /test result: /.test(document.getElementById('output').textContent), { timeout: TIMEOUT, polling: 1000 });
  const output = await page.$eval('#output', (e) => e.textContent);
  console.log(output);
  failed = !/test result: ok\./.test(output);
} finally {
  await browser.close();
  runner.kill();
}
process.exit(failed ? 1 : 0);
