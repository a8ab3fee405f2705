// The chat protocol's text rules, for the page: no DOM here, so that the
// rules can be tested on their own (node --test) and read beside the
// Python they port: protocol/escaping.py (escapes, both ways),
// protocol/events.py (the server's event lines) and cli/present.py (which
// characters are shown as visible tokens rather than drawn).

// -- escapes (protocol/escaping.py) --------------------------------------------

const ESCAPE_SEQUENCE = /\\(?:(["\\])|x([0-9A-Fa-f]{2})|u([0-9A-Fa-f]{4})|U([0-9A-Fa-f]{8}))/g;

/** Reverse the server's escapes; unknown backslash sequences stay as they are. */
export function unescapeWire(text) {
  if (!text.includes("\\")) return text;
  return text.replace(ESCAPE_SEQUENCE, (whole, literal, byte, bmp, astral) => {
    if (literal !== undefined) return literal;
    const code = parseInt(byte ?? bmp ?? astral, 16);
    // Not a character: keep the escape visible rather than guess.
    if (code > 0x10ffff || (code >= 0xd800 && code <= 0xdfff)) return whole;
    return String.fromCodePoint(code);
  });
}

// What a client may not send raw (find_refused): C0 but TAB, DEL, C1,
// U+2028/U+2029.  Inside quotes they travel as escapes; so do \ and ".
const NEEDS_QUOTING = /[\\"\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]/g;

/** ``text`` as a quoted protocol argument, which the server reads back exactly. */
export function quote(text) {
  return '"' + text.replace(NEEDS_QUOTING, (char) => {
    if (char === "\\" || char === '"') return "\\" + char;
    const code = char.codePointAt(0);
    return code < 0x100 ? "\\x" + hex(code, 2) : "\\u" + hex(code, 4);
  }) + '"';
}

function hex(code, width) {
  return code.toString(16).padStart(width, "0");
}

// -- what is shown as a token (cli/present.py) -----------------------------------

export const MAX_COMBINING_MARKS = 8;
// The categories the protocol escapes on the wire, and the Hangul fillers,
// which draw as blank space.
const HARMFUL = /^[\p{Cc}\p{Cf}\p{Cs}\p{Co}\p{Cn}\p{Zl}\p{Zp}\u115f\u1160\u3164\uffa0]$/u;
const COMBINING = /^[\p{Mn}\p{Me}]$/u;
const SYMBOL = /^\p{So}$/u;
const ZWJ = "\u200d";

/** The visible stand-in for a harmful character: \x1b, <U+202E>. */
export function tokenFor(char) {
  const code = char.codePointAt(0);
  if (/^\p{Cc}$/u.test(char)) return "\\x" + hex(code, 2);
  return "<U+" + code.toString(16).toUpperCase().padStart(4, "0") + ">";
}

/**
 * Split text into runs to show: ``{text, token: false}`` drawn as it is,
 * ``{text, token: true}`` a harmful character's stand-in.  Newlines and tabs
 * are kept (the page wraps with pre-wrap); a zero-width joiner between two
 * emoji stays (it joins them); combining marks past the cap become tokens.
 */
export function visibleParts(text) {
  const chars = Array.from(text);  // by code point: lone surrogates stay single
  const parts = [];
  let plain = "";
  let marks = 0;
  const token = (char) => {
    if (plain) parts.push({ text: plain, token: false });
    plain = "";
    parts.push({ text: tokenFor(char), token: true });
  };
  chars.forEach((char, index) => {
    marks = COMBINING.test(char) ? marks + 1 : 0;
    if (marks > MAX_COMBINING_MARKS) {
      token(char);
    } else if (char === "\n" || char === "\t") {
      plain += char;
    } else if (char === ZWJ && index > 0 && index < chars.length - 1
               && (SYMBOL.test(chars[index - 1]) || chars[index - 1] === "\ufe0f")
               && SYMBOL.test(chars[index + 1])) {
      plain += char;
    } else if (HARMFUL.test(char)) {
      token(char);
    } else {
      plain += char;
    }
  });
  if (plain) parts.push({ text: plain, token: false });
  return parts;
}

// -- the server's event lines (protocol/events.py) -------------------------------

export const NAME = "[A-Za-z0-9][A-Za-z0-9_.\\-]{0,31}";
const N = `(${NAME})`;
const QUOTED = '"((?:[^"\\\\]|\\\\[\\s\\S])*)"';
const NAMES = `((?:${NAME}(?:, ${NAME})*)?)`;

/** The case-insensitive identity of a name (username_key: casefold). */
export function nameKey(name) {
  return name.toLowerCase();
}

// [pattern, kind, field names]; text fields are unescaped after the match.
const EVENTS = [
  [`<User ${N} is online\\.>`, "online", ["name"]],
  [`<User ${N} is offline\\.>`, "offline", ["name"]],
  [`<User ${N} does not exist\\.>`, "unknown", ["name"]],
  ["<To everyone> ([\\s\\S]*)", "broadcastSent", ["text"]],
  [`<To ${N}> ([\\s\\S]*)`, "messageSent", ["to", "text"]],
  [`<Message from ${N}: ${QUOTED}>`, "messageFrom", ["from", "text"]],
  [`<Message to ${N} not delivered: (.+)\\.>`, "notDelivered", ["to", "reason"]],
  [`<Broadcast from ${N}: ${QUOTED}>`, "broadcastFrom", ["from", "text"]],
  [`<Online users: ${NAMES}>`, "onlineUsers", ["names"]],
  ['<Invalid input: (.+)\\. Type "help" for commands\\.>', "invalidInput", ["reason"]],
  ["<Invalid username: (.+)\\.>", "invalidUsername", ["reason"]],
  [`<Username ${N} is already taken\\.>`, "usernameTaken", ["name"]],
  [`<Password required for ${N}\\.>`, "passwordRequired", ["name"]],
  [`<Wrong password for ${N}\\.>`, "wrongPassword", ["name"]],
  [`<Username ${N} is now registered\\.>`, "registered", ["name"]],
  [`<Password changed for ${N}\\.>`, "passwordChanged", ["name"]],
  ["<Broadcast not sent: (.+)\\.>", "broadcastNotSent", ["reason"]],
  ["<Chat service unavailable: (.+)\\.>", "serviceUnavailable", ["reason"]],
  ["<Disconnected: (.+)\\.>", "disconnected", ["reason"]],
  ["<Server is full\\.>", "closing", []],
  ["<Too many connections from your address\\.>", "closing", []],
  ["<Login timed out\\.>", "closing", []],
  ["<Server is shutting down\\.>", "shuttingDown", []],
  ["<Too many wrong passwords\\.>", "closing", []],
  ["<Server busy: try again in a moment\\.>", "closing", []],
  ["<Commands: [\\s\\S]*>", "help", []],
].map(([source, kind, fields]) => [new RegExp(`^(?:${source})$`), kind, fields]);

/**
 * One server line as an event: ``{kind, ...fields}``; ``{kind: "unknown-line"}``
 * for a line this page does not know (shown as it came, tokens and all).
 * The text of a message is unescaped; names and reasons are plain ASCII.
 */
export function parseEvent(line) {
  for (const [pattern, kind, fields] of EVENTS) {
    const match = pattern.exec(line);
    if (match === null) continue;
    const event = { kind, line };
    fields.forEach((field, i) => {
      const value = match[i + 1];
      if (field === "text") event.text = unescapeWire(value);
      else if (field === "names") event.names = value ? value.split(", ") : [];
      else event[field] = value;
    });
    if (kind === "closing") event.reason = line.slice(1, -2);
    return event;
  }
  return { kind: "unknown-line", line };
}
