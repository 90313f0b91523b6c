// An import shows its progress live: a user uploads a CSV of 2,000 drafts from the import page;
// the upload's page shows a progress bar that moves batch by batch to done, then the summary;
// a file with bad rows lists them and imports nothing; the bell counts both results.
// The Rust side (tests/api/browser.rs) holds the job queue until the upload's page listens,
// so that the page sees the whole import rather than only its end.
// Screenshots: form.png, waiting.png, done.png, rejected.png.
import { BASE, expectText, fail, log, run, shot, signup, step, uniqueName } from './lib.mjs';

const password = 'correct horse battery';
const user = uniqueName('importer');
const ROWS = 2000;

function csv(rows) {
  const lines = ['title,body'];
  for (let i = 1; i <= rows; i++) {
    lines.push(`Imported post ${i},"The body of post ${i}, in *Markdown*."`);
  }
  return Buffer.from(lines.join('\n') + '\n');
}

async function uploadFile(page, name, buffer) {
  await page.goto(`${BASE}/uploads`);
  const form = page.locator('#upload-form');
  await form.locator('input[type=file]').setInputFiles({ name, mimeType: 'text/csv', buffer });
  await Promise.all([
    page.waitForURL(/\/uploads\/\d+$/),
    form.getByRole('button', { name: 'Import' }).click(),
  ]);
}

await run(async ({ page }) => {
  const bar = page.locator('[data-testid=upload-progress]');
  const status = page.locator('[data-testid=upload-status]');
  const message = page.locator('[data-testid=upload-message]');

  // Every value the progress bar takes, from the one the server rendered on.
  await page.addInitScript(() => {
    window.progressValues = [];
    new MutationObserver((records) => {
      for (const record of records) {
        const nodes = record.type === 'attributes' ? [record.target] : [...record.addedNodes];
        for (const node of nodes) {
          if (node.id === 'upload-progress') window.progressValues.push(Number(node.getAttribute('value')));
        }
      }
    }).observe(document, { subtree: true, childList: true, attributes: true, attributeFilter: ['value'] });
  });

  await step('a. a signed-in user opens the import page from the nav', async () => {
    await signup(page, user, password);
    await page.getByRole('link', { name: 'Import', exact: true }).click();
    await expectText(page, 'Import posts');
    await expectText(page, 'Nothing imported yet.');
    await shot(page, 'form.png');
  });

  await step(`b. uploading ${ROWS} rows opens the upload's page, waiting at 0 %`, async () => {
    await uploadFile(page, 'posts.csv', csv(ROWS));
    await expectText(page, 'Import of “posts.csv”');
    await bar.waitFor();
    const initial = await page.evaluate(() => window.progressValues[0]);
    if (initial !== 0) fail(`the bar starts at ${initial}, expected 0`);
    await shot(page, 'waiting.png');
  });

  await step('c. the bar moves batch by batch to done, then the summary shows', async () => {
    try {
      await page.waitForFunction(() => Number(document.getElementById('upload-progress').value) === 100, null, {
        timeout: 30_000,
      });
    } catch {
      fail(`the bar did not reach 100; it moved through ${await page.evaluate(() => window.progressValues)}`);
    }
    await expectText(page, `Imported ${ROWS.toLocaleString('en-US')} posts as drafts.`);
    const statusText = (await status.innerText()).trim();
    if (statusText !== 'imported') fail(`the status says ${JSON.stringify(statusText)}`);
    const values = await page.evaluate(() => window.progressValues);
    log(`  the bar went ${values.join(' → ')}`);
    const between = values.filter((v) => v > 0 && v < 100);
    if (new Set(between).size < 2) fail(`the bar jumped instead of moving: ${values}`);
    for (let i = 1; i < values.length; i++) {
      if (values[i] < values[i - 1]) fail(`the bar went back: ${values}`);
    }
    if (await page.locator('#upload-errors').isVisible()) fail('an error list shows for a good file');
    await shot(page, 'done.png');
  });

  await step('d. a file with bad rows lists them and imports nothing', async () => {
    const bad = Buffer.from('title,body\nFine,ok\n,no title\nToo,many,fields\n');
    await uploadFile(page, 'bad.csv', bad);
    await expectText(page, 'Nothing was imported: 2 of 3 rows have problems.');
    const rows = page.locator('[data-testid=upload-errors] tbody tr');
    await rows.nth(1).waitFor();
    const cells = await rows.first().locator('td').allInnerTexts();
    if (cells.join('|') !== '3|3|A post needs a title.') fail(`the first error row reads ${cells.join(' | ')}`);
    if ((await status.innerText()).trim() !== 'not imported') fail('the status does not say "not imported"');
    if ((await message.innerText()).includes('<')) fail('markup in the message');
    await shot(page, 'rejected.png');
  });

  await step('e. the bell counts both results and the posts are there', async () => {
    const badge = page.locator('[data-testid=unread-count]');
    await badge.waitFor({ state: 'visible' });
    await page.waitForFunction(() => document.querySelector('[data-testid=unread-count]').textContent === '2');
    await page.goto(`${BASE}/notifications`);
    await expectText(page, `Imported ${ROWS.toLocaleString('en-US')} posts from “posts.csv”`);
    await expectText(page, '“bad.csv” was not imported: see what to fix');
    await page.goto(`${BASE}/uploads`);
    await expectText(page, 'posts.csv');
    await expectText(page, 'bad.csv');
    await page.goto(`${BASE}/posts/imported-post-${ROWS}`);
    await expectText(page, `The body of post ${ROWS}, in Markdown.`);
  });
});
