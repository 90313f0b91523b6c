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
  badge.closest('a')?.setAttribute('aria-label', `Notifications (${unread} unread)`);
}

if (badge && 'EventSource' in window) {
  const source = new EventSource('/notifications/stream');
  for (const type of ['notification.count', 'notification.new', 'notification.read']) {
    source.addEventListener(type, (event) => {
      try {
        show(JSON.parse(event.data).unread);
      } catch (e) {
        console.warn('bad notification event', e);
      }
    });
  }
  source.addEventListener('hearth.gap', async () => {
    const response = await fetch('/api/notifications/unread', { credentials: 'same-origin' });
    if (response.ok) show((await response.json()).unread);
  });
}
