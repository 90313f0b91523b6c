// Two editors of one document, each in a browser context of their own:
//   a. both log in and open the document; each sees the other under "Editing now"
//   b. A types at the start while B types at the end, at the same time: both textareas converge
//      on one text with both phrases intact
//   c. B sees A's caret: a mark in #doc-mirror labelled with A's name
//   d. B goes offline and types; A types meanwhile; B comes back: both converge with both edits
//   e. screenshots: docs-desktop.png, docs-phone.png
//
// Environment (besides lib.mjs's): DOC_URL, the path of a document (/docs/12) that both users
// can edit; USER_A and USER_B, existing users; PASSWORD, their password.
import process from 'node:process';
import { BASE, TIMEOUT, expectSignedInAs, fail, login, newPage, run, shot, step } from './lib.mjs';

const docUrl = process.env.DOC_URL;
const userA = process.env.USER_A;
const userB = process.env.USER_B;
const password = process.env.PASSWORD;

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const textOf = (page) => page.locator('#doc-body').inputValue();

async function openDoc(page, username) {
  await login(page, username, password);
  await expectSignedInAs(page, username, `after logging in as ${username}`);
  await page.goto(`${BASE}${docUrl}`);
  await waitOnline(page, username);
}

async function waitOnline(page, who) {
  try {
    await page.locator('#status.online').waitFor();
  } catch {
    const status = await page.locator('#status').innerText().catch(() => '?');
    const error = await page.locator('#doc-error').innerText().catch(() => '');
    fail(`${who}'s editor did not get online (status ${JSON.stringify(status)}${error ? `, error ${JSON.stringify(error)}` : ''})`);
  }
}

async function expectEditing(page, name, where) {
  try {
    await page.locator('#editors li', { hasText: name }).first().waitFor();
  } catch {
    const list = await page.locator('#editors').innerText();
    fail(`${where}: ${name} should be under "Editing now"; the list says: ${JSON.stringify(list)}`);
  }
}

/** Puts the caret of `page`'s editor at the start or the end of the text. */
async function caretAt(page, where) {
  await page.locator('#doc-body').evaluate((area, atEnd) => {
    area.focus();
    const at = atEnd ? area.value.length : 0;
    area.setSelectionRange(at, at);
  }, where === 'end');
}

function typeInto(page, text) {
  return page.locator('#doc-body').pressSequentially(text, { delay: 40 });
}

/** How often `phrase` occurs in `text`. */
function count(text, phrase) {
  return text.split(phrase).length - 1;
}

/**
 * Waits until both editors show the same text, with each phrase in it `times[phrase]` times
 * (default once; the document may hold earlier runs' text); returns that text.
 */
async function converge(a, b, phrases, times = {}) {
  const deadline = Date.now() + TIMEOUT;
  let texts = [];
  while (Date.now() < deadline) {
    texts = await Promise.all([textOf(a), textOf(b)]);
    if (texts[0] === texts[1] && phrases.every((phrase) => count(texts[0], phrase) === (times[phrase] ?? 1))) {
      return texts[0];
    }
    await sleep(100);
  }
  fail(
    `the editors did not converge on a text with ${phrases.map((p) => JSON.stringify(p)).join(' and ')}:\n` +
      `  ${userA} has ${JSON.stringify(texts[0])}\n  ${userB} has ${JSON.stringify(texts[1])}`,
  );
}

await run(async ({ browser, page }) => {
  if (!docUrl || !userA || !userB || !password) fail('docs.mjs needs DOC_URL, USER_A, USER_B and PASSWORD');
  const a = page;
  const b = await newPage(browser);

  await step('a. both log in, open the document and see each other editing', async () => {
    await openDoc(a, userA);
    await openDoc(b, userB);
    await expectEditing(a, userB, `${userA}'s page`);
    await expectEditing(b, userA, `${userB}'s page`);
    const you = await a.locator('#editors li', { hasText: '(you)' }).innerText();
    if (!you.includes(userA)) fail(`${userA}'s list marks ${JSON.stringify(you)} as "(you)"`);
  });

  const fromA = 'Hello from A. ';
  const fromB = 'B was here.';
  await step('b. A types at the start while B types at the end: both converge', async () => {
    // In an empty document the start is the end: give it a line first so the two differ.
    if ((await textOf(a)) === '') {
      await caretAt(a, 'start');
      await typeInto(a, 'Notes\n');
      await converge(a, b, ['Notes\n']);
    }
    const before = await textOf(a);
    const times = { [fromA]: count(before, fromA) + 1, [fromB]: count(before, fromB) + 1 };
    await caretAt(a, 'start');
    await caretAt(b, 'end');
    await Promise.all([typeInto(a, fromA), typeInto(b, fromB)]);
    const text = await converge(a, b, [fromA, fromB], times);
    if (!text.startsWith(fromA)) fail(`A typed at the start, but the text is ${JSON.stringify(text)}`);
    if (!text.endsWith(fromB)) fail(`B typed at the end, but the text is ${JSON.stringify(text)}`);
  });

  await step("c. B sees A's caret with A's name", async () => {
    // A's caret is where A stopped typing: just after "Hello from A. ", on the first line.
    const label = b.locator('#doc-mirror').getByText(userA, { exact: true });
    try {
      await label.waitFor({ state: 'visible' });
    } catch {
      fail(`no caret labelled ${userA} in ${userB}'s editor; the mirror holds: ${await b.locator('#doc-mirror').innerHTML()}`);
    }
    // B typed at the end: scroll B's editor to the top, where A's caret is (the mirror follows).
    await b.locator('#doc-body').evaluate((area) => area.scrollTo(0, 0));
    await b.waitForFunction(() => document.getElementById('doc-mirror').scrollTop === 0);
    // The mirror is redrawn on every change and scroll: look the label up afresh each time.
    const nearTop = (name) => {
      const area = document.getElementById('doc-body').getBoundingClientRect();
      const label = [...document.querySelectorAll('#doc-mirror *')].find(
        (el) => el.children.length === 0 && el.textContent === name,
      );
      if (!label) return false;
      const r = label.getBoundingClientRect();
      return r.height > 0 && r.y >= area.y - r.height && r.y <= area.y + area.height / 2;
    };
    try {
      await b.waitForFunction(nearTop, userA, { timeout: TIMEOUT });
    } catch {
      const caret = await label.boundingBox().catch(() => null);
      const area = await b.locator('#doc-body').boundingBox();
      fail(`${userA}'s caret label is at ${JSON.stringify(caret)}, not near the top of the editor ${JSON.stringify(area)}`);
    }
  });

  const offline = ' offline edit';
  const online = ' online edit';
  await step('d. B edits offline while A edits online; both converge once B is back', async () => {
    await b.context().setOffline(true);
    try {
      await b.locator('#status.offline').waitFor();
    } catch {
      fail(`${userB}'s status did not turn offline when the browser went offline`);
    }
    const before = await textOf(a);
    const times = { [offline]: count(before, offline), [online]: count(before, online) };
    await caretAt(b, 'end');
    await caretAt(a, 'end');
    await Promise.all([typeInto(b, offline), typeInto(a, online)]);
    const saved = await b.locator('#doc-saved').innerText();
    if (!saved.includes('Offline')) fail(`${userB} is offline but #doc-saved says ${JSON.stringify(saved)}`);
    await sleep(500);
    if (count(await textOf(a), offline) !== times[offline]) fail(`${userA} got ${userB}'s edit while ${userB} was offline`);
    if (count(await textOf(b), online) !== times[online]) fail(`${userB} got ${userA}'s edit while offline`);
    await b.context().setOffline(false);
    await waitOnline(b, `${userB} (back online)`);
    await converge(a, b, [offline, online], { [offline]: times[offline] + 1, [online]: times[online] + 1 });
    await expectEditing(a, userB, `${userA}'s page after ${userB} came back`);
    await b.locator('#doc-saved', { hasText: 'Saved' }).waitFor();
  });

  await step('e. screenshots', async () => {
    await caretAt(b, 'start'); // so that A's screenshot shows B's caret too
    await a.locator('#doc-body').evaluate((area) => area.scrollTo(0, 0));
    await a.locator('#doc-mirror').getByText(userB, { exact: true }).waitFor({ state: 'visible' });
    await shot(a, 'docs-desktop.png');
    await a.setViewportSize({ width: 390, height: 844 });
    await shot(a, 'docs-phone.png');
  });
});
