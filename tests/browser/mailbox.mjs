// The dev mailbox, as an admin ($ADMIN_USER / $ADMIN_PASSWORD, created by the Rust test):
// exactly one daily digest ($DIGEST_TO) is listed, its text names the unread post
// ($DIGEST_POST), and the "published" mail to the author is there too.
// Screenshots: mailbox.png, digest.png, mailbox-phone.png.
import { BASE, clickAndWait, expectText, fail, login, run, shot, step } from './lib.mjs';

const admin = process.env.ADMIN_USER;
const password = process.env.ADMIN_PASSWORD;
const to = process.env.DIGEST_TO;
const post = process.env.DIGEST_POST;
if (!admin || !password || !to || !post) fail('ADMIN_USER, ADMIN_PASSWORD, DIGEST_TO and DIGEST_POST are required');

await run(async ({ page }) => {
  await step('a. the admin opens the mailbox: one digest', async () => {
    await login(page, admin, password);
    await page.goto(`${BASE}/mailbox`);
    const digests = page.locator('.mail-list li', { hasText: 'digest' });
    const count = await digests.count();
    if (count !== 1) fail(`the mailbox lists ${count} digests, expected 1`);
    await expectText(page, `to ${to}`);
    await expectText(page, 'is published');
    await shot(page, 'mailbox.png');
  });

  await step('b. the digest names the unread post', async () => {
    await clickAndWait(page, page.locator('.mail-list li a', { hasText: 'digest' }));
    await expectText(page, post);
    await shot(page, 'digest.png');
    await page.setViewportSize({ width: 390, height: 844 });
    await page.goto(`${BASE}/mailbox`);
    await shot(page, 'mailbox-phone.png');
  });
});
