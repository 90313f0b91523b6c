// The operations console: an admin ($ADMIN_USER / $ADMIN_PASSWORD) opens a discarded job
// ($JOB_ID), retries it (accepting the confirmation), and sees its state change live — to
// "completed", as the app's workers run it — without reloading.
// Screenshots: overview.png, job-discarded.png, job-completed.png, jobs.png, dashboard.png,
// overview-phone.png.
import { BASE, expectText, fail, login, run, shot, step } from './lib.mjs';

const admin = process.env.ADMIN_USER;
const password = process.env.ADMIN_PASSWORD;
const jobId = process.env.JOB_ID;
if (!admin || !password || !jobId) fail('ADMIN_USER, ADMIN_PASSWORD and JOB_ID are required');

await run(async ({ page }) => {
  await step('a. the admin opens the console', async () => {
    await login(page, admin, password);
    await page.goto(`${BASE}/ops`);
    await expectText(page, 'Jobs by queue');
    await shot(page, 'overview.png');
  });

  const state = page.locator('[data-testid=job-state]');
  await step('b. the discarded job shows its state', async () => {
    await page.goto(`${BASE}/ops/jobs/${jobId}`);
    const text = (await state.innerText()).trim();
    if (text !== 'discarded') fail(`the job is ${text}, expected discarded`);
    await shot(page, 'job-discarded.png');
  });

  await step('c. retry, confirmed; the state changes live to completed', async () => {
    page.once('dialog', (dialog) => dialog.accept());
    await Promise.all([page.waitForNavigation(), page.getByRole('button', { name: 'Retry' }).click()]);
    await expectText(page, `Job ${jobId} is back in its queue.`);
    const reloads = [];
    page.on('load', () => reloads.push(page.url()));
    try {
      await page.waitForFunction(
        () => document.querySelector('[data-testid=job-state]')?.textContent.trim() === 'completed',
        null,
        { timeout: 10_000 },
      );
    } catch {
      fail(`the state stayed ${(await state.innerText()).trim()}`);
    }
    if (reloads.length) fail(`the page reloaded: ${reloads}`);
    await shot(page, 'job-completed.png');
  });

  await step('d. the job list, the audit log and the dashboard', async () => {
    await page.goto(`${BASE}/ops/jobs`);
    await shot(page, 'jobs.png');
    await page.goto(`${BASE}/ops/audit`);
    await expectText(page, 'job.retry');
    await page.goto(`${BASE}/dashboard`);
    await page.locator('#status.online').waitFor();
    await page.waitForFunction(() => document.querySelector('[data-testid=rps]')?.textContent !== '–');
    await page.waitForTimeout(2500);
    await shot(page, 'dashboard.png');
    await page.setViewportSize({ width: 390, height: 844 });
    await page.goto(`${BASE}/ops`);
    await shot(page, 'overview-phone.png');
  });
});
