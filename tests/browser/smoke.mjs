// Browser smoke test for Hearth: drives a real headless Chromium through
//   a. home page (anonymous): "Welcome to Hearth" + a "Sign up" link
//   b. sign up with a fresh username -> back on / with "Welcome to Hearth, <name>!" and the
//      name in [data-testid=signed-in-user]
//   c. "Log out" -> "You are signed out." and a "Log in" link
//   d. /login with a wrong password -> "Wrong username or password."
//   e. /login with the right password -> signed in, "Welcome back"
//   f. /account/password -> "Change password" heading
// Screenshots (home-anon, signed-up, wrong-password, logged-in; failure.png on failure) go to
// $SHOTS (default /tmp/hearth-shots). Exit code 0 = all steps passed, 1 = a step failed.
//
// Needs a running hearth server ($HEARTH_URL, default http://127.0.0.1:8000), a Chromium
// binary ($CHROMIUM, default /usr/bin/chromium; Debian: `apt-get install chromium`) and the npm
// package playwright-core (no `npx playwright install`). ES modules ignore NODE_PATH, so the
// script resolves playwright-core through NODE_PATH itself. Command used:
//
//   mkdir -p /tmp/browser && cd /tmp/browser && npm init -y && npm install playwright-core
//   cd /work/main && HEARTH_URL=http://127.0.0.1:8123 NODE_PATH=/tmp/browser/node_modules \
//     node scripts/browser-smoke.mjs

import { createRequire } from 'node:module';
import { mkdirSync } from 'node:fs';
import path from 'node:path';

async function loadPlaywright() {
  try {
    return await import('playwright-core');
  } catch (e) {
    // ES-module resolution ignores NODE_PATH; resolve through it explicitly.
    const dirs = (process.env.NODE_PATH || '').split(path.delimiter).filter(Boolean);
    for (const dir of dirs) {
      try {
        const require = createRequire(path.join(path.resolve(dir), 'noop.js'));
        return require('playwright-core');
      } catch {}
    }
    throw new Error(
      'cannot load playwright-core: install it (npm install playwright-core) and set NODE_PATH to its node_modules',
    );
  }
}

const BASE = (process.env.HEARTH_URL || 'http://127.0.0.1:8000').replace(/\/+$/, '');
const SHOTS = process.env.SHOTS || '/tmp/hearth-shots';
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const TIMEOUT = 10_000;

const username = `user${Date.now() % 100000}`;
const password = 'correct horse battery';

mkdirSync(SHOTS, { recursive: true });

function fail(msg) {
  throw new Error(msg);
}

function log(msg) {
  console.log(msg);
}

async function expectText(page, text, where) {
  const loc = page.getByText(text, { exact: false }).first();
  try {
    await loc.waitFor({ state: 'visible', timeout: TIMEOUT });
  } catch {
    const body = (await page.locator('body').innerText().catch(() => '')).slice(0, 600);
    fail(`${where}: expected text ${JSON.stringify(text)} on ${page.url()}, page says:\n${body}`);
  }
}

async function expectPath(page, wanted, where) {
  const actual = new URL(page.url()).pathname;
  if (actual !== wanted) fail(`${where}: expected to be on ${wanted}, got ${page.url()}`);
}

async function expectSignedInAs(page, name, where) {
  const who = page.locator('[data-testid=signed-in-user]');
  try {
    await who.waitFor({ state: 'visible', timeout: TIMEOUT });
  } catch {
    fail(`${where}: no [data-testid=signed-in-user] element on ${page.url()}`);
  }
  const text = (await who.innerText()).trim();
  if (!text.includes(name)) fail(`${where}: signed-in user shows ${JSON.stringify(text)}, expected ${name}`);
}

async function shot(page, name) {
  const file = path.join(SHOTS, name);
  await page.screenshot({ path: file, fullPage: true });
  return file;
}

const { chromium } = await loadPlaywright();
const browser = await chromium.launch({
  executablePath: CHROMIUM,
  args: [
    '--headless',
    '--no-sandbox',
    '--disable-gpu',
    '--disable-quic',
    '--no-first-run',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
  ],
});

let page;
let exitCode = 0;
try {
  const context = await browser.newContext({ viewport: { width: 1024, height: 700 } });
  page = await context.newPage();
  page.setDefaultTimeout(TIMEOUT);
  const nav = page.locator('header.nav');
  log(`hearth at ${BASE}, user ${username}, screenshots in ${SHOTS}`);

  // a. anonymous home page
  const home = await page.goto(`${BASE}/`);
  if (!home || home.status() !== 200) fail(`a: GET / answered ${home && home.status()}`);
  await expectText(page, 'Welcome to Hearth', 'a');
  if ((await nav.getByRole('link', { name: 'Sign up' }).count()) !== 1) fail('a: no "Sign up" link in the nav');
  await shot(page, 'home-anon.png');
  log('ok a. home page shows "Welcome to Hearth" and a "Sign up" link');

  // b. sign up
  await nav.getByRole('link', { name: 'Sign up' }).click();
  await page.waitForURL(/\/signup$/);
  await page.fill('input[name=username]', username);
  await page.fill('input[name=password]', password);
  await page.fill('input[name=password_confirm]', password);
  await Promise.all([
    page.waitForNavigation(),
    page.getByRole('button', { name: 'Create account' }).click(),
  ]);
  await expectPath(page, '/', 'b');
  await expectText(page, `Welcome to Hearth, ${username}!`, 'b');
  await expectSignedInAs(page, username, 'b');
  await shot(page, 'signed-up.png');
  log(`ok b. signed up as ${username}, landed on / with the welcome flash`);

  // c. log out
  await Promise.all([page.waitForNavigation(), nav.getByRole('button', { name: 'Log out' }).click()]);
  await expectText(page, 'You are signed out.', 'c');
  if ((await nav.getByRole('link', { name: 'Log in' }).count()) !== 1) fail('c: no "Log in" link in the nav after logging out');
  if ((await page.locator('[data-testid=signed-in-user]').count()) !== 0) fail('c: still shown as signed in after logging out');
  log('ok c. logged out: "You are signed out." and a "Log in" link');

  // d. wrong password
  await page.goto(`${BASE}/login`);
  await page.fill('input[name=username]', username);
  await page.fill('input[name=password]', 'not the password');
  await Promise.all([page.waitForNavigation(), page.locator('main').getByRole('button', { name: 'Log in' }).click()]);
  await expectText(page, 'Wrong username or password.', 'd');
  if ((await page.locator('[data-testid=signed-in-user]').count()) !== 0) fail('d: signed in despite a wrong password');
  await shot(page, 'wrong-password.png');
  log('ok d. wrong password rejected with "Wrong username or password."');

  // e. right password
  await page.fill('input[name=username]', username);
  await page.fill('input[name=password]', password);
  await Promise.all([page.waitForNavigation(), page.locator('main').getByRole('button', { name: 'Log in' }).click()]);
  await expectSignedInAs(page, username, 'e');
  await expectText(page, 'Welcome back', 'e');
  await shot(page, 'logged-in.png');
  log(`ok e. logged in again as ${username} ("Welcome back")`);

  // f. change-password page
  const pw = await page.goto(`${BASE}/account/password`);
  if (!pw || pw.status() !== 200) fail(`f: GET /account/password answered ${pw && pw.status()}`);
  await expectPath(page, '/account/password', 'f');
  try {
    await page.getByRole('heading', { name: 'Change password' }).waitFor({ state: 'visible' });
  } catch {
    fail(`f: no "Change password" heading on ${page.url()}`);
  }
  log('ok f. /account/password shows the "Change password" heading');

  log('all steps passed');
} catch (err) {
  exitCode = 1;
  console.error(`FAILED: ${err.message}`);
  if (page) {
    try {
      console.error(`screenshot: ${await shot(page, 'failure.png')}`);
    } catch {}
  }
} finally {
  await browser.close();
}
process.exit(exitCode);
