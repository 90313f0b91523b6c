// Images in posts (#32), as an author ($AUTHOR, $PASSWORD) writes them: $ALLOWED_IMAGE is another
// site's image the server's proxy may fetch, $REFUSED_IMAGE one on a loopback address it may
// not, $NOT_IMAGE an HTML page.
//
//   a. the editor's preview shows the allowed image (through /img/…), and the note under it
//      names the two that cannot be shown, each with the proxy's reason
//   b. the published post shows the image, loaded from this site (the CSP allows no other);
//      lib.mjs fails on any CSP violation
// Screenshots: preview-1280.png, preview-390.png, post-1280.png.
import { BASE, clickAndWait, expectText, fail, login, run, shot, step } from './lib.mjs';

const { AUTHOR: user, PASSWORD: password, ALLOWED_IMAGE: allowed, REFUSED_IMAGE: refused, NOT_IMAGE: notImage } = process.env;
if (!user || !password || !allowed || !refused || !notImage) fail('AUTHOR, PASSWORD, ALLOWED_IMAGE, REFUSED_IMAGE and NOT_IMAGE are required');

const body = `A dot: ![dot](${allowed})\n\nA secret: ![secret](${refused})\n\nA page: ![page](${notImage})`;

/** The loaded images of `selector`: their src and natural width. */
async function images(page, selector) {
  return page.locator(`${selector} img`).evaluateAll((imgs) => imgs.map((i) => ({ src: i.getAttribute('src'), width: i.naturalWidth })));
}

await run(async ({ page }) => {
  await page.setViewportSize({ width: 1280, height: 800 });
  await login(page, user, password);

  await step('a. the preview shows the image and names those that cannot be shown', async () => {
    await page.goto(`${BASE}/posts/new`);
    await page.locator('input[name=title]').fill('Pictures');
    await page.locator('textarea[name=body]').fill(body);
    await page.getByRole('tab', { name: 'Preview' }).click();
    const note = page.locator('[data-testid=image-note]');
    await note.waitFor({ state: 'visible' });
    await page.waitForFunction(() => document.querySelectorAll('[data-testid=image-note] li').length === 2);
    const items = await note.locator('li').allInnerTexts();
    const secret = items.find((i) => i.includes(refused));
    const html = items.find((i) => i.includes(notImage));
    if (!secret || !/private or local network/.test(secret)) fail(`the note says ${JSON.stringify(items)}`);
    if (!html || !/not an image/.test(html)) fail(`the note says ${JSON.stringify(items)}`);
    if (items.some((i) => i.includes(allowed))) fail(`the allowed image is listed: ${JSON.stringify(items)}`);
    await page.waitForFunction(() => document.querySelector('.preview img')?.naturalWidth > 0);
    const shown = await images(page, '.preview');
    if (!shown[0].src.startsWith('/img/') || shown[0].width !== 48) fail(`the preview's images: ${JSON.stringify(shown)}`);
    await shot(page, 'preview-1280.png');
    await page.setViewportSize({ width: 390, height: 844 });
    const wide = await page.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);
    if (wide > 0) fail(`at 390 px the editor scrolls ${wide} px sideways`);
    await shot(page, 'preview-390.png');
    await page.setViewportSize({ width: 1280, height: 800 });
    // Back to Write: the note goes with the preview.
    await page.getByRole('tab', { name: 'Write' }).click();
    if (await note.isVisible()) fail('the note stayed under the editor');
  });

  await step('b. the published post shows the image from this site', async () => {
    await clickAndWait(page, page.getByRole('button', { name: 'Publish' }));
    await expectText(page, 'A dot:');
    await page.waitForFunction(() => document.querySelector('.prose img')?.complete);
    const shown = await images(page, '.prose');
    const dot = shown.find((i) => i.src.startsWith('/img/') && i.width === 48);
    if (!dot) fail(`the post's images: ${JSON.stringify(shown)}`);
    if (shown.some((i) => !i.src.startsWith('/img/'))) fail(`an image is not proxied: ${JSON.stringify(shown)}`);
    await shot(page, 'post-1280.png');
  });
});
