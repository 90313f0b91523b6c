// The notification bell on every signed-in page: the unread count, kept live over
// server-sent events. The stream starts with the current count; every notification event
// carries the new absolute count, so missed or reordered events cannot leave it wrong. The
// browser reconnects by itself with Last-Event-ID and is replayed what it missed; when that
// is too old ("hearth.gap") the count is fetched afresh.
const badge = document.querySelector('[data-testid=unread-count]');

function show(unread) {
  if (typeof unread !== 'number') return;
  badge.textContent = unread > 99 ? '99+' : String(unread);
  badge.hidden = unread === 0;
  // The link's name holds the count it shows ("12 unread notifications"), as screen readers
  // and voice control expect of a name next to visible text.
  badge.closest('a')?.setAttribute('aria-label', unread ? `${badge.textContent} unread notifications` : 'Notifications');
}

// Live events received so far: a fetched count only applies if no newer event came while it
// was asked for. (The stream's opening count is older than any fetch made after it opened.)
let seen = 0;

async function refetch() {
  const before = seen;
  const response = await fetch('/api/notifications/unread', { credentials: 'same-origin' });
  if (response.ok && seen === before) show((await response.json()).unread);
}

if (badge && 'EventSource' in window) {
  const source = new EventSource('/notifications/stream');
  for (const type of ['notification.count', 'notification.new', 'notification.read']) {
    source.addEventListener(type, (event) => {
      try {
        if (type !== 'notification.count') seen += 1;
        show(JSON.parse(event.data).unread);
      } catch (e) {
        console.warn('bad notification event', e);
      }
    });
  }
  // The stream's opening count is read just before it joins the user's group; once it is
  // open, ask again, so a notification that came in between is counted.
  source.addEventListener('open', refetch);
  source.addEventListener('hearth.gap', refetch);
}
