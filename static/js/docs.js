// The collaborative document editor: a plain <textarea> bound to a Yjs document, synced over
// one WebSocket to /ws/docs/<id>.
//
// The document
//   One Y.Doc holds the text as the Y.Text 'body' (the server keeps the same document with yrs).
//   Yjs merges concurrent edits: every client converges to the same text whatever order the
//   updates arrive in, and an update that arrives twice is ignored.
//
// The protocol (JSON text frames; binary Yjs data is standard base64)
//   server → hello {doc, you, presence}    first frame on every connection
//   client → sync {sv}                     our state vector, sent on every hello
//   server → sync {update, sv}             what we lack, and the server's state vector; we apply
//                                          the update and send back, as one `update`, whatever
//                                          the server lacks: the edits made while offline
//   client → update {update, seq}          a local edit (only once synced, only for editors)
//   server → ack {seq}                     that update is stored: "Saving…" becomes "Saved"
//   server → doc.update {update, from}     someone else's edit
//   client → awareness {cursor}            our selection as Yjs relative positions (or null); editors only
//   server → doc.awareness {channel, …}    someone else's selection: drawn as a coloured caret
//   server → presence.join / .leave        a connection opened / closed: the "Editing now" list
//   server → doc.title, doc.restored, access {can_edit}, error
// While the socket is down local edits only go into the Y.Doc; the sync handshake of the next
// connection sends them. Close codes 4401/4403/4404 are final; anything else reconnects with
// backoff (0.5 s doubling to 10 s, with jitter), and so does the browser coming back online.
//
// The binding
//   `shadow` is the text the textarea showed after the last sync between the two. Local: on
//   `input` the new value is diffed against `shadow` (common prefix and suffix, with the caret
//   as a hint) and applied to the Y.Text as one delete + one insert in a 'local' transaction.
//   Remote: a Y.Text change from any other origin rewrites the textarea's value and maps the
//   selection through the change's delta, so the caret stays on the character it was at.
//   Undo/redo (Ctrl/Cmd+Z, Ctrl+Shift+Z, Ctrl+Y) use a Y.UndoManager: they revert only our edits.
//   Others' carets are drawn in #doc-mirror, a transparent copy of the textarea's text laid
//   over it (same font, padding, wrapping and scroll) with a caret mark and a selection
//   highlight inserted at the positions resolved from their relative positions.

// The page names the bundle's content-hashed URL (cached for a year) on this script's tag; the
// plain URL, revalidated on every use, is the fallback for a page that does not.
const Y = await import(
  document.querySelector('script[data-yjs]')?.dataset.yjs ?? '/static/vendor/yjs.mjs'
);

const LOCAL = 'local';
const REMOTE = 'remote';
const FINAL_CLOSES = {
  4401: 'You are signed out: sign in again to keep editing.',
  4403: 'You are not allowed to open this document.',
  4404: 'This document does not exist.',
};
const OFFLINE_TEXT = 'Offline — your edits are kept and will be sent when the connection is back';
const CURSOR_INTERVAL_MS = 100; // at most 10 awareness frames a second

const root = document.getElementById('doc');
const docId = root.dataset.id;
const titleEl = document.getElementById('doc-title');
const status = document.getElementById('status');
const mirror = document.getElementById('doc-mirror');
const textarea = document.getElementById('doc-body');
const savedLine = document.getElementById('doc-saved');
const errorLine = document.getElementById('doc-error');
const editorsList = document.getElementById('editors');

const ydoc = new Y.Doc();
const ytext = ydoc.getText('body');

let me = null; // `you` of the last hello: {id, username, color, can_edit}
let socket = null;
let synced = false; // this connection got its sync answer: updates may be sent
let everSynced = false; // the textarea shows the document (before that it is read-only)
let closedForGood = false;
let attempt = 0;
let reconnectTimer = null;
let shadow = ''; // the text the textarea and the Y.Text last agreed on
let seq = 0; // the last update's seq
let ackedSeq = 0; // the highest seq the server acknowledged
let unsent = false; // local edits made while not synced, not yet handed to the server
let notice = null; // {text, until}: a short message in #doc-saved that wins over the rest
const presence = new Map(); // channel -> {user_id, username, color}
const carets = new Map(); // channel -> {user_id, username, color, cursor}

// ---- small helpers -------------------------------------------------------------------------

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

/**
 * Sets an editor's colour as the CSS variable --user, and --user-ink to black or white,
 * whichever reads better on it (set through the CSSOM, which a strict CSP allows).
 */
function colored(node, color) {
  if (!color) return node;
  node.style.setProperty('--user', color);
  const hex = /^#([0-9a-f]{6})$/i.exec(color);
  if (hex) {
    const [r, g, b] = [0, 2, 4].map((i) => parseInt(hex[1].slice(i, i + 2), 16));
    node.style.setProperty('--user-ink', 0.299 * r + 0.587 * g + 0.114 * b > 160 ? '#1f1b17' : '#fff');
  }
  return node;
}

function showError(text) {
  errorLine.textContent = text || '';
  errorLine.hidden = !text;
}

function setStatus(online, text) {
  status.textContent = text || (online ? 'online' : everSynced ? 'reconnecting…' : 'connecting…');
  status.className = `status ${online ? 'online' : 'offline'}`;
}

function canEdit() {
  return Boolean(me?.can_edit) && !closedForGood;
}

function send(frame) {
  if (socket?.readyState !== WebSocket.OPEN) return false;
  socket.send(JSON.stringify(frame));
  return true;
}

// ---- saving state --------------------------------------------------------------------------

function renderSaved() {
  let text = '';
  if (notice && notice.until > Date.now()) text = notice.text;
  else if (closedForGood) text = unsent || ackedSeq < seq ? 'Your latest edits could not be saved.' : '';
  else if (!synced) text = everSynced && me?.can_edit ? OFFLINE_TEXT : '';
  else if (!me?.can_edit) text = 'Read only: you see changes live but cannot edit.';
  else if (ackedSeq < seq) text = 'Saving…';
  else if (seq > 0) text = 'Saved';
  if (savedLine.textContent !== text) savedLine.textContent = text;
  savedLine.classList.toggle('offline', !synced && everSynced);
}

function flash(text, ms = 5000) {
  notice = { text, until: Date.now() + ms };
  renderSaved();
  setTimeout(renderSaved, ms + 50);
}

function sendUpdate(update) {
  if (!send({ type: 'update', update: Y.toBase64(update), seq: seq + 1 })) return false;
  seq += 1;
  renderSaved();
  return true;
}

// Local edits (origin 'local') go to the server once this connection is synced; before that
// they stay in the Y.Doc and the next sync answer's state vector tells what to send.
ydoc.on('update', (update, origin) => {
  if (origin === REMOTE || !canEdit()) return;
  if (!synced || !sendUpdate(update)) unsent = true;
  renderSaved();
});

// ---- the textarea ↔ Y.Text binding ---------------------------------------------------------

const isHigh = (code) => code >= 0xd800 && code <= 0xdbff;
const isLow = (code) => code >= 0xdc00 && code <= 0xdfff;

/**
 * The one change turning `before` into `after`: {index, remove, insert}, or null. The text
 * after a collapsed caret is taken as unchanged, so typing "a" into "aa" inserts where the
 * caret is rather than at the end. Never splits a surrogate pair.
 */
function diffText(before, after, caret) {
  if (before === after) return null;
  const shortest = Math.min(before.length, after.length);
  let maxSuffix = shortest;
  if (caret !== null && caret <= after.length) maxSuffix = Math.min(maxSuffix, after.length - caret);
  let suffix = 0;
  while (suffix < maxSuffix && before[before.length - 1 - suffix] === after[after.length - 1 - suffix]) suffix++;
  let prefix = 0;
  while (prefix < shortest - suffix && before[prefix] === after[prefix]) prefix++;
  if (prefix > 0 && isHigh(before.charCodeAt(prefix - 1))) prefix--;
  if (suffix > 0 && isLow(before.charCodeAt(before.length - suffix))) suffix--;
  return {
    index: prefix,
    remove: before.length - prefix - suffix,
    insert: after.slice(prefix, after.length - suffix),
  };
}

/** Applies the textarea's pending local change (if any) to the Y.Text. */
function flushLocal() {
  if (!everSynced) return;
  const value = textarea.value;
  if (value === shadow) return;
  const caret = textarea.selectionStart === textarea.selectionEnd ? textarea.selectionEnd : null;
  const change = diffText(shadow, value, caret);
  shadow = value;
  if (!change) return;
  if (textarea.readOnly) {
    // Nothing should change a read-only textarea; if something did, put the document back.
    showTextFromDoc();
    return;
  }
  ydoc.transact(() => {
    if (change.remove) ytext.delete(change.index, change.remove);
    if (change.insert) ytext.insert(change.index, change.insert);
  }, LOCAL);
  if (ytext.toString() !== shadow) showTextFromDoc(); // cannot happen; never let them drift
}

/** Where position `index` of the old text is after the change `delta` (a Y.Text delta). */
function mapIndex(index, delta) {
  let old = 0; // position in the old text
  let moved = index;
  for (const op of delta) {
    if (old >= index) break;
    if (op.retain) {
      old += op.retain;
    } else if (op.insert !== undefined) {
      moved += typeof op.insert === 'string' ? op.insert.length : 1;
    } else if (op.delete) {
      moved -= Math.min(op.delete, index - old);
      old += op.delete;
    }
  }
  return Math.max(0, moved);
}

/** Shows the Y.Text in the textarea, keeping the selection where it was (mapped by `delta`). */
function showTextFromDoc(delta = []) {
  const text = ytext.toString();
  const { selectionStart, selectionEnd, selectionDirection, scrollTop } = textarea;
  const start = mapIndex(selectionStart, delta);
  const end = mapIndex(selectionEnd, delta);
  if (textarea.value !== text) textarea.value = text;
  shadow = text;
  if (textarea.selectionStart !== start || textarea.selectionEnd !== end) {
    textarea.setSelectionRange(start, end, selectionDirection);
  }
  textarea.scrollTop = scrollTop;
}

ytext.observe((event, transaction) => {
  if (transaction.origin === LOCAL) return;
  if (everSynced) showTextFromDoc(event.delta);
  if (transaction.origin === undoManager) caretAfter(event.delta);
  scheduleRender();
});

textarea.addEventListener('input', () => {
  flushLocal();
  scheduleCursor();
  scheduleRender();
});

// Undo and redo go through Yjs: they take back only this user's own edits, never someone
// else's (the textarea's own undo history is lost whenever a remote change rewrites its value).
const undoManager = new Y.UndoManager(ytext, { trackedOrigins: new Set([LOCAL]), captureTimeout: 500 });

/** Puts the caret where an undo or redo changed the text (after the last insert, or at a delete). */
function caretAfter(delta) {
  let index = 0;
  let caret = null;
  for (const op of delta) {
    if (op.retain) index += op.retain;
    else if (op.delete) caret = index;
    else if (op.insert !== undefined) caret = index += typeof op.insert === 'string' ? op.insert.length : 1;
  }
  if (caret !== null) textarea.setSelectionRange(caret, caret);
}

textarea.addEventListener('keydown', (event) => {
  if (!(event.ctrlKey || event.metaKey) || event.altKey || textarea.readOnly) return;
  const key = event.key.toLowerCase();
  const redo = (key === 'z' && event.shiftKey) || (key === 'y' && !event.shiftKey && !event.metaKey);
  if (key !== 'z' && !redo) return;
  event.preventDefault();
  flushLocal();
  if (redo) undoManager.redo();
  else undoManager.undo();
});

// ---- our caret → awareness -----------------------------------------------------------------

let cursorTimer = null;
let lastCursorAt = 0;
let lastCursorSent = null; // JSON of the last cursor sent on this connection

/** Our selection as relative positions (left-associated: the caret sticks to the text before it). */
function currentCursor() {
  if (!everSynced || document.activeElement !== textarea) return null;
  const { selectionStart, selectionEnd, selectionDirection } = textarea;
  const [anchor, head] =
    selectionDirection === 'backward' ? [selectionEnd, selectionStart] : [selectionStart, selectionEnd];
  const relative = (index) => Y.relativePositionToJSON(Y.createRelativePositionFromTypeIndex(ytext, index, -1));
  return { anchor: relative(anchor), head: relative(head) };
}

function sendCursor() {
  if (!synced || !canEdit()) return; // readers watch: the server shows editors' carets only
  flushLocal();
  const cursor = currentCursor();
  const json = JSON.stringify(cursor);
  if (json === lastCursorSent) return;
  if (send({ type: 'awareness', cursor })) {
    lastCursorSent = json;
    lastCursorAt = Date.now();
  }
}

/** Sends our cursor soon (throttled); `force` sends it even when unchanged. */
function scheduleCursor(force = false) {
  if (force) lastCursorSent = null;
  if (cursorTimer) return;
  const wait = Math.max(0, lastCursorAt + CURSOR_INTERVAL_MS - Date.now());
  cursorTimer = setTimeout(() => {
    cursorTimer = null;
    sendCursor();
  }, wait);
}

document.addEventListener('selectionchange', () => {
  if (document.activeElement === textarea) scheduleCursor();
});
textarea.addEventListener('focus', () => scheduleCursor());
textarea.addEventListener('blur', () => scheduleCursor());

// ---- others' carets in the mirror ----------------------------------------------------------

const MIRRORED_STYLES = [
  'fontFamily', 'fontSize', 'fontWeight', 'fontStyle', 'fontVariant', 'fontStretch', 'lineHeight',
  'letterSpacing', 'wordSpacing', 'tabSize', 'textIndent', 'textTransform', 'textAlign',
  'paddingTop', 'paddingRight', 'paddingBottom', 'paddingLeft', 'direction',
];

/** Lays the mirror exactly over the textarea's text area (inside its border, beside its scrollbar). */
function layoutMirror() {
  const style = getComputedStyle(textarea);
  for (const name of MIRRORED_STYLES) mirror.style[name] = style[name];
  mirror.style.top = `${textarea.offsetTop + textarea.clientTop}px`;
  mirror.style.left = `${textarea.offsetLeft + textarea.clientLeft}px`;
  mirror.style.width = `${textarea.clientWidth}px`;
  mirror.style.height = `${textarea.clientHeight}px`;
  syncScroll();
}

function syncScroll() {
  mirror.scrollTop = textarea.scrollTop;
  mirror.scrollLeft = textarea.scrollLeft;
  placeLabels();
}

/** The drawable carets: {from, to, head, user} in the current text, skipping unresolvable ones. */
function resolvedCarets() {
  const marks = [];
  for (const caret of carets.values()) {
    if (!caret.cursor) continue;
    const anchor = absolute(caret.cursor.anchor);
    const head = absolute(caret.cursor.head);
    if (anchor === null || head === null) continue;
    marks.push({ from: Math.min(anchor, head), to: Math.max(anchor, head), head, user: caret });
  }
  return marks;
}

function absolute(json) {
  try {
    const position = Y.createAbsolutePositionFromRelativePosition(Y.createRelativePositionFromJSON(json), ydoc);
    return position && position.type === ytext ? Math.min(position.index, shadow.length) : null;
  } catch {
    return null; // malformed: ignore it
  }
}

function caretNode(user) {
  const caret = colored(el('span', 'doc-caret'), user.color);
  caret.append('\u2060'); // a word joiner: gives the mark a line box without a width or a break
  caret.append(el('span', 'doc-caret-label', user.username));
  return caret;
}

function renderMirror() {
  const marks = everSynced ? resolvedCarets() : [];
  if (marks.length === 0) {
    mirror.replaceChildren();
    return;
  }
  const text = shadow;
  const cuts = [...new Set([0, text.length, ...marks.flatMap((m) => [m.from, m.to])])].sort((a, b) => a - b);
  const nodes = [];
  cuts.forEach((at, i) => {
    for (const mark of marks) if (mark.head === at) nodes.push(caretNode(mark.user));
    const next = cuts[i + 1];
    if (next === undefined) return;
    let node = document.createTextNode(text.slice(at, next));
    for (const mark of marks) {
      if (mark.from <= at && next <= mark.to) {
        const highlight = colored(el('span', 'doc-selection'), mark.user.color);
        highlight.append(node);
        node = highlight;
      }
    }
    nodes.push(node);
  });
  nodes.push('\u200b'); // like the textarea, show a line after a final newline
  mirror.replaceChildren(...nodes);
  syncScroll();
}

/** Puts a caret's name label below the caret when above it would be cut off. */
function placeLabels() {
  for (const caret of mirror.querySelectorAll('.doc-caret')) {
    const label = caret.lastElementChild;
    caret.classList.toggle('below', caret.offsetTop - mirror.scrollTop < label.offsetHeight);
  }
}

let renderQueued = false;
function scheduleRender() {
  if (renderQueued) return;
  renderQueued = true;
  requestAnimationFrame(() => {
    renderQueued = false;
    renderMirror();
  });
}

textarea.addEventListener('scroll', syncScroll);
new ResizeObserver(() => {
  layoutMirror();
  scheduleRender();
}).observe(textarea);
window.addEventListener('resize', () => {
  layoutMirror();
  scheduleRender();
});

// ---- who is editing ------------------------------------------------------------------------

function renderEditors() {
  const users = new Map(); // user id -> entry: one line per person, however many tabs
  if (me) users.set(me.id, { user_id: me.id, username: me.username, color: me.color });
  for (const entry of presence.values()) if (!users.has(entry.user_id)) users.set(entry.user_id, entry);
  const sorted = [...users.values()].sort((a, b) => a.username.localeCompare(b.username));
  editorsList.replaceChildren(
    ...sorted.map((user) => {
      const item = el('li');
      item.dataset.userId = user.user_id;
      item.append(colored(el('span', 'dot'), user.color), document.createTextNode(user.username));
      if (user.user_id === me?.id) item.append(el('span', 'muted small', '(you)'));
      return item;
    }),
  );
}

function setTitle(title) {
  const old = titleEl.textContent;
  titleEl.textContent = title;
  document.title = document.title.startsWith(old) ? title + document.title.slice(old.length) : title;
}

// ---- frames from the server ----------------------------------------------------------------

function applyRemote(base64) {
  flushLocal(); // the textarea must match the Y.Text before a remote change is mapped onto it
  Y.applyUpdate(ydoc, Y.fromBase64(base64), REMOTE);
}

/** The sync answer: the connection is live. Sends whatever the server lacks. */
function onSync(frame) {
  applyRemote(frame.update);
  if (!everSynced) {
    everSynced = true;
    showTextFromDoc();
  }
  synced = true;
  attempt = 0;
  textarea.readOnly = !canEdit();
  textarea.placeholder = canEdit() ? 'Start writing…' : '';
  // What the server lacks. Yjs always puts the whole delete set into such an update, so it is
  // rarely empty: send it only when it has new content or we have edits the server may lack
  // (made offline, or sent but never acknowledged); otherwise every reconnect stores a no-op.
  const missing = Y.encodeStateAsUpdate(ydoc, Y.fromBase64(frame.sv));
  const news = missing.length > 2 && (unsent || Y.decodeUpdate(missing).structs.length > 0);
  if (news && canEdit()) sendUpdate(missing);
  unsent = false;
  setStatus(true);
  showError('');
  renderSaved();
  scheduleCursor(true);
  scheduleRender();
}

function handle(frame) {
  switch (frame.type) {
    case 'hello':
      me = frame.you;
      if (frame.doc?.title && frame.doc.title !== titleEl.textContent) setTitle(frame.doc.title);
      presence.clear();
      for (const entry of frame.presence || []) {
        presence.set(entry.channel, { user_id: entry.user_id, username: entry.username, color: entry.color });
      }
      renderEditors();
      send({ type: 'sync', sv: Y.toBase64(Y.encodeStateVector(ydoc)) });
      break;
    case 'sync':
      onSync(frame);
      break;
    case 'doc.update':
      applyRemote(frame.update);
      break;
    case 'ack':
      ackedSeq = Math.max(ackedSeq, frame.seq);
      renderSaved();
      break;
    case 'doc.awareness':
      carets.set(frame.channel, {
        user_id: frame.user_id,
        username: frame.username,
        color: frame.color,
        cursor: frame.cursor || null,
      });
      scheduleRender();
      break;
    case 'presence.join':
      presence.set(frame.channel, { user_id: frame.user_id, username: frame.username, color: frame.meta?.color ?? frame.color });
      renderEditors();
      scheduleCursor(true); // the newcomer has not seen our caret yet
      break;
    case 'presence.leave':
      presence.delete(frame.channel);
      carets.delete(frame.channel);
      renderEditors();
      scheduleRender();
      break;
    case 'doc.title':
      setTitle(frame.title);
      break;
    case 'doc.restored':
      flash(`${frame.by} restored the version “${frame.version}”.`);
      break;
    case 'access': // the owner changed our rights while we were connected
      if (me) {
        me.can_edit = frame.can_edit;
        textarea.readOnly = !canEdit();
        renderSaved();
        flash(frame.can_edit ? 'You can edit this document now.' : 'You can now only read this document.');
        if (frame.can_edit) scheduleCursor(true); // the others have not seen our caret yet
      }
      break;
    case 'error':
      if (frame.code === 'read_only' && me) {
        me.can_edit = false;
        textarea.readOnly = true;
        renderSaved();
      }
      showError(frame.message || frame.error || 'Something went wrong.');
      break;
  }
}

// ---- the connection ------------------------------------------------------------------------

/** Marks this connection as gone: updates stop until the next sync answer. */
function disconnected() {
  synced = false;
  if (ackedSeq < seq) unsent = true; // not acknowledged: the next sync handshake resends it
  ackedSeq = seq;
  carets.clear(); // stale now; everyone re-sends theirs when we join again
  setStatus(false, closedForGood ? 'closed' : navigator.onLine ? undefined : 'offline');
  renderSaved();
  scheduleRender();
}

function scheduleReconnect() {
  clearTimeout(reconnectTimer);
  if (closedForGood || !navigator.onLine) return; // the `online` event reconnects
  const wait = Math.min(10_000, 500 * 2 ** attempt++) * (0.75 + Math.random() / 2);
  reconnectTimer = setTimeout(connect, wait);
}

function connect() {
  clearTimeout(reconnectTimer);
  const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
  const ws = new WebSocket(`${scheme}://${location.host}/ws/docs/${docId}`);
  socket = ws;
  ws.addEventListener('message', (event) => {
    if (socket !== ws) return;
    let frame;
    try {
      frame = JSON.parse(event.data);
    } catch {
      return;
    }
    handle(frame);
  });
  ws.addEventListener('close', (event) => {
    if (socket !== ws) return; // dropped on purpose (went offline): already handled
    socket = null;
    if (FINAL_CLOSES[event.code]) {
      closedForGood = true;
      textarea.readOnly = true;
      showError(event.reason || FINAL_CLOSES[event.code]);
    }
    disconnected();
    scheduleReconnect();
  });
}

/** Drops the socket now (the browser says it is offline; a socket may linger for minutes). */
function dropSocket() {
  const ws = socket;
  if (!ws) return;
  socket = null;
  ws.close();
  disconnected();
}

window.addEventListener('offline', () => {
  clearTimeout(reconnectTimer);
  dropSocket();
});
window.addEventListener('online', () => {
  if (closedForGood || socket) return;
  attempt = 0;
  connect();
});

window.addEventListener('beforeunload', (event) => {
  if (canEdit() && (unsent || ackedSeq < seq || textarea.value !== shadow)) event.preventDefault();
});

// ---- start ---------------------------------------------------------------------------------

// Until the first sync answer the textarea shows whatever the page rendered and cannot be edited:
// typing into it before the document arrived would duplicate the text.
textarea.readOnly = true;
layoutMirror();
setStatus(false);
if (navigator.onLine) connect();
else disconnected();
