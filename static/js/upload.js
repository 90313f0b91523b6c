// Imports: the upload form (/uploads) and an upload's live progress (/uploads/{id}).
//
// The form is sent with fetch: a multipart body's token field is not what the CSRF check
// reads, the X-CSRF-Token header is; and a file over the limit is refused before it is sent.
//
// The upload page follows its import over server-sent events: the stream starts with the
// state in the database ("import.state"), then brings the job's "import.progress" and
// "import.done" messages. Every update carries the whole state, and updates are ordered by
// (attempt, percent): a late or replayed one never moves the bar back, and a finished import
// stays finished. What the server sends is written with textContent only.
const csrf = document.querySelector('meta[name=csrf-token]')?.content ?? '';

const form = document.getElementById('upload-form');
if (form) {
  const input = form.querySelector('input[type=file]');
  const button = form.querySelector('button[type=submit]');
  const error = document.getElementById('upload-error');
  const label = button.textContent;

  function fail(message) {
    error.textContent = message;
    error.hidden = false;
    button.disabled = false;
    button.textContent = label;
  }

  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    error.hidden = true;
    const file = input.files[0];
    if (!file) return;
    if (file.size > Number(form.dataset.max)) return fail(form.dataset.tooLarge);
    button.disabled = true;
    button.textContent = 'Uploading…';
    let response;
    try {
      response = await fetch(form.action, {
        method: 'POST',
        headers: { 'x-csrf-token': csrf, accept: 'application/json' },
        body: new FormData(form),
        credentials: 'same-origin',
      });
    } catch {
      return fail('The file did not reach the server. Check the connection and try again.');
    }
    const body = await response.json().catch(() => null);
    if (response.ok && body?.url) {
      location.assign(body.url);
    } else {
      fail(body?.error?.message ?? `The upload failed (${response.status}).`);
    }
  });
  button.disabled = false;
}

const upload = document.getElementById('upload');
if (upload) {
  const id = upload.dataset.id;
  const bar = document.getElementById('upload-progress');
  const status = document.getElementById('upload-status');
  const message = document.getElementById('upload-message');
  const errors = document.getElementById('upload-errors');
  const more = document.getElementById('upload-more-errors');
  const labels = { pending: 'importing', imported: 'imported', rejected: 'not imported', failed: 'failed' };
  let shown = {
    status: upload.dataset.status,
    attempt: Number(upload.dataset.attempt),
    percent: Number(upload.dataset.percent),
  };

  const finished = () => shown.status !== 'pending';

  function isNewer(update) {
    if (finished()) return false;
    if (update.status !== 'pending') return true;
    if (update.attempt !== shown.attempt) return update.attempt > shown.attempt;
    return update.percent >= shown.percent;
  }

  function showErrors(summary) {
    const rows = summary.errors.map((e) => {
      const tr = document.createElement('tr');
      for (const value of [e.row, e.line, e.message]) {
        const td = document.createElement('td');
        td.textContent = String(value);
        tr.append(td);
      }
      return tr;
    });
    errors.querySelector('tbody').replaceChildren(...rows);
    errors.hidden = rows.length === 0;
    const extra = summary.error_count - summary.errors.length;
    document.getElementById('upload-more-count').textContent = String(extra);
    more.hidden = extra <= 0;
  }

  function apply(update) {
    if (!isNewer(update)) return;
    shown = update;
    bar.value = update.percent;
    bar.textContent = `${update.percent} %`;
    message.textContent = update.message;
    status.textContent = labels[update.status] ?? update.status;
    status.className = `tag ${update.status}`;
    if (update.summary) showErrors(update.summary);
  }

  if (!finished() && 'EventSource' in window) {
    const source = new EventSource(`/uploads/${id}/events`);
    const stopWhenFinished = () => {
      if (finished()) source.close();
    };
    for (const type of ['import.state', 'import.progress', 'import.done']) {
      source.addEventListener(type, (event) => {
        try {
          apply(JSON.parse(event.data));
        } catch (e) {
          console.warn('bad import event', e);
        }
        stopWhenFinished();
      });
    }
    // The stream's first state is read just before it joins the upload's group: a message
    // sent in between would be missed. The state read once the stream is open closes that
    // gap, as it does after a reconnect whose missed messages are no longer kept.
    const refresh = async () => {
      const response = await fetch(`/api/uploads/${id}`, { credentials: 'same-origin' });
      if (response.ok) apply(await response.json());
      stopWhenFinished();
    };
    source.addEventListener('open', refresh);
    source.addEventListener('hearth.gap', refresh);
  }
}
