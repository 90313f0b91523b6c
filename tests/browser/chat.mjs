// Two users chat in a room, each in a browser context of their own:
//   a. both sign up and open the lobby; each sees the other in "Online"
//   b. ada sends a message with HTML in it: bob sees it, as text
//   c. bob types: ada sees "bob… is typing"; bob's reply reaches ada
//   d. bob leaves: he drops out of ada's "Online" list
// Screenshots: room-desktop.png, room-phone.png.
import { BASE, expectText, fail, newPage, run, shot, signup, step, uniqueName } from './lib.mjs';

const password = 'correct horse battery';
const ada = uniqueName('ada');
const bob = uniqueName('bob');

async function openRoom(page) {
  await page.goto(`${BASE}/chat/lobby`);
  await page.locator('#status.online').waitFor();
}

async function expectOnline(page, name, present = true) {
  const item = page.locator('#presence li', { hasText: name });
  try {
    await item.first().waitFor({ state: present ? 'visible' : 'detached' });
  } catch {
    const list = await page.locator('#presence').innerText();
    fail(`${name} should ${present ? '' : 'not '}be online; the list says: ${list}`);
  }
}

await run(async ({ browser, page }) => {
  const other = await newPage(browser);

  await step('a. both sign up, open the lobby and see each other online', async () => {
    await signup(page, ada, password);
    await signup(other, bob, password);
    await openRoom(page);
    await openRoom(other);
    await expectOnline(page, bob);
    await expectOnline(other, ada);
  });

  const text = 'hello <b>bob</b> & welcome';
  await step('b. ada sends a message; bob sees it as text', async () => {
    await page.locator('#body').fill(text);
    await page.getByRole('button', { name: 'Send' }).click();
    const message = other.locator('.msg', { hasText: 'welcome' });
    await message.waitFor();
    const body = await message.locator('.msg-body').innerText();
    if (body !== text) fail(`bob sees ${JSON.stringify(body)}, expected ${JSON.stringify(text)}`);
    if ((await other.locator('.messages b').count()) > 0) fail('HTML from a message was rendered');
    await expectText(other, ada);
  });

  await step('c. bob types and replies; ada sees both', async () => {
    await other.locator('#body').pressSequentially('hi ada', { delay: 20 });
    await expectText(page, `${bob} is typing`);
    await other.getByRole('button', { name: 'Send' }).click();
    await page.locator('.msg', { hasText: 'hi ada' }).waitFor();
    await shot(page, 'room-desktop.png');
    await page.setViewportSize({ width: 390, height: 844 });
    await shot(page, 'room-phone.png');
  });

  await step('d. bob leaves and drops out of the online list', async () => {
    await other.context().close();
    await expectOnline(page, bob, false);
  });
});
