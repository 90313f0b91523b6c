// Shared helpers for Hearth's browser scripts (tests/browser/*.mjs).
//
// The scripts are run by tests/api/browser.rs as part of `cargo test` (through `scripts/test`,
// which installs what they need): a real server on an ephemeral port, a real headless Chromium.
// playwright-core drives the system Chromium (Debian: /usr/bin/chromium); it downloads no
// browser. Its package lives in tests/browser/node_modules (`npm ci --prefix tests/browser`).
//
// Environment:
//   HEARTH_URL   the server (default http://127.0.0.1:8000), trailing slashes ignored
//   SHOTS        screenshot folder (default /tmp/hearth-shots); each script writes into
//                $SHOTS/<script name>/, emptied when the script starts
//   CHROMIUM     the Chromium binary (default /usr/bin/chromium)
//   BROWSER_TIMEOUT_MS  the whole script's time limit (default 90000)
//
// A script:
//
//   import { run, step, signup, expectText } from './lib.mjs';
//   await run(async ({ page }) => {
//     await step('a. home page', async () => { ... });
//   });
//
// `run` launches Chromium, opens a page, runs the steps and exits: 0 when every step passed,
// 1 otherwise, after printing which step failed and why, screenshotting every open page into
// $SHOTS/<script>/failure-*.png and printing the pages' console errors.

import { existsSync, mkdirSync, rmSync } from 'node:fs';
import path from 'node:path';
import process from 'node:process';

export const BASE = (process.env.HEARTH_URL || 'http://127.0.0.1:8000').replace(/\/+$/, '');
export const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
export const TIMEOUT = 10_000;
const SCRIPT_TIMEOUT = Number(process.env.BROWSER_TIMEOUT_MS || 90_000);
const SCRIPT = path.basename(process.argv[1] || 'script', '.mjs');
export const SHOTS = path.join(process.env.SHOTS || '/tmp/hearth-shots', SCRIPT);

// Without the background-networking flags Chromium's own connections get refused in
// sandboxes and CI; --no-sandbox because tests run as root in containers;
// --disable-dev-shm-usage because containers' /dev/shm is often 64 MB.
export const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--disable-dev-shm-usage',
];

export function log(msg) {
  console.log(msg);
}

export function fail(msg) {
  throw new Error(msg);
}

async function loadPlaywright() {
  try {
    return await import('playwright-core');
  } catch (err) {
    throw new Error(
      `cannot load playwright-core (${err.message}).\n` +
        'Install it with `scripts/test` (or `npm ci --prefix tests/browser`).',
    );
  }
}

/** Launches the system Chromium, headless. */
export async function launch(options = {}) {
  if (!existsSync(CHROMIUM)) {
    throw new Error(
      `no Chromium at ${CHROMIUM}: run \`scripts/test\` (installs the Debian package ` +
        '"chromium") or set CHROMIUM to a Chromium binary',
    );
  }
  const { chromium } = await loadPlaywright();
  return chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS, ...options });
}

// Console errors and uncaught exceptions of every page, printed when a step fails.
const pageErrors = [];
// Anything the Content-Security-Policy refused: a script passes only if there is none, so a
// page that works only because the test browser ignored the policy cannot pass.
const cspViolations = [];

function watch(page) {
  page.setDefaultTimeout(TIMEOUT);
  page.on('console', (msg) => {
    if (msg.type() !== 'error') return;
    pageErrors.push(`console error on ${page.url()}: ${msg.text()}`);
    if (msg.text().includes('Content Security Policy')) cspViolations.push(`${page.url()}: ${msg.text()}`);
  });
  page.on('pageerror', (err) => pageErrors.push(`uncaught exception on ${page.url()}: ${err.message}`));
  page.on('response', (res) => {
    if (res.status() >= 400) pageErrors.push(`${res.status()} for ${res.request().method()} ${res.url()}`);
  });
  page.on('requestfailed', (req) => {
    pageErrors.push(`request failed: ${req.method()} ${req.url()}: ${req.failure()?.errorText}`);
  });
}

/** A page in a fresh context (its own cookies): a second user's browser. */
export async function newPage(browser) {
  const context = await browser.newContext({ viewport: { width: 1024, height: 700 } });
  context.on('page', watch);
  return context.newPage();
}

let currentStep = null;

/** Runs one named step and logs it; a failure names the step. */
export async function step(name, fn) {
  currentStep = name;
  const started = Date.now();
  await fn();
  log(`ok ${name} (${Date.now() - started} ms)`);
  currentStep = null;
}

/** Screenshots `page` into $SHOTS/<script>/<name> and returns the file. */
export async function shot(page, name) {
  const file = path.join(SHOTS, name);
  await page.screenshot({ path: file, fullPage: true });
  return file;
}

async function reportFailure(browser, err) {
  const where = currentStep ? `step "${currentStep}"` : 'setup';
  console.error(`FAILED ${SCRIPT} at ${where}: ${err && err.message ? err.message : err}`);
  if (!browser) return;
  const pages = browser.contexts().flatMap((c) => c.pages());
  for (const [i, page] of pages.entries()) {
    try {
      const file = await shot(page, pages.length === 1 ? 'failure.png' : `failure-${i + 1}.png`);
      console.error(`screenshot of ${page.url()}: ${file}`);
    } catch {}
  }
  if (pageErrors.length) console.error(`browser errors:\n  ${pageErrors.slice(-20).join('\n  ')}`);
}

/**
 * Launches Chromium, opens a page and runs `body({ browser, page })`; then exits the process
 * (0 = passed, 1 = failed). Never returns.
 */
export async function run(body) {
  rmSync(SHOTS, { recursive: true, force: true });
  mkdirSync(SHOTS, { recursive: true });
  let browser;
  let exitCode = 0;
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(
      () => reject(new Error(`the script did not finish within ${SCRIPT_TIMEOUT} ms`)),
      SCRIPT_TIMEOUT,
    );
  });
  try {
    await Promise.race([
      (async () => {
        browser = await launch();
        const page = await newPage(browser);
        log(`${SCRIPT}: hearth at ${BASE}, screenshots in ${SHOTS}`);
        await body({ browser, page });
        currentStep = 'Content-Security-Policy';
        if (cspViolations.length) fail(`the page broke its CSP:\n  ${cspViolations.join('\n  ')}`);
      })(),
      timeout,
    ]);
    log(`${SCRIPT}: all steps passed`);
  } catch (err) {
    exitCode = 1;
    await reportFailure(browser, err);
  } finally {
    clearTimeout(timer);
    if (browser) await browser.close().catch(() => {});
  }
  process.exit(exitCode);
}

// ---- expectations --------------------------------------------------------------------------
// `where` (optional) prefixes the failure message; the failing step is named anyway.

function at(where) {
  return where ? `${where}: ` : '';
}

/** Waits for `text` (substring) to be visible on `page`; fails with what the page says. */
export async function expectText(page, text, where) {
  const loc = page.getByText(text, { exact: false }).first();
  try {
    await loc.waitFor({ state: 'visible', timeout: TIMEOUT });
  } catch {
    const body = (await page.locator('body').innerText().catch(() => '')).slice(0, 600);
    fail(`${at(where)}expected text ${JSON.stringify(text)} on ${page.url()}, page says:\n${body}`);
  }
}

/** Fails unless `page` is on path `wanted`. */
export function expectPath(page, wanted, where) {
  const actual = new URL(page.url()).pathname;
  if (actual !== wanted) fail(`${at(where)}expected to be on ${wanted}, got ${page.url()}`);
}

/** Fails unless the layout shows `name` as the signed-in user. */
export async function expectSignedInAs(page, name, where) {
  const who = page.locator('[data-testid=signed-in-user]');
  try {
    await who.waitFor({ state: 'visible', timeout: TIMEOUT });
  } catch {
    fail(`${at(where)}no [data-testid=signed-in-user] element on ${page.url()}`);
  }
  const text = (await who.innerText()).trim();
  if (!text.includes(name)) fail(`${at(where)}signed-in user shows ${JSON.stringify(text)}, expected ${name}`);
}

/** Fails if the layout shows anyone as signed in. */
export async function expectSignedOut(page, where) {
  if ((await page.locator('[data-testid=signed-in-user]').count()) !== 0) {
    fail(`${at(where)}shown as signed in on ${page.url()}`);
  }
}

/** Clicks `locator` and waits for the navigation it starts. */
export async function clickAndWait(page, locator) {
  await Promise.all([page.waitForNavigation(), locator.click()]);
}

// ---- Hearth flows --------------------------------------------------------------------------

/** A username unlikely to be taken: `prefix` + a few digits. */
export function uniqueName(prefix = 'user') {
  return `${prefix}${Date.now() % 100000}${Math.floor(Math.random() * 100)}`.slice(0, 32);
}

/**
 * Signs up through the /signup form (opens it unless already there) and waits for the
 * redirect. Fills `email` with `<username>@example.com` when the form has that field.
 */
export async function signup(page, username, password) {
  if (new URL(page.url()).pathname !== '/signup') await page.goto(`${BASE}/signup`);
  const form = page.locator('form[action="/signup"]');
  await form.locator('input[name=username]').fill(username);
  const email = form.locator('input[name=email]');
  if ((await email.count()) > 0) await email.fill(`${username}@example.com`);
  await form.locator('input[name=password]').fill(password);
  await form.locator('input[name=password_confirm]').fill(password);
  await clickAndWait(page, form.getByRole('button', { name: 'Create account' }));
  if (new URL(page.url()).pathname === '/signup') {
    const error = await page.locator('.error, [role=alert]').first().innerText().catch(() => '');
    fail(`sign-up of ${username} stayed on /signup${error ? `: ${error}` : ''}`);
  }
}

/**
 * Verifies the signed-in user's mail address as a person does: opens the verification mail in
 * the dev mailbox, follows its link and presses the confirm button. Hearth mails nothing else
 * to an address until then.
 */
export async function verifyEmail(page) {
  await page.goto(`${BASE}/mailbox`);
  await clickAndWait(page, page.locator('.mail-list li a', { hasText: 'Confirm your mail address' }).first());
  const body = await page.locator('.mail-body').innerText();
  const link = body.match(/\/account\/email\/verify\/[0-9a-f]+/);
  if (!link) fail(`no verification link in the mail:\n${body}`);
  await page.goto(`${BASE}${link[0]}`);
  await clickAndWait(page, page.getByRole('button', { name: 'Confirm my address' }));
  await expectText(page, 'is verified.');
}

/** Logs in through the /login form and waits for the navigation. */
export async function login(page, username, password) {
  if (new URL(page.url()).pathname !== '/login') await page.goto(`${BASE}/login`);
  const form = page.locator('form[action="/login"]');
  await form.locator('input[name=username]').fill(username);
  await form.locator('input[name=password]').fill(password);
  await clickAndWait(page, form.getByRole('button', { name: 'Log in' }));
}
