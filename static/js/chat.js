// The chat room page: one WebSocket to /ws/rooms/<slug>.
//
// Messages are kept by id: whatever arrives (the first 50, a replay after a reconnect, a
// live broadcast, an edit) replaces the message with that id or is inserted in id order, so
// nothing shows twice. After a drop the page reconnects with backoff and ?last_id= of the
// newest message it has, and the server sends what was missed. Text is always set with
// textContent: nothing a user types is ever parsed as HTML.
//
// A message typed stays in the input until the server has accepted it (its broadcast comes
// back with the nonce it was sent with): a refusal (too fast, too long) leaves the text there
// to send again, and says why right above the input, where the eyes are.
const root = document.getElementById('chat');
const slug = root.dataset.slug;
const list = document.getElementById('messages');
const older = document.getElementById('older');
const typingLine = document.getElementById('typing');
const presenceList = document.getElementById('presence');
const status = document.getElementById('status');
const form = document.getElementById('composer');
const input = document.getElementById('body');
const errorLine = document.getElementById('chat-error');
const empty = document.getElementById('empty');

const messages = new Map(); // id -> element
const present = new Map(); // channel -> username
const typers = new Map(); // user id -> { name, until }
let me = null;
let lastId = 0;
let socket = null;
let attempt = 0;
let lastTyping = 0;
// The message sent and not yet accepted: { nonce, body }.
let pending = null;

const timeFormat = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit' });

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function showError(text) {
  errorLine.textContent = text;
  errorLine.hidden = !text;
  if (text) {
    input.setAttribute('aria-invalid', 'true');
    errorLine.scrollIntoView({ block: 'nearest' });
  } else {
    input.removeAttribute('aria-invalid');
  }
}

/** The empty room's note, shown while there is no message. */
function showEmpty() {
  if (empty) empty.hidden = messages.size > 0;
}

function setStatus(online) {
  status.textContent = online ? 'online' : 'reconnecting…';
  status.className = `status ${online ? 'online' : 'offline'}`;
}

function send(frame) {
  if (socket?.readyState !== WebSocket.OPEN) {
    showError('You are offline; reconnecting…');
    return false;
  }
  socket.send(JSON.stringify(frame));
  return true;
}

function render(message) {
  const item = el('article', 'msg');
  item.id = `m${message.id}`;
  item.dataset.id = message.id;
  if (me && message.author_id === me.id) item.classList.add('mine');
  if (message.deleted) item.classList.add('deleted');
  const head = el('div', 'msg-head');
  head.append(el('span', 'msg-author', message.author ?? 'deleted user'));
  head.append(el('time', 'msg-time', timeFormat.format(new Date(message.created_at))));
  if (message.edited && !message.deleted) head.append(el('span', 'edited', '(edited)'));
  item.append(head);
  item.append(el('div', 'msg-body', message.deleted ? 'message deleted' : message.body));
  const mine = me && message.author_id === me.id;
  if (!message.deleted && (mine || me?.is_admin)) {
    const actions = el('div', 'msg-actions');
    if (mine) {
      const edit = el('button', 'link small', 'Edit');
      edit.type = 'button';
      edit.addEventListener('click', () => startEdit(item, message));
      actions.append(edit);
    }
    const remove = el('button', 'link small', mine ? 'Delete' : 'Remove');
    remove.type = 'button';
    remove.addEventListener('click', () => {
      if (confirm('Delete this message?')) send({ type: 'delete', id: message.id });
    });
    actions.append(remove);
    item.append(actions);
  }
  return item;
}

function startEdit(item, message) {
  const editor = el('form', 'composer');
  const field = el('input');
  field.value = message.body;
  field.maxLength = Number(root.dataset.max);
  field.setAttribute('aria-label', 'Edit message');
  const save = el('button', '', 'Save');
  const cancel = el('button', 'secondary', 'Cancel');
  cancel.type = 'button';
  editor.append(field, save, cancel);
  const body = item.querySelector('.msg-body');
  body.replaceWith(editor);
  field.focus();
  cancel.addEventListener('click', () => editor.replaceWith(body));
  editor.addEventListener('submit', (event) => {
    event.preventDefault();
    if (send({ type: 'edit', id: message.id, body: field.value })) editor.replaceWith(body);
  });
}

function nearBottom() {
  return list.scrollHeight - list.scrollTop - list.clientHeight < 80;
}

/** Inserts or replaces a message, keeping id order. */
function upsert(message) {
  const node = render(message);
  const existing = messages.get(message.id);
  if (existing) {
    existing.replaceWith(node);
  } else {
    let next = null;
    for (const [id, other] of messages) {
      if (id > message.id && (!next || id < Number(next.dataset.id))) next = other;
    }
    list.insertBefore(node, next);
  }
  messages.set(message.id, node);
  lastId = Math.max(lastId, message.id);
  showEmpty();
}

function oldestId() {
  return Math.min(...messages.keys());
}

function renderPresence() {
  const names = [...new Set(present.values())].filter(Boolean).sort();
  presenceList.replaceChildren(
    ...names.map((name) => {
      const item = el('li');
      item.append(el('span', 'dot'), document.createTextNode(name));
      return item;
    }),
  );
}

function renderTyping() {
  const now = Date.now();
  for (const [id, typer] of typers) if (typer.until < now) typers.delete(id);
  const names = [...typers.values()].map((t) => t.name);
  typingLine.textContent =
    names.length === 0 ? '' : names.length === 1 ? `${names[0]} is typing…` : `${names.join(', ')} are typing…`;
}
setInterval(renderTyping, 1000);

function handle(frame) {
  switch (frame.type) {
    case 'hello': {
      me = frame.you;
      if (frame.gap) {
        // Too much was missed to fill in: start over from the latest messages.
        for (const node of messages.values()) node.remove();
        messages.clear();
      }
      const stick = messages.size === 0 || nearBottom();
      present.clear();
      for (const entry of frame.presence) present.set(entry.channel, entry.username);
      renderPresence();
      for (const message of frame.messages) upsert(message);
      if (messages.size === frame.messages.length) older.hidden = !frame.more;
      showEmpty();
      if (stick) list.scrollTop = list.scrollHeight;
      break;
    }
    case 'history': {
      const height = list.scrollHeight;
      for (const message of frame.messages) upsert(message);
      older.hidden = !frame.more;
      list.scrollTop += list.scrollHeight - height;
      break;
    }
    case 'chat.message': {
      const stick = nearBottom() || frame.message.author_id === me?.id;
      if (pending && frame.nonce === pending.nonce) {
        // Accepted: now the text may go (unless more was typed since).
        if (input.value.trim() === pending.body) input.value = '';
        pending = null;
        showError('');
      }
      upsert(frame.message);
      typers.delete(frame.message.author_id);
      renderTyping();
      if (stick) list.scrollTop = list.scrollHeight;
      break;
    }
    case 'chat.update':
      upsert(frame.message);
      break;
    case 'chat.typing':
      typers.set(frame.user_id, { name: frame.username, until: Date.now() + 3000 });
      renderTyping();
      break;
    case 'presence.join':
      present.set(frame.channel, frame.username);
      renderPresence();
      break;
    case 'presence.leave':
      present.delete(frame.channel);
      renderPresence();
      break;
    case 'error':
      // A refused send leaves its text in the input, to be sent again.
      pending = null;
      showError(frame.message);
      break;
  }
}

function connect() {
  const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
  const resume = lastId ? `?last_id=${lastId}` : '';
  socket = new WebSocket(`${scheme}://${location.host}/ws/rooms/${slug}${resume}`);
  socket.addEventListener('open', () => {
    attempt = 0;
    setStatus(true);
    showError('');
  });
  socket.addEventListener('message', (event) => handle(JSON.parse(event.data)));
  socket.addEventListener('close', (event) => {
    setStatus(false);
    // Refused for good: not signed in, no such room, not a member.
    if ([4401, 4403, 4404].includes(event.code)) {
      status.textContent = 'closed';
      showError(event.reason || 'You cannot open this room.');
      return;
    }
    const wait = Math.min(10_000, 300 * 2 ** attempt++) * (0.75 + Math.random() / 2);
    setTimeout(connect, wait);
  });
}

form.addEventListener('submit', (event) => {
  event.preventDefault();
  const body = input.value.trim();
  if (!body) return;
  const nonce = crypto.randomUUID?.() ?? String(Math.random()).slice(2);
  if (send({ type: 'send', body, nonce })) pending = { nonce, body };
});

input.addEventListener('input', () => {
  if (Date.now() - lastTyping > 2000 && input.value) {
    lastTyping = Date.now();
    send({ type: 'typing' });
  }
});

older.addEventListener('click', () => {
  if (messages.size) send({ type: 'history', before: oldestId() });
});

connect();
