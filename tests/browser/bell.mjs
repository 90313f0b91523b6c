// The notification bell updates live: a reader subscribes to an author; the author writes and
// publishes a post in the editor (with a preview); the reader's bell count goes up without a
// reload; the reader opens the notification and lands on the post; the author, having verified
// their address through the link mailed to it, finds the "your post is published" mail in the
// dev mailbox, where the post's address is a link. Then the author invites the reader to a
// private room: the reader's bell rises again and the notification leads to the room.
// Screenshots: editor-preview.png, post.png, bell.png, notifications.png, posts-phone.png,
// mailbox.png, mail.png, invitation.png.
import { BASE, clickAndWait, expectPath, expectText, fail, newPage, run, shot, signup, step, uniqueName, verifyEmail } from './lib.mjs';

const password = 'correct horse battery';
const author = uniqueName('author');
const reader = uniqueName('reader');
const title = `Fresh news ${Date.now() % 10000}`;

await run(async ({ browser, page }) => {
  const readerPage = await newPage(browser);
  const badge = readerPage.locator('[data-testid=unread-count]');

  await step('a. the reader subscribes to the author', async () => {
    await signup(page, author, password);
    await verifyEmail(page);
    await signup(readerPage, reader, password);
    await readerPage.goto(`${BASE}/authors/${author}`);
    await clickAndWait(readerPage, readerPage.getByRole('button', { name: 'Subscribe' }));
    await expectText(readerPage, `You will hear about ${author}'s new posts.`);
    await readerPage.goto(`${BASE}/posts`);
    if (await badge.isVisible()) fail('the bell shows a count before anything happened');
  });

  await step('b. the author writes, previews and publishes', async () => {
    await page.goto(`${BASE}/posts/new`);
    await page.locator('input[name=title]').fill(title);
    await page.locator('textarea[name=body]').fill('Some **bold** news.\n\n<script>alert(1)</script>');
    await page.getByRole('tab', { name: 'Preview' }).click();
    await page.locator('.preview strong', { hasText: 'bold' }).waitFor();
    await shot(page, 'editor-preview.png');
    await clickAndWait(page, page.getByRole('button', { name: 'Publish' }));
    await expectText(page, 'Your post is published.');
    await shot(page, 'post.png');
  });

  await step("c. the reader's bell shows 1 without a reload", async () => {
    try {
      await badge.waitFor({ state: 'visible' });
    } catch {
      fail('the bell count never appeared');
    }
    const count = (await badge.innerText()).trim();
    if (count !== '1') fail(`the bell shows ${count}, expected 1`);
    await shot(readerPage, 'bell.png');
  });

  await step('d. the reader opens the notification and reads the post', async () => {
    await clickAndWait(readerPage, readerPage.locator('a.bell'));
    await expectText(readerPage, title);
    await shot(readerPage, 'notifications.png');
    await clickAndWait(readerPage, readerPage.getByRole('button', { name: new RegExp(title) }));
    await expectText(readerPage, 'Some bold news.');
    await badge.waitFor({ state: 'hidden' });
    await readerPage.setViewportSize({ width: 390, height: 844 });
    await readerPage.goto(`${BASE}/posts`);
    await shot(readerPage, 'posts-phone.png');
  });

  await step('e. the author finds the "published" mail in the dev mailbox', async () => {
    const subject = `Your post “${title}” is published`;
    for (let attempt = 0; ; attempt++) {
      await page.goto(`${BASE}/mailbox`);
      if ((await page.getByText(subject).count()) > 0) break;
      if (attempt === 20) fail(`no mail "${subject}" in the mailbox`);
      await page.waitForTimeout(250);
    }
    await shot(page, 'mailbox.png');
  });

  await step("f. the mail's address of the post is a link", async () => {
    await clickAndWait(page, page.getByRole('link', { name: new RegExp(title) }).first());
    const link = page.locator('[data-testid=mail-body] a[href*="/posts/"]');
    if ((await link.count()) !== 1) fail('the post\'s address in the mail is not a link');
    await shot(page, 'mail.png');
  });

  await step("g. an invitation to a private room raises the reader's bell and leads to the room", async () => {
    const room = `Plans ${Date.now() % 10000}`;
    await readerPage.setViewportSize({ width: 1280, height: 800 });
    await page.goto(`${BASE}/chat`);
    await page.locator('input[name=name]').fill(room);
    await page.locator('input[name=private]').check();
    await clickAndWait(page, page.getByRole('button', { name: 'Create room' }));
    await page.locator('input[name=username]').fill(reader);
    await clickAndWait(page, page.getByRole('button', { name: 'Invite' }));
    await expectText(page, `${reader} can now open this room.`);
    try {
      await badge.waitFor({ state: 'visible' });
    } catch {
      fail('the bell never showed the invitation');
    }
    await clickAndWait(readerPage, readerPage.locator('a.bell'));
    const invitation = `${author} invited you to ${room}`;
    await clickAndWait(readerPage, readerPage.getByRole('button', { name: invitation }));
    await expectText(readerPage, room);
    expectPath(readerPage, new URL(page.url()).pathname, 'the invitation leads to the room');
    await shot(readerPage, 'invitation.png');
  });
});
