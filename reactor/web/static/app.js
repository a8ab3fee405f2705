// The chat page: one WebSocket to /ws, one chat line per text message, the
// same commands and events as the terminal client.  Every piece of text from
// the network goes into the page as text (textContent, text nodes), never as
// HTML; the protocol's rules live in text.js.

import { conversationEntry, personEntry, renderItem } from "./render.js";
import { nameKey, parseEvent, quote } from "./text.js";

const MAX_LINE_BYTES = 4096;  // the server's default line limit
const RETRY_FIRST = 1000;  // ms; doubled after each failed try, up to RETRY_MOST
const RETRY_MOST = 30000;
const EVERYONE = "*";

const $ = (id) => document.getElementById(id);
const encoder = new TextEncoder();

const state = {
  socket: null,
  phase: "offline",  // offline | login | password | chatting
  name: "",  // the name asked for, then the one logged in as
  loggedIn: false,  // once logged in: a lost connection is retried
  retryDelay: RETRY_FIRST,
  retryTimer: null,
  pending: [],  // commands sent and not yet answered, oldest first (the reply queue)
  conversations: new Map(),  // key -> {key, to, title, items, unread}
  current: EVERYONE,
  online: new Map(),  // key -> name
};

// -- conversations -----------------------------------------------------------------

function conversation(key, to = null) {
  let found = state.conversations.get(key);
  if (!found) {
    found = { key, to, title: to ?? "Everyone", items: [], unread: 0 };
    state.conversations.set(key, found);
    renderConversations();
  }
  return found;
}

function dmWith(name) {
  return conversation(nameKey(name), name);
}

function add(conv, item) {
  item.time = new Date();
  conv.items.push(item);
  if (conv.key === state.current) {
    $("messages").append(renderItem(item));
    scrollToEnd();
  }
  if (item.kind === "in" && (conv.key !== state.current || document.hidden)) {
    conv.unread += 1;
    renderConversations();
  }
  return item;
}

function notice(conv, text, kind = "notice") {
  return add(conv, { kind, text });
}

function show(key) {
  state.current = key;
  const conv = conversation(key);
  conv.unread = 0;
  $("pane-title").textContent = conv.to ? `Conversation with ${conv.to}` : "Everyone";
  $("draft-label").textContent = conv.to ? `Message to ${conv.to}` : "Message to everyone";
  const list = $("messages");
  list.setAttribute("aria-live", "off");  // a pane switch is not news
  list.replaceChildren(...conv.items.map(renderItem));
  list.setAttribute("aria-live", "polite");
  scrollToEnd();
  renderConversations();
}

function scrollToEnd() {
  const list = $("messages");
  list.scrollTop = list.scrollHeight;
}

function settle(item, outcome, reason = "") {
  item.state = outcome;
  item.reason = reason;
  if (item.element?.isConnected) item.element.replaceWith(renderItem(item));
}

function renderConversations() {
  const list = $("conversations");
  list.replaceChildren(...[...state.conversations.values()].map((conv) => conversationEntry(
    conv, conv.key === state.current, () => { show(conv.key); $("draft").focus(); })));
  const unread = [...state.conversations.values()].reduce((sum, c) => sum + c.unread, 0);
  document.title = unread ? `(${unread}) reactor-chat` : "reactor-chat";
}

function renderPeople() {
  const names = [...state.online.values()].sort((a, b) => a.localeCompare(b));
  $("online-count").textContent = `(${names.length})`;
  $("people").replaceChildren(...names.map((name) => personEntry(
    name, nameKey(name) === nameKey(state.name),
    () => { show(dmWith(name).key); $("draft").focus(); })));
}

// -- the connection ----------------------------------------------------------------

function setStatus(text) {
  $("status").textContent = text;
}

function connect() {
  clearTimeout(state.retryTimer);
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const socket = new WebSocket(`${scheme}//${location.host}/ws`);
  state.socket = socket;
  state.phase = "login";
  setStatus("Connecting…");
  socket.addEventListener("open", () => {
    setStatus(`Logging in as ${state.name}…`);
    socket.send(state.name);
  });
  socket.addEventListener("message", (message) => {
    if (typeof message.data === "string") received(message.data);
  });
  socket.addEventListener("close", (event) => closed(socket, event));
}

function send(line, pendingEntry = null) {
  if (state.socket?.readyState !== WebSocket.OPEN) return false;
  state.socket.send(line);
  if (pendingEntry) state.pending.push(pendingEntry);
  return true;
}

function closed(socket, event) {
  if (socket !== state.socket) return;
  state.socket = null;
  const wasChatting = state.phase === "chatting";
  state.phase = "offline";
  for (const entry of state.pending.splice(0)) {
    if (entry.item) settle(entry.item, "unknown", "connection lost before the server answered");
  }
  if (!state.loggedIn) {
    setStatus("Not connected");
    loginError($("login-error").textContent
               || `Could not connect (${event.code || "no answer"}); try again.`);
    $("login-button").disabled = false;
    return;
  }
  if (wasChatting) notice(conversation(EVERYONE), "Connection lost.", "presence");
  const seconds = Math.round(state.retryDelay / 1000);
  setStatus(`Connection lost: reconnecting in ${seconds} s. Your draft is kept.`);
  state.retryTimer = setTimeout(connect, state.retryDelay * (0.8 + Math.random() * 0.4));
  state.retryDelay = Math.min(state.retryDelay * 2, RETRY_MOST);
}

function received(line) {
  const event = parseEvent(line);
  if (state.phase === "chatting") chatEvent(event);
  else loginEvent(event);
}

// -- logging in --------------------------------------------------------------------

function loginError(text) {
  $("login-error").textContent = text;
}

function showLogin(askPassword) {
  $("chat").hidden = true;
  $("login").hidden = false;
  $("password-field").hidden = !askPassword;
  $("password-name").textContent = state.name;
  $("login-button").disabled = false;
  $(askPassword ? "password" : "name").focus();
}

function loginEvent(event) {
  switch (event.kind) {
    case "online":
      if (nameKey(event.name) === nameKey(state.name)) loggedIn(event.name);
      return;
    case "passwordRequired":
      state.phase = "password";
      loginError("");
      setStatus(`${event.name} is registered: password required`);
      showLogin(true);
      return;
    case "wrongPassword":
      loginError(`Wrong password for ${event.name}.`);
      $("password").value = "";
      showLogin(true);
      return;
    case "invalidUsername":
      return failLogin(`That name cannot be used: ${event.reason}.`);
    case "usernameTaken":
      if (state.loggedIn) {
        // A reconnect that came before the server noticed the old connection
        // was gone: the name is still ours there; try again after a while.
        setStatus(`${event.name} is still logged in from before; trying again…`);
        state.socket?.close();
        return undefined;
      }
      return failLogin(`${event.name} is already taken; choose another name.`);
    case "invalidInput":
    case "serviceUnavailable":
      return failLogin(`The server refused: ${event.reason}.`);
    case "closing":
    case "disconnected":
    case "shuttingDown":
      state.loggedIn = false;  // the server said why: no retry loop
      return failLogin(`${event.reason ?? event.line}.`);
    default:
      return undefined;
  }
}

function failLogin(text) {
  loginError(text);
  setStatus(state.socket ? "Connected, not logged in" : "Not connected");
  showLogin(state.phase === "password");
}

function loggedIn(name) {
  const first = !state.loggedIn;
  state.name = name;
  state.phase = "chatting";
  state.loggedIn = true;
  state.retryDelay = RETRY_FIRST;
  $("password").value = "";
  $("login").hidden = true;
  $("chat").hidden = false;
  setStatus(`Connected as ${name}`);
  state.online.clear();
  state.online.set(nameKey(name), name);
  renderPeople();
  send("users", { kind: "users" });
  if (first) {
    show(EVERYONE);
    $("draft").focus();
  } else {
    notice(conversation(EVERYONE), `Reconnected as ${name}.`, "presence");
  }
}

// -- chatting ----------------------------------------------------------------------

// A reply answers the oldest command still waiting (the server's reply queue
// keeps command order); other events are news.
function nextReply(kinds) {
  if (state.pending.length && kinds.includes(state.pending[0].kind)) {
    return state.pending.shift();
  }
  return null;
}

function chatEvent(event) {
  const everyone = conversation(EVERYONE);
  let entry;
  switch (event.kind) {
    case "messageSent":
    case "broadcastSent":
      entry = nextReply(["chat", "broadcast"]);
      if (entry) settle(entry.item, "delivered");
      return;
    case "notDelivered":
    case "broadcastNotSent":
    case "invalidInput":
      entry = nextReply(["chat", "broadcast", "users"]);
      if (entry?.item) settle(entry.item, "failed", event.reason);
      else showError(event.reason);
      return;
    case "unknown":
      entry = nextReply(["chat"]);
      if (entry) settle(entry.item, "failed", `there is no user ${event.name}`);
      return;
    case "offline":
      // Also the answer to a message for someone who has just left.
      if (state.pending[0]?.kind === "chat" && nameKey(state.pending[0].to) === nameKey(event.name)) {
        settle(state.pending.shift().item, "failed", `${event.name} is offline`);
      }
      state.online.delete(nameKey(event.name));
      renderPeople();
      presence(event.name, `${event.name} is offline.`);
      return;
    case "online":
      state.online.set(nameKey(event.name), event.name);
      renderPeople();
      presence(event.name, `${event.name} is online.`);
      return;
    case "onlineUsers":
      nextReply(["users"]);
      state.online.clear();
      for (const name of event.names) state.online.set(nameKey(name), name);
      state.online.set(nameKey(state.name), state.name);
      renderPeople();
      return;
    case "messageFrom":
      add(dmWith(event.from), { kind: "in", from: event.from, text: event.text });
      return;
    case "broadcastFrom":
      add(everyone, { kind: "in", from: event.from, text: event.text });
      return;
    case "serviceUnavailable":
      entry = nextReply(["chat", "broadcast"]);
      if (entry) settle(entry.item, "failed", event.reason);
      else showError(`The chat service is unavailable: ${event.reason}.`);
      return;
    case "disconnected":
    case "closing":
    case "shuttingDown":
      notice(everyone, `The server closes this connection: ${event.reason ?? "shutting down"}.`,
             "presence");
      return;
    default:
      notice(conversation(state.current), event.line);
  }
}

function presence(name, text) {
  notice(conversation(EVERYONE), text, "presence");
  const dm = state.conversations.get(nameKey(name));
  if (dm) notice(dm, text, "presence");
}

function showError(text) {
  $("chat-error").textContent = text;
}

// -- the forms ---------------------------------------------------------------------

$("login-form").addEventListener("submit", (submitted) => {
  submitted.preventDefault();
  loginError("");
  if (state.phase === "password") {
    const password = $("password").value;
    if (!password) return loginError("Enter the password.");
    send(quote(password));
    setStatus("Checking the password…");
    return;
  }
  const name = $("name").value.trim();
  if (!name) return loginError("Enter a name.");
  state.name = name;
  $("login-button").disabled = true;
  // After a refused name the connection is still open, waiting for another.
  if (state.socket?.readyState === WebSocket.OPEN && state.phase === "login") {
    send(name);
  } else {
    connect();
  }
});

$("composer").addEventListener("submit", (submitted) => {
  submitted.preventDefault();
  showError("");
  const draft = $("draft");
  const text = draft.value;
  if (!text.trim()) return;
  const conv = conversation(state.current);
  const line = conv.to ? `chat ${conv.to} ${quote(text)}` : `broadcast ${quote(text)}`;
  if (encoder.encode(line).length > MAX_LINE_BYTES) {
    showError(`That message is too long (at most ${MAX_LINE_BYTES} bytes with its command).`);
    return;
  }
  if (state.phase !== "chatting") {
    showError("Not connected: the message is kept in the box and can be sent once reconnected.");
    return;
  }
  const item = add(conv, { kind: "out", from: "you", text, state: "pending" });
  send(line, { kind: conv.to ? "chat" : "broadcast", to: conv.to, item });
  draft.value = "";
});

document.addEventListener("visibilitychange", () => {
  if (!document.hidden && state.phase === "chatting") show(state.current);
});

conversation(EVERYONE);
$("name").focus();
