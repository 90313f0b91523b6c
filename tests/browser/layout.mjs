// The layout at a phone's and a laptop's width (#32): a member ($MEMBER_USER) and an admin
// ($ADMIN_USER), both with $PASSWORD; the member has published $LONG_SLUG, whose title is one
// long word, and has twelve unread notifications.
//
//   a. at 360, 390 and 1280 px no page scrolls sideways (the post with the long title, the
//      lists, the forms, an error page), anonymous and signed in; screenshots at 390 and 1280
//   b. at 390 px the main links are in the "Menu" panel, which opens and leads to a page
//   c. the account menu holds "Settings" and "Log out"; the tools (Ops, Dashboard) are apart,
//      and only for the admin (a member's only tool is the dev mailbox)
//   d. a two-digit unread count sits beside the bell, not over it
//   e. the first Tab reaches "Skip to content", which moves focus to the page's content
//   f. the favicon loads: no request of any page fails
//   h. the editor's Write / Preview tabs follow the arrow keys
//   g. axe-core finds no serious or critical accessibility violation on the main pages, at both
//      widths, anonymous and signed in
// Screenshots: <page>-390.png, <page>-1280.png, menu-open-390.png, user-menu-1280.png.
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { BASE, fail, login, newPage, run, shot, step } from './lib.mjs';

// axe-core, evaluated in the page through the DevTools protocol (the page's CSP forbids inline
// scripts, and rightly: the check must not need the policy relaxed).
const AXE = readFileSync(createRequire(import.meta.url).resolve('axe-core/axe.min.js'), 'utf8');

/** The serious and critical accessibility violations axe-core finds on `page`. */
async function axeViolations(page) {
  await page.evaluate(AXE);
  const found = await page.evaluate(async () => {
    const result = await window.axe.run(document, { resultTypes: ['violations'] });
    return result.violations
      .filter((v) => v.impact === 'serious' || v.impact === 'critical')
      .map((v) => `${v.impact} ${v.id}: ${v.help} (${v.nodes.slice(0, 3).map((n) => n.target.join(' ')).join('; ')})`);
  });
  return found;
}

const member = process.env.MEMBER_USER;
const admin = process.env.ADMIN_USER;
const password = process.env.PASSWORD;
const longSlug = process.env.LONG_SLUG;
if (!member || !admin || !password || !longSlug) fail('MEMBER_USER, ADMIN_USER, PASSWORD and LONG_SLUG are required');

const PAGES = [
  ['home', '/'],
  ['posts', '/posts'],
  ['post-long-title', `/posts/${longSlug}`],
  ['your-posts', '/me/posts'],
  ['author', `/authors/${member}`],
  ['chat', '/chat'],
  ['room', '/chat/lobby'],
  ['docs', '/docs'],
  ['notifications', '/notifications'],
  ['settings', '/account/settings'],
  ['write', '/posts/new'],
  ['not-found', '/no/such/page'],
];

const failed = [];

function watchRequests(page) {
  page.on('response', (res) => {
    // The one expected failure: the page that is not there.
    if (res.status() >= 400 && !res.url().endsWith('/no/such/page')) failed.push(`${res.status()} ${res.url()}`);
  });
  page.on('requestfailed', (req) => {
    // A request cut short by leaving the page (a live stream, an icon) is not a failure.
    if (req.failure()?.errorText !== 'net::ERR_ABORTED') failed.push(`failed: ${req.url()}: ${req.failure()?.errorText}`);
  });
}

async function sideways(page) {
  return page.evaluate(() => {
    const width = document.documentElement.clientWidth;
    const wide = [...document.querySelectorAll('body *')]
      .filter((el) => el.getBoundingClientRect().right > width + 1 && getComputedStyle(el).position !== 'fixed')
      .filter((el) => !el.closest('.dropdown-panel, .skip-link, .sr-only'))
      .slice(0, 3)
      .map((el) => `${el.tagName.toLowerCase()}.${el.className}`);
    return { scroll: document.documentElement.scrollWidth, width, wide };
  });
}

async function checkWidths(page, who) {
  for (const width of [360, 390, 1280]) {
    await page.setViewportSize({ width, height: width > 800 ? 800 : 844 });
    for (const [name, path] of PAGES) {
      await page.goto(`${BASE}${path}`);
      const found = await sideways(page);
      if (found.scroll > found.width) {
        fail(`${who} at ${width} px: ${path} is ${found.scroll} px wide (${found.wide.join(', ')})`);
      }
      if (width !== 360) await shot(page, `${who}-${name}-${width}.png`);
    }
  }
}

await run(async ({ browser, page }) => {
  watchRequests(page);

  await step('a. anonymous pages fit 360, 390 and 1280 px', async () => {
    for (const width of [360, 1280]) {
      await page.setViewportSize({ width, height: 800 });
      for (const path of ['/', '/posts', `/posts/${longSlug}`, '/login', '/signup', '/no/such/page']) {
        await page.goto(`${BASE}${path}`);
        const found = await sideways(page);
        if (found.scroll > found.width) fail(`anonymous at ${width} px: ${path} is ${found.scroll} px wide (${found.wide.join(', ')})`);
      }
    }
    await page.setViewportSize({ width: 390, height: 844 });
    await page.goto(`${BASE}/`);
    await shot(page, 'anonymous-home-390.png');
  });

  await step('a. signed-in pages fit 360, 390 and 1280 px', async () => {
    await login(page, member, password);
    await checkWidths(page, 'member');
  });

  await step('b. at 390 px the main links are in the Menu panel, which leads to a page', async () => {
    await page.setViewportSize({ width: 390, height: 844 });
    await page.goto(`${BASE}/`);
    const header = page.locator('header.nav');
    const height = (await header.boundingBox()).height;
    if (height > 70) fail(`the header is ${height} px tall at 390 px`);
    if (await page.locator('.nav-main').isVisible()) fail('the wide navigation shows at 390 px');
    await page.locator('[data-testid=menu] > summary').click();
    const docs = page.locator('[data-testid=menu]').getByRole('link', { name: 'Docs' });
    await docs.waitFor({ state: 'visible' });
    await shot(page, 'menu-open-390.png');
    await Promise.all([page.waitForURL(/\/docs$/), docs.click()]);
    if (await page.locator('[data-testid=menu]').getAttribute('open') !== null) fail('the menu stayed open on the new page');
  });

  await step('c. the account menu; no tools for a member', async () => {
    await page.setViewportSize({ width: 1280, height: 800 });
    await page.goto(`${BASE}/`);
    // A member's only tool is their mailbox (no SMTP server here: mail stays in the app).
    const tools = await page.locator('[data-testid=tools-menu] .dropdown-panel > a').allTextContents();
    if (tools.join() !== 'Mailbox') fail(`a member's tools are ${JSON.stringify(tools)}`);
    if ((await page.locator('a[href="/dashboard"], a[href="/ops"]').count()) !== 0) fail('a member sees the dashboard or ops');
    const menu = page.locator('[data-testid=user-menu]');
    await menu.locator('summary').click();
    await menu.getByRole('link', { name: 'Settings' }).waitFor({ state: 'visible' });
    await menu.getByRole('button', { name: 'Log out' }).waitFor({ state: 'visible' });
    await shot(page, 'user-menu-1280.png');
    await page.keyboard.press('Escape');
    if (await menu.getAttribute('open') !== null) fail('Escape did not close the account menu');
  });

  await step('d. a two-digit unread count sits beside the bell', async () => {
    for (const width of [390, 1280]) {
      await page.setViewportSize({ width, height: 800 });
      await page.goto(`${BASE}/`);
      const badge = page.locator('[data-testid=unread-count]');
      await page.waitForFunction(() => document.querySelector('[data-testid=unread-count]').textContent === '12');
      const bell = await page.locator('a.bell svg').boundingBox();
      const count = await badge.boundingBox();
      const overlap = Math.max(0, Math.min(bell.x + bell.width, count.x + count.width) - Math.max(bell.x, count.x));
      if (overlap > 2) fail(`at ${width} px the count covers ${overlap} px of the bell`);
      await page.locator('header.nav').screenshot({ path: `${process.env.SHOTS || '/tmp/hearth-shots'}/layout/bell-${width}.png` });
    }
  });

  await step('e. the first Tab reaches "Skip to content", which moves focus to the content', async () => {
    await page.goto(`${BASE}/posts`);
    await page.keyboard.press('Tab');
    const focused = await page.evaluate(() => document.activeElement?.textContent.trim());
    if (focused !== 'Skip to content') fail(`the first Tab focuses ${JSON.stringify(focused)}`);
    await page.keyboard.press('Enter');
    const now = await page.evaluate(() => document.activeElement?.id);
    if (now !== 'main') fail(`after the skip link the focus is on #${now}`);
  });

  await step('c. the admin has the tools apart from the main links', async () => {
    const adminPage = await newPage(browser);
    watchRequests(adminPage);
    await adminPage.setViewportSize({ width: 1280, height: 800 });
    await login(adminPage, admin, password);
    const main = adminPage.locator('.nav-main > a');
    const mainLinks = await main.allInnerTexts();
    for (const tool of ['Ops', 'Dashboard']) {
      if (mainLinks.includes(tool)) fail(`${tool} is among the main links: ${mainLinks}`);
    }
    const tools = adminPage.locator('[data-testid=tools-menu]');
    await tools.locator('summary').click();
    await Promise.all([adminPage.waitForURL(/\/dashboard$/), tools.getByRole('link', { name: 'Dashboard' }).click()]);
    await adminPage.getByRole('heading', { name: 'Dashboard' }).waitFor();
    await adminPage.setViewportSize({ width: 390, height: 844 });
    await adminPage.goto(`${BASE}/ops`);
    await adminPage.locator('[data-testid=menu] > summary').click();
    await adminPage.locator('[data-testid=menu]').getByRole('link', { name: 'Dashboard' }).waitFor({ state: 'visible' });
    await shot(adminPage, 'admin-menu-open-390.png');
    const found = await sideways(adminPage);
    if (found.scroll > found.width) fail(`/ops at 390 px is ${found.scroll} px wide (${found.wide.join(', ')})`);
  });

  await step("h. the editor's tabs follow the arrow keys", async () => {
    await page.setViewportSize({ width: 1280, height: 800 });
    await page.goto(`${BASE}/posts/new`);
    await page.locator('textarea[name=body]').fill('# A heading\n\nSome *text*.');
    const write = page.getByRole('tab', { name: 'Write' });
    await write.focus();
    await page.keyboard.press('ArrowRight');
    const preview = page.getByRole('tab', { name: 'Preview' });
    if ((await preview.getAttribute('aria-selected')) !== 'true') fail('ArrowRight did not select Preview');
    if (!(await preview.evaluate((el) => el === document.activeElement))) fail('the focus stayed on Write');
    await page.locator('.preview h2', { hasText: 'A heading' }).waitFor();
    await page.keyboard.press('Home');
    if ((await write.getAttribute('aria-selected')) !== 'true') fail('Home did not select Write');
  });

  await step('g. axe-core: no serious or critical violation on the main pages', async () => {
    const problems = [];
    const anonymous = await newPage(browser);
    for (const width of [390, 1280]) {
      for (const p of [page, anonymous]) await p.setViewportSize({ width, height: 800 });
      for (const path of ['/', '/posts', `/posts/${longSlug}`, '/login', '/signup', '/no/such/page']) {
        await anonymous.goto(`${BASE}${path}`);
        for (const v of await axeViolations(anonymous)) problems.push(`anonymous ${path} at ${width} px: ${v}`);
      }
      for (const [, path] of PAGES) {
        await page.goto(`${BASE}${path}`);
        for (const v of await axeViolations(page)) problems.push(`${path} at ${width} px: ${v}`);
      }
    }
    if (problems.length) fail(`accessibility violations:\n  ${problems.join('\n  ')}`);
  });

  await step('f. no request failed (the favicon among them)', async () => {
    const icon = await page.locator('link[rel=icon]').getAttribute('href');
    const response = await page.request.get(`${BASE}${icon}`);
    if (response.status() !== 200) fail(`the favicon answered ${response.status()}`);
    if (failed.length) fail(`failed requests:\n  ${failed.join('\n  ')}`);
  });
});
