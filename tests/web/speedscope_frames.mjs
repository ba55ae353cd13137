#!/usr/bin/env node
// Open a speedscope-format JSON file in the real speedscope web app (the
// `speedscope` npm package's built dist/release) under headless Chromium, and
// print what speedscope itself parsed, as JSON on stdout:
//
//   {"profiles": [names, in speedscope's order],
//    "frames": [sorted union of the frame names of every profile],
//    "profile_frames": [[sorted frame names of profile 0], [... profile 1], ...]}
//
// The names are read from speedscope's DOM: profile names from the profile
// selector in the toolbar, frame names from the Sandwich view's table (a
// virtualised list, so it is scrolled through). Every profile is visited by
// speedscope's own "n"/"p" (next/previous profile) keys.
//
// Usage: node tests/web/speedscope_frames.mjs FILE.json
// Exit 0 on success; on any failure an error on stderr and exit 1 (2 on the
// overall 60 s timeout).

import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { createRequire } from 'node:module';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const require = createRequire(import.meta.url);
const OVERALL_TIMEOUT_MS = 60_000;
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const CHROMIUM_ARGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
];

const cleanups = [];
function cleanupSync() {
  while (cleanups.length) {
    try { cleanups.pop()(); } catch { /* best effort */ }
  }
}
function die(msg, code = 1) {
  process.stderr.write(`speedscope_frames: error: ${msg}\n`);
  cleanupSync();
  process.exit(code);
}

const MIME = {
  '.html': 'text/html; charset=utf-8', '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8', '.json': 'application/json', '.wasm': 'application/wasm',
  '.png': 'image/png', '.ico': 'image/x-icon', '.woff2': 'font/woff2', '.txt': 'text/plain',
};

function findDist() {
  let pkgJson;
  try {
    pkgJson = require.resolve('speedscope/package.json', { paths: [HERE] });
  } catch {
    throw new Error(`the speedscope npm package is not installed: run \`npm ci --prefix ${path.relative(process.cwd(), HERE) || '.'}\``);
  }
  const dist = path.join(path.dirname(pkgJson), 'dist', 'release');
  if (!fs.existsSync(path.join(dist, 'index.html'))) throw new Error(`no index.html in ${dist}`);
  return dist;
}

// Serve speedscope's dist directory at / and the profile at /profile/<basename>.
function serve(dist, file) {
  const profilePath = '/profile/' + encodeURIComponent(path.basename(file));
  const server = http.createServer((req, res) => {
    let pathname;
    try { pathname = decodeURIComponent(new URL(req.url, 'http://127.0.0.1').pathname); } catch { pathname = ''; }
    let target;
    if (pathname === decodeURIComponent(profilePath)) target = file;
    else {
      const rel = pathname === '/' ? 'index.html' : pathname.replace(/^\/+/, '');
      target = path.resolve(dist, rel);
      if (target !== dist && !target.startsWith(dist + path.sep)) target = null;
    }
    if (!target || req.method !== 'GET') { res.writeHead(404); res.end(); return; }
    fs.readFile(target, (err, data) => {
      if (err) { res.writeHead(404); res.end(); return; }
      res.writeHead(200, {
        'Content-Type': MIME[path.extname(target).toLowerCase()] || 'application/octet-stream',
        'Cache-Control': 'no-store',
      });
      res.end(data);
    });
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve({ server, port: server.address().port, profilePath }));
  });
}

// --- functions evaluated inside the page ---------------------------------

// The toolbar's view buttons are <div><span>emoji</span>Label</div>.
const VIEW_BUTTON = (label) => `xpath=//div[span][normalize-space(text())="${label}"]`;

// State of the profile selector: {current, count, names}. With several
// profiles the toolbar shows "name (i/N)" and holds a (hidden) drop-down table
// of all profiles; with one it shows just the name, as text.
function readProfileSelector() {
  const sandwich = [...document.querySelectorAll('div')]
    .find((d) => d.firstElementChild?.tagName === 'SPAN' && [...d.childNodes].some(
      (n) => n.nodeType === 3 && n.textContent.trim() === 'Sandwich'));
  if (!sandwich) return null;
  const views = sandwich.parentElement;
  const toolbar = views.parentElement;
  const between = [];
  for (let n = views.nextSibling; n && n !== toolbar.lastChild; n = n.nextSibling) between.push(n);
  const center = between.find((n) => n.nodeType === 1);
  if (center) {
    const label = center.firstElementChild; // <span>name <span>(i/N)</span></span>
    const m = label?.lastElementChild?.textContent.match(/^\((\d+)\/(\d+)\)$/);
    if (!m) return null;
    const rows = [...center.querySelectorAll('tbody tr')].map((tr) => {
      const cells = tr.querySelectorAll('td');
      return { index: Number(cells[0]?.textContent), name: cells[1]?.textContent ?? tr.title };
    }).sort((a, b) => a.index - b.index);
    return { current: Number(m[1]), count: Number(m[2]), names: rows.map((r) => r.name) };
  }
  return { current: 1, count: 1, names: [between.map((n) => n.textContent).join('')] };
}

// Scroll through the Sandwich view's virtualised table and return every
// row's "Symbol Name" cell text, in table order.
async function readSandwichTable() {
  const frame = () => new Promise((r) => requestAnimationFrame(r));
  const th = [...document.querySelectorAll('th')].find((t) => t.textContent.trim() === 'Symbol Name');
  if (!th) throw new Error('Sandwich table header "Symbol Name" not found');
  const col = [...th.parentElement.children].indexOf(th);
  const scroller = th.closest('table').nextElementSibling;
  const sizer = scroller?.firstElementChild;
  if (!sizer) throw new Error('Sandwich table body not found');
  const rows = new Map();
  let rowH = 0;
  const collect = () => {
    const base = sizer.getBoundingClientRect().top;
    for (const tr of sizer.querySelectorAll('tr')) {
      const r = tr.getBoundingClientRect();
      if (!rowH) rowH = r.height;
      const idx = Math.round((r.top - base) / rowH);
      rows.set(idx, tr.children[col]?.textContent ?? '');
    }
  };
  scroller.scrollTop = 0;
  await frame();
  collect();
  const total = sizer.getBoundingClientRect().height;
  if (total === 0) return [];
  if (!rowH) throw new Error('Sandwich table has height but no rows');
  const count = Math.round(total / rowH);
  const step = Math.max(rowH, Math.floor(scroller.clientHeight / rowH - 1) * rowH);
  for (let top = 0; ; top += step) {
    scroller.scrollTop = top;
    scroller.dispatchEvent(new Event('scroll'));
    const want = Math.min(count - 1, Math.floor((top + scroller.clientHeight - 1) / rowH));
    for (let tries = 0; tries < 50; tries++) {
      await frame();
      collect();
      if (rows.has(Math.floor(top / rowH)) && rows.has(want)) break;
    }
    if (top + scroller.clientHeight >= total) break;
  }
  const missing = [];
  for (let i = 0; i < count; i++) if (!rows.has(i)) missing.push(i);
  if (missing.length) throw new Error(`Sandwich table: ${missing.length} of ${count} rows never rendered`);
  return [...Array(count).keys()].map((i) => rows.get(i));
}

// --- main ---------------------------------------------------------------

async function main() {
  const args = process.argv.slice(2);
  if (args.length !== 1 || args[0].startsWith('-')) {
    throw new Error('usage: node tests/web/speedscope_frames.mjs FILE.json');
  }
  const file = path.resolve(args[0]);
  if (!fs.statSync(file, { throwIfNoEntry: false })?.isFile()) throw new Error(`no such file: ${args[0]}`);
  if (!fs.existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} not found: run \`make deps-web\``);
  const dist = findDist();
  let chromium;
  try {
    const pw = await import(pathToFileURL(require.resolve('playwright-core', { paths: [HERE] })).href);
    chromium = pw.chromium ?? pw.default?.chromium;
  } catch {
    throw new Error('playwright-core is not installed: run `make deps-web`');
  }
  if (!chromium) throw new Error('playwright-core has no chromium export');

  const { server, port, profilePath } = await serve(dist, file);
  cleanups.push(() => server.close());
  const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'speedscope-frames-'));
  cleanups.push(() => fs.rmSync(userDataDir, { recursive: true, force: true }));

  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM,
    headless: true,
    args: CHROMIUM_ARGS,
    viewport: { width: 1280, height: 3000 },
    timeout: 30_000,
  });
  try {
    context.setDefaultTimeout(30_000);
    const page = context.pages()[0] ?? await context.newPage();
    // Things speedscope says when it fails to import: an alert, page errors,
    // console errors. Any of them ends the wait with an error.
    let failure = null;
    const consoleErrors = [];
    let signalFailure;
    const failed = new Promise((_, reject) => { signalFailure = reject; });
    failed.catch(() => {});
    const fail = (msg) => { if (!failure) { failure = msg; signalFailure(new Error(msg)); } };
    page.on('dialog', (d) => { fail(`speedscope showed a dialog: ${d.message()}`); d.dismiss().catch(() => {}); });
    page.on('pageerror', (e) => fail(`page error: ${e.message}`));
    page.on('console', (m) => { if (m.type() === 'error') consoleErrors.push(m.text()); });

    const base = `http://127.0.0.1:${port}`;
    const url = `${base}/index.html#profileURL=${encodeURIComponent(base + profilePath)}`;
    await page.goto(url, { waitUntil: 'load' });

    // Loaded: the toolbar has its view buttons; failed: the error screen.
    const loaded = page.locator(VIEW_BUTTON('Sandwich')).waitFor({ state: 'visible' });
    const errorScreen = page.getByText('Something went wrong.').waitFor({ state: 'visible' })
      .then(() => { throw new Error(`speedscope could not load the profile: ${consoleErrors.join(' | ') || 'see JS console'}`); });
    errorScreen.catch(() => {});
    await Promise.race([loaded, errorScreen, failed]);

    await Promise.race([page.locator(VIEW_BUTTON('Sandwich')).click(), failed]);
    await Promise.race([page.locator('th', { hasText: 'Symbol Name' }).first().waitFor(), failed]);

    let sel = await page.evaluate(readProfileSelector);
    if (!sel) throw new Error('profile selector not found in the toolbar');
    if (sel.names.length !== sel.count) {
      throw new Error(`profile selector says ${sel.count} profiles but lists ${sel.names.length}`);
    }
    const goTo = async (key, expect) => {
      await page.keyboard.press(key);
      await page.waitForFunction(`(${readProfileSelector})()?.current === ${Number(expect)}`,
        undefined, { timeout: 10_000 });
    };
    while (sel.current > 1) { await goTo('p', sel.current - 1); sel.current -= 1; }

    const profileFrames = [];
    for (let i = 1; i <= sel.count; i++) {
      if (i > 1) await goTo('n', i);
      // Wait for the table to be rendered for this profile.
      await page.waitForFunction(() => [...document.querySelectorAll('th')].some((t) => t.textContent.trim() === 'Symbol Name'));
      const names = await page.evaluate(readSandwichTable);
      profileFrames.push([...new Set(names)].sort());
      if (failure) throw new Error(failure);
    }
    const frames = [...new Set(profileFrames.flat())].sort();
    process.stdout.write(JSON.stringify({ profiles: sel.names, frames, profile_frames: profileFrames }, null, 2) + '\n');
  } finally {
    await context.close().catch(() => {});
  }
}

const timer = setTimeout(() => die(`timed out after ${OVERALL_TIMEOUT_MS / 1000} s`, 2), OVERALL_TIMEOUT_MS);
process.on('exit', cleanupSync);
main().then(
  () => { clearTimeout(timer); cleanupSync(); process.exit(0); },
  (e) => { clearTimeout(timer); die(e?.message?.split('\n')[0] ?? String(e)); },
);
