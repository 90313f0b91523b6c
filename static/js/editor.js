// The post editor's Write / Preview tabs. The preview is rendered by the server, with the
// same Markdown renderer and sanitiser as the published page. The tabs follow the ARIA tabs
// pattern: one tab stop, the arrow keys (and Home, End) move between them.
const form = document.getElementById('editor');
const csrf = document.querySelector('meta[name=csrf-token]')?.content ?? '';

if (form) {
  const tabs = form.querySelectorAll('[data-tab]');
  const panels = form.querySelectorAll('[data-panel]');
  const preview = form.querySelector('.preview');
  const body = form.querySelector('textarea[name=body]');

  async function select(name) {
    for (const tab of tabs) {
      const selected = tab.dataset.tab === name;
      tab.setAttribute('aria-selected', String(selected));
      tab.tabIndex = selected ? 0 : -1;
    }
    for (const panel of panels) panel.hidden = panel.dataset.panel !== name;
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
