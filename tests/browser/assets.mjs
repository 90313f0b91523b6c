// A copied `hearth` binary, started in an empty folder, serves pages that load their CSS and
// scripts from the files compiled into it (tests/api/copied_binary.rs starts it):
//   a. the home page and sign-up load the stylesheet from its content-hash URL, and it applies
//   b. in the chat lobby chat.js connects; a message sent appears in the room
//   c. a new document's editor loads its scripts (docs.js, then the yjs bundle) and gets online
//   d. every stylesheet and script the pages asked for came from a hashed URL, 200, with its
//      media type and a year's immutable caching; no request for one failed
import { BASE, expectText, fail, run, signup, step, uniqueName } from './lib.mjs';

const password = 'correct horse battery';
const hashed = /^\/static\/.+\.[0-9a-f]{8}\.(css|js|mjs|svg)$/;
const mediaTypes = { css: 'text/css', js: 'text/javascript', mjs: 'text/javascript', svg: 'image/svg+xml' };

await run(async ({ page }) => {
  const assets = [];
  const failures = [];
  // Stylesheets, scripts and anything under /static: the event stream a page leaves is aborted
  // by design, and the browser's own /favicon.ico is not the site's.
  const isAsset = (req) =>
    ['stylesheet', 'script'].includes(req.resourceType()) || new URL(req.url()).pathname.startsWith('/static/');
  page.on('response', (res) => {
    if (!isAsset(res.request())) return;
    assets.push(res);
    if (res.status() >= 400) failures.push(`${res.status()} for ${res.url()}`);
  });
  // The browser fetches the favicon in the background and drops that fetch (net::ERR_ABORTED)
  // when the page navigates first; that says nothing about the server. A stylesheet or script is
  // part of the page's own load, so any failure of one counts.
  const droppedByNavigation = (req) =>
    !['stylesheet', 'script'].includes(req.resourceType()) && req.failure()?.errorText === 'net::ERR_ABORTED';
  page.on('requestfailed', (req) => {
    if (isAsset(req) && !droppedByNavigation(req)) failures.push(`failed: ${req.url()}: ${req.failure()?.errorText}`);
  });

  await step('a. the stylesheet loads from its hashed URL and applies', async () => {
    await page.goto(`${BASE}/`);
    const href = await page.locator('link[rel=stylesheet]').getAttribute('href');
    if (!hashed.test(href)) fail(`the stylesheet's URL is ${href}, not a content-hash URL`);
    // app.css lays the navigation out as a flex row; without the stylesheet it is a block.
    const display = await page.locator('header.nav').evaluate((nav) => getComputedStyle(nav).display);
    if (display !== 'flex') fail(`the navigation's display is ${display}: app.css did not apply`);
    await signup(page, uniqueName('ada'), password);
  });

  await step('b. chat.js connects and a message sent appears', async () => {
    await page.goto(`${BASE}/chat/lobby`);
    await page.locator('#status.online').waitFor();
    const text = `hello from a copied binary ${Date.now()}`;
    await page.locator('#body').fill(text);
    await page.getByRole('button', { name: 'Send' }).click();
    await page.locator('.msg .msg-body', { hasText: text }).waitFor();
  });

  await step('c. a document editor loads docs.js and the yjs bundle and gets online', async () => {
    await page.goto(`${BASE}/docs`);
    await page.locator('form[action="/docs"] input[name=title]').fill('Copied binary notes');
    await Promise.all([page.waitForNavigation(), page.getByRole('button', { name: 'Create document' }).click()]);
    await page.locator('#status.online').waitFor();
    await expectText(page, 'Copied binary notes');
  });

  await step('d. every stylesheet and script came from a hashed URL, cached for a year', async () => {
    if (failures.length) fail(`requests failed:\n  ${failures.join('\n  ')}`);
    const seen = new Set();
    for (const res of assets) {
      const url = new URL(res.url());
      if (url.origin !== new URL(BASE).origin) fail(`a request left the server: ${url}`);
      if (!hashed.test(url.pathname)) fail(`${url.pathname} is not a content-hash URL`);
      if (res.status() !== 200) fail(`${url.pathname}: ${res.status()}`);
      const headers = await res.allHeaders();
      const extension = url.pathname.split('.').pop();
      if (!headers['content-type']?.startsWith(mediaTypes[extension])) {
        fail(`${url.pathname} is ${headers['content-type']}`);
      }
      if (headers['cache-control'] !== 'public, max-age=31536000, immutable') {
        fail(`${url.pathname} has Cache-Control ${headers['cache-control']}`);
      }
      seen.add(url.pathname.replace(/\.[0-9a-f]{8}\./, '.'));
    }
    for (const wanted of ['/static/app.css', '/static/js/live.js', '/static/js/chat.js', '/static/js/docs.js', '/static/vendor/yjs.mjs']) {
      if (!seen.has(wanted)) fail(`the pages never loaded ${wanted}; they loaded ${[...seen].join(', ')}`);
    }
  });
});
