// Browser test of conditional GET: a reloaded post page is revalidated (the server answers 304
// and Chromium shows the copy it kept), for an anonymous reader (a page-cache hit or the view's
// validators) and for a signed-in one (the view's own validators: the page cache never serves
// them), whose 304 stays `Cache-Control: private`.
//   a. anonymous: the post page answers 200 with an ETag
//   b. anonymous: a reload answers 304 and still shows the post
//   c. sign up in a second browser, open the post: 200, private
//   d. signed in: a reload answers 304, private, and still shows the post
// Needs POST_SLUG: a published post whose body is "Still here after a reload." (the Rust test
// tests/api/conditional.rs writes it). Screenshots in $SHOTS/conditional/.

import { BASE, TIMEOUT, expectText, fail, newPage, run, shot, signup, step, uniqueName } from './lib.mjs';

const slug = process.env.POST_SLUG;
if (!slug) fail('POST_SLUG is not set');
const url = `${BASE}/posts/${slug}`;
const body = 'Still here after a reload.';

/**
 * The status the server sends for the next response to `url`, as it came over the wire:
 * Playwright reports a revalidated page as the `200` Chromium shows from its cache, so this
 * reads Chromium's own network events (`responseReceivedExtraInfo` carries the raw status;
 * the two events may come in either order).
 */
async function nextWireStatus(page, url) {
  const cdp = await page.context().newCDPSession(page);
  const urls = new Map();
  const statuses = new Map();
  const seen = new Promise((resolve, reject) => {
    setTimeout(() => reject(new Error(`no response to ${url} within ${TIMEOUT} ms`)), TIMEOUT);
    const check = (id) => {
      if (urls.get(id) === url && statuses.has(id)) resolve(statuses.get(id));
    };
    cdp.on('Network.requestWillBeSent', (e) => {
      urls.set(e.requestId, e.request.url);
      check(e.requestId);
    });
    cdp.on('Network.responseReceivedExtraInfo', (e) => {
      statuses.set(e.requestId, { status: e.statusCode, headers: e.headers });
      check(e.requestId);
    });
  });
  await cdp.send('Network.enable');
  return { seen };
}

/**
 * Reloads `page` and checks that the server revalidated it (304) and that it still shows the
 * post; returns the 304's headers.
 */
async function reloadIs304(page, where) {
  const wire = await nextWireStatus(page, url);
  await page.reload();
  const { status, headers } = await wire.seen;
  if (status !== 304) fail(`${where}: the reload answered ${status}, not 304`);
  await expectText(page, body, where);
  return headers;
}

await run(async ({ browser, page }) => {
  await step('a. anonymous: the post page answers 200 with an ETag', async () => {
    const first = await page.goto(url);
    if (!first || first.status() !== 200) fail(`GET ${url} answered ${first && first.status()}`);
    if (!(await first.headerValue('etag'))) fail('no ETag on the post page');
    await expectText(page, body, 'the post page');
  });

  await step('b. anonymous: a reload answers 304 and still shows the post', async () => {
    await reloadIs304(page, 'anonymous reload');
    await shot(page, 'anonymous-reload.png');
  });

  // A browser of its own: this one keeps the anonymous copy for its max-age, Vary or not.
  const reader = await newPage(browser);
  await step('c. signed in: the post page answers 200, private', async () => {
    await signup(reader, uniqueName('reader'), 'correct horse battery');
    const first = await reader.goto(url);
    if (!first || first.status() !== 200) fail(`GET ${url} answered ${first && first.status()}`);
    const control = (await first.headerValue('cache-control')) || '';
    if (!control.includes('private')) fail(`a signed-in page is not private: ${control}`);
  });

  await step('d. signed in: a reload answers 304, private, and still shows the post', async () => {
    const headers = await reloadIs304(reader, 'signed-in reload');
    const control = headers['cache-control'] || headers['Cache-Control'] || '';
    if (!control.includes('private')) fail(`a signed-in 304 is not private: ${control}`);
    await shot(reader, 'signed-in-reload.png');
  });
});
