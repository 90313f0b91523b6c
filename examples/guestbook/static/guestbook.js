// The guestbook page, live: every verdict arrives over /ws/guestbook/; an approved entry is
// added to the list, and the entry this browser just posted (`#pending-<id>` in the address)
// gets its outcome shown. Served by the app at /guestbook/guestbook.js (no inline script: the
// Content-Security-Policy allows scripts from this origin only).

const list = document.getElementById("entries");
const empty = document.querySelector("[data-testid=empty]");
const pending = document.getElementById("pending");
const watched = Number((location.hash.match(/^#pending-(\d+)$/) || [])[1]) || null;

if (watched) {
  pending.textContent = "Your entry is being checked…";
  pending.hidden = false;
}

function show(frame) {
  if (frame.status !== "approved" || document.getElementById(`entry-${frame.id}`)) return;
  const item = document.createElement("li");
  item.id = `entry-${frame.id}`;
  const article = document.createElement("article");
  article.className = "post-summary";
  const meta = document.createElement("p");
  meta.className = "meta";
  const name = document.createElement("strong");
  name.textContent = frame.name;
  meta.append(name, " · just now");
  const message = document.createElement("p");
  message.className = "excerpt";
  message.textContent = frame.message;
  article.append(meta, message);
  item.append(article);
  list.prepend(item);
  empty.hidden = true;
}

function outcome(frame) {
  if (frame.id !== watched) return;
  pending.textContent = {
    pending: "Your entry is being checked…",
    approved: "Your entry is on the list below.",
    rejected: "Your entry was not accepted: it contains a word this guestbook does not allow.",
  }[frame.status];
}

let delay = 1000;
function connect() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const socket = new WebSocket(`${scheme}://${location.host}/ws/guestbook/`);
  socket.onopen = () => {
    delay = 1000;
    // The verdict may have come before the socket was open: ask for the entry's status.
    if (watched) socket.send(JSON.stringify({ watch: watched }));
  };
  socket.onmessage = (event) => {
    const frame = JSON.parse(event.data);
    if (frame.type !== "guestbook.moderated") return;
    show(frame);
    outcome(frame);
  };
  socket.onclose = () => {
    setTimeout(connect, delay);
    delay = Math.min(delay * 2, 30000);
  };
}
connect();
