// A new room and a refused message (#32), at a phone's width (390 × 844):
//   a. a member creates a room: it says it has no messages yet
//   b. the first message takes that note away
//   c. past the rate limit (10 messages in 10 s) a message is refused: its text stays in the
//      input, and the refusal shows next to it, on screen
//   d. the same at 1280 × 800
// Screenshots: empty-room-390.png, refused-390.png, refused-1280.png.
import { BASE, fail, run, shot, signup, step, uniqueName } from './lib.mjs';

const password = 'correct horse battery';

async function sendAndWait(page, text) {
  await page.locator('#body').fill(text);
  await page.getByRole('button', { name: 'Send' }).click();
  await page.locator('.msg-body', { hasText: text }).first().waitFor();
}

async function expectRefusalKept(page, text, where) {
  await page.locator('#body').fill(text);
  await page.getByRole('button', { name: 'Send' }).click();
  const error = page.locator('[data-testid=chat-error]');
  await error.waitFor({ state: 'visible' });
  const said = (await error.innerText()).trim();
  if (!/too fast/.test(said)) fail(`${where}: the refusal says ${JSON.stringify(said)}`);
  const kept = await page.locator('#body').inputValue();
  if (kept !== text) fail(`${where}: the input holds ${JSON.stringify(kept)}, not the refused text`);
  const box = await error.boundingBox();
  const viewport = page.viewportSize();
  if (box.y < 0 || box.y + box.height > viewport.height) {
    fail(`${where}: the refusal is off screen (at ${box.y} px of ${viewport.height})`);
  }
  const input = await page.locator('#body').boundingBox();
  if (Math.abs(input.y - (box.y + box.height)) > 80) fail(`${where}: the refusal is not next to the input`);
}

await run(async ({ page }) => {
  await page.setViewportSize({ width: 390, height: 844 });
  await signup(page, uniqueName('ada'), password);

  await step('a. a new room says it has no messages yet', async () => {
    await page.goto(`${BASE}/chat`);
    await page.locator('form[action="/chat"] input[name=name]').fill(`Quiet corner ${Date.now() % 1000}`);
    await Promise.all([page.waitForURL(/\/chat\/quiet-corner/), page.getByRole('button', { name: 'Create room' }).click()]);
    await page.locator('#status.online').waitFor();
    await page.locator('[data-testid=empty-room]').waitFor({ state: 'visible' });
    await shot(page, 'empty-room-390.png');
  });

  await step('b. the first message takes the note away', async () => {
    await sendAndWait(page, 'message 1');
    if (await page.locator('[data-testid=empty-room]').isVisible()) fail('the empty note stayed');
    if ((await page.locator('#body').inputValue()) !== '') fail('an accepted message stayed in the input');
  });

  await step('c. past the rate limit the text stays and the refusal shows by the input', async () => {
    for (let n = 2; n <= 10; n++) await sendAndWait(page, `message ${n}`);
    await expectRefusalKept(page, 'the eleventh, refused', '390 px');
    await shot(page, 'refused-390.png');
  });

  await step('d. the same at 1280 px', async () => {
    await page.setViewportSize({ width: 1280, height: 800 });
    await page.reload();
    await page.locator('#status.online').waitFor();
    await expectRefusalKept(page, 'the twelfth, refused too', '1280 px');
    await shot(page, 'refused-1280.png');
  });
});
