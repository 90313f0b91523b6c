// A workflow drawn as a graph on /ops/workflows/{id}: an admin ($ADMIN_USER / $ADMIN_PASSWORD)
// opens a chord ($WORKFLOW_ID) whose steps wait in the paused queue `default`: the graph shows
// a box per step and a frame for the group. In a second tab the admin resumes the queue; the
// first tab's boxes turn to "completed", live, without a reload.
// Then the schedules page, with its add form (schedules.png).
// Screenshots: workflow-waiting.png, workflow-completed.png, schedules.png.
import { BASE, expectText, fail, login, run, shot, step } from './lib.mjs';

const admin = process.env.ADMIN_USER;
const password = process.env.ADMIN_PASSWORD;
const workflowId = process.env.WORKFLOW_ID;
if (!admin || !password || !workflowId) fail('ADMIN_USER, ADMIN_PASSWORD and WORKFLOW_ID are required');

await run(async ({ page }) => {
  const boxes = page.locator('#workflow-svg g.wf-box');
  await step('a. the admin opens the workflow: its steps drawn, waiting', async () => {
    await login(page, admin, password);
    await page.goto(`${BASE}/ops/workflows/${workflowId}`);
    await page.locator('[data-testid=workflow-svg]').waitFor();
    const count = await boxes.count();
    if (count !== 4) fail(`${count} step boxes, expected 4 (three members and the callback)`);
    const frames = await page.locator('#workflow-svg rect.wf-frame').count();
    if (frames !== 1) fail(`${frames} group frames, expected 1`);
    const classes = await boxes.evaluateAll((gs) => gs.map((g) => g.getAttribute('class')));
    if (classes.some((c) => c.includes('state-completed'))) fail(`a step completed in a paused queue: ${classes}`);
    // The step boxes are coloured by state through CSS (no inline style: the CSP allows none).
    const fill = await page.locator('#workflow-svg g.wf-box.state-running rect').first().evaluate((r) => getComputedStyle(r).fill);
    if (fill !== 'rgb(219, 234, 254)') fail(`a running step's box is filled ${fill}`);
    await shot(page, 'workflow-waiting.png');
  });

  await step('b. the queue is resumed in another tab; the graph turns completed live', async () => {
    const reloads = [];
    page.on('load', () => reloads.push(page.url()));
    const other = await page.context().newPage();
    await other.goto(`${BASE}/ops`);
    other.once('dialog', (dialog) => dialog.accept());
    await Promise.all([
      other.waitForNavigation(),
      other.locator('form[action="/ops/queues/default/resume"] button').click(),
    ]);
    await expectText(other, 'Queue default runs again.');
    try {
      await page.waitForFunction(
        () => {
          const gs = [...document.querySelectorAll('#workflow-svg g.wf-box')];
          return gs.length === 4 && gs.every((g) => g.getAttribute('class').includes('state-completed'))
            && document.querySelector('#workflow-svg rect.wf-frame').getAttribute('class').includes('state-completed');
        },
        null,
        { timeout: 20_000 },
      );
    } catch {
      const classes = await boxes.evaluateAll((gs) => gs.map((g) => g.getAttribute('class')));
      fail(`the graph did not turn completed: ${classes}`);
    }
    const state = (await page.locator('[data-testid=workflow-state]').innerText()).trim();
    if (state !== 'completed') fail(`the workflow reads ${state}`);
    if (reloads.length) fail(`the page reloaded: ${reloads}`);
    if (await page.getByRole('button', { name: 'Cancel' }).count()) fail('a finished workflow still offers Cancel');
    const finished = (await page.locator('#workflow-finished').innerText()).trim();
    if (!/^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC$/.test(finished)) fail(`finished reads ${finished}`);
    await shot(page, 'workflow-completed.png');
  });

  await step('c. the schedules page lists the code schedules and offers the add form', async () => {
    await page.goto(`${BASE}/ops/schedules`);
    await expectText(page, 'daily-digest');
    await page.locator('[data-testid=add-schedule]').waitFor();
    await shot(page, 'schedules.png');
  });
});
