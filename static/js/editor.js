// The post editor's Write / Preview tabs. The preview is rendered by the server, with the
// same Markdown renderer and sanitiser as the published page. The tabs follow the ARIA tabs
// pattern: one tab stop, the arrow keys (and Home, End) move between them.
//
// Images from other sites come through the server's image proxy (/img/<signature>/<URL in
// base64url>). An image of the preview that does not load is asked of the proxy again, and the
// note under the preview lists its address and the proxy's reason (too large, not an image,
// on a private network, unreachable, …), so the author knows before readers do.
const form = document.getElementById('editor');
const csrf = document.querySelector('meta[name=csrf-token]')?.content ?? '';

if (form) {
  const tabs = form.querySelectorAll('[data-tab]');
  const panels = form.querySelectorAll('[data-panel]');
  const preview = form.querySelector('.preview');
  const body = form.querySelector('textarea[name=body]');
  const note = form.querySelector('.image-note');
  // Each preview counts up: a check that ends after the next preview began reports nothing.
  let rendering = 0;

  /** The external address a proxy URL names (its last segment, base64url). */
  function original(src) {
    try {
      const encoded = src.split('/').pop().replaceAll('-', '+').replaceAll('_', '/');
      const bytes = Uint8Array.from(atob(encoded), (c) => c.charCodeAt(0));
      return new TextDecoder().decode(bytes);
    } catch {
      return src;
    }
  }

  async function refused(img, generation) {
    const src = img.getAttribute('src');
    let reason;
    try {
      // The proxy's reason, as JSON (`{"error": {"message": …}}`) rather than its error page.
      const response = await fetch(src, { credentials: 'same-origin', headers: { accept: 'application/json' } });
      reason = response.ok
        ? 'The browser cannot show it.'
        : ((await response.json().catch(() => null))?.error?.message ?? `The image proxy answered ${response.status}.`);
    } catch {
      reason = 'The image proxy cannot be reached.';
    }
    if (generation !== rendering) return;
    const item = document.createElement('li');
    const address = document.createElement('code');
    address.textContent = original(src);
    item.append(address, ` — ${reason}`);
    note.querySelector('ul').append(item);
    note.hidden = false;
  }

  function checkImages() {
    const generation = rendering;
    for (const img of preview.querySelectorAll('img[src^="/img/"]')) {
      if (img.complete && img.naturalWidth === 0) refused(img, generation);
      else img.addEventListener('error', () => refused(img, generation), { once: true });
    }
  }

  async function select(name) {
    for (const tab of tabs) {
      const selected = tab.dataset.tab === name;
      tab.setAttribute('aria-selected', String(selected));
      tab.tabIndex = selected ? 0 : -1;
    }
    for (const panel of panels) panel.hidden = panel.dataset.panel !== name;
    rendering += 1;
    note.hidden = true;
    note.querySelector('ul').replaceChildren();
    if (name !== 'preview') return;
    preview.textContent = 'Rendering…';
    const response = await fetch('/posts/preview', {
      method: 'POST',
      headers: { 'x-csrf-token': csrf, 'content-type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams({ body: body.value }),
      credentials: 'same-origin',
    });
    if (response.ok) {
      // Sanitised HTML from the server.
      preview.innerHTML = (await response.text()) || '<p class="muted">Nothing to preview.</p>';
      checkImages();
    } else {
      preview.textContent = `Cannot preview (${response.status}).`;
    }
  }

  for (const tab of tabs) tab.addEventListener('click', () => select(tab.dataset.tab));

  const keys = { ArrowRight: 1, ArrowLeft: -1, Home: -Infinity, End: Infinity };
  form.querySelector('[role=tablist]')?.addEventListener('keydown', (event) => {
    if (!(event.key in keys)) return;
    event.preventDefault();
    const list = [...tabs];
    const at = list.indexOf(document.activeElement);
    const step = keys[event.key];
    const next = Number.isFinite(step)
      ? list[(at + step + list.length) % list.length]
      : list[step < 0 ? 0 : list.length - 1];
    next.focus();
    select(next.dataset.tab);
  });
}
