// Browser smoke test for Hearth: drives a real headless Chromium through
//   a. home page (anonymous): "Welcome to Hearth" + a "Sign up" link
//   b. sign up with a fresh username -> back on / with "Welcome to Hearth, <name>!" and the
//      name in [data-testid=signed-in-user]
//   c. "Log out" -> "You are signed out." and a "Log in" link
//   d. /login with a wrong password -> "Wrong username or password."
//   e. /login with the right password -> signed in, "Welcome back"
//   f. /account/password -> "Change password" heading
// Screenshots (home-anon, signed-up, wrong-password, logged-in; failure.png on failure) go to
// $SHOTS/smoke/ (default /tmp/hearth-shots/smoke). Exit code 0 = all steps passed, 1 = a step failed.
//
// Run by tests/api/browser.rs (`cargo test browser`, or `scripts/test`). By hand, against a
// running server: HEARTH_URL=http://127.0.0.1:8000 node tests/browser/smoke.mjs
// (after `npm ci --prefix tests/browser`; see lib.mjs for the environment).

import {
  BASE,
  clickAndWait,
  expectPath,
  expectSignedInAs,
  expectSignedOut,
  expectText,
  fail,
  login,
  run,
  shot,
  signup,
  step,
  uniqueName,
} from './lib.mjs';

const username = uniqueName('user');
const password = 'correct horse battery';

await run(async ({ page }) => {
  const nav = page.locator('header.nav');
  console.log(`user ${username}`);

  await step('a. home page shows "Welcome to Hearth" and a "Sign up" link', async () => {
    const home = await page.goto(`${BASE}/`);
    if (!home || home.status() !== 200) fail(`GET / answered ${home && home.status()}`);
    await expectText(page, 'Welcome to Hearth');
    if ((await nav.getByRole('link', { name: 'Sign up' }).count()) !== 1) fail('no "Sign up" link in the nav');
    await shot(page, 'home-anon.png');
  });

  await step('b. sign up lands on / with the welcome flash', async () => {
    await nav.getByRole('link', { name: 'Sign up' }).click();
    await page.waitForURL(/\/signup$/);
    await signup(page, username, password);
    expectPath(page, '/');
    await expectText(page, `Welcome to Hearth, ${username}!`);
    await expectSignedInAs(page, username);
    await shot(page, 'signed-up.png');
  });

  await step('c. log out: "You are signed out." and a "Log in" link', async () => {
    // "Log out" is in the account menu, under the signed-in user's name.
    await nav.locator('[data-testid=user-menu] > summary').click();
    await clickAndWait(page, nav.getByRole('button', { name: 'Log out' }));
    await expectText(page, 'You are signed out.');
    if ((await nav.getByRole('link', { name: 'Log in' }).count()) !== 1) fail('no "Log in" link in the nav after logging out');
    await expectSignedOut(page);
  });

  await step('d. a wrong password is rejected with "Wrong username or password."', async () => {
    await login(page, username, 'not the password');
    await expectText(page, 'Wrong username or password.');
    await expectSignedOut(page);
    await shot(page, 'wrong-password.png');
  });

  await step('e. the right password logs in again ("Welcome back")', async () => {
    await login(page, username, password);
    await expectSignedInAs(page, username);
    await expectText(page, 'Welcome back');
    await shot(page, 'logged-in.png');
  });

  await step('f. /account/password shows the "Change password" heading', async () => {
    const pw = await page.goto(`${BASE}/account/password`);
    if (!pw || pw.status() !== 200) fail(`GET /account/password answered ${pw && pw.status()}`);
    expectPath(page, '/account/password');
    try {
      await page.getByRole('heading', { name: 'Change password' }).waitFor({ state: 'visible' });
    } catch {
      fail(`no "Change password" heading on ${page.url()}`);
    }
  });
});
