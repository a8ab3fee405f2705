// The page's pieces, built from text only: every string from the network
// goes in through textContent or a text node, never as HTML, and harmful
// characters are shown as their codes (text.js's visibleParts).

import { visibleParts } from "./text.js";

function element(tag, className, text) {
  const made = document.createElement(tag);
  if (className) made.className = className;
  if (text !== undefined) made.textContent = text;
  return made;
}

/** ``text`` as a span: drawn as it is, harmful characters as marked codes. */
export function textWithTokens(text) {
  const span = element("span", "text");
  for (const part of visibleParts(text)) {
    if (part.token) {
      const token = element("span", "token", part.text);
      token.title = "a control or invisible character, shown as its code";
      span.append(token);
    } else {
      span.append(document.createTextNode(part.text));
    }
  }
  return span;
}

const DELIVERY = {
  pending: () => " · sending…",
  delivered: () => " ✓ delivered",
  failed: (reason) => ` ✗ not delivered: ${reason}`,
  unknown: (reason) => ` ? ${reason}`,
};

/** One line of a conversation: time, sender, text, and for ours its delivery. */
export function renderItem(item) {
  const li = element("li", `item ${item.kind}`);
  const time = element("time", "",
                       item.time.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }));
  time.dateTime = item.time.toISOString();
  li.append(time, " ");
  if (item.from) li.append(element("span", "from", item.from + ": "));
  li.append(textWithTokens(item.text));
  if (item.kind === "out") {
    li.append(element("span", `delivery ${item.state}`, DELIVERY[item.state](item.reason)));
  }
  item.element = li;
  return li;
}

/** A conversation's entry in the list: a button with its unread count. */
export function conversationEntry(conv, isCurrent, open) {
  const button = element("button", "", conv.title);
  button.type = "button";
  if (isCurrent) button.setAttribute("aria-current", "true");
  if (conv.unread) {
    const badge = element("span", "unread", String(conv.unread));
    badge.setAttribute("aria-label", `${conv.unread} unread`);
    button.append(" ", badge);
  }
  button.addEventListener("click", open);
  const li = element("li");
  li.append(button);
  return li;
}

/** Someone online: a button that opens the conversation with them (not for oneself). */
export function personEntry(name, isMe, open) {
  const li = element("li");
  if (isMe) {
    li.textContent = `${name} (you)`;
    return li;
  }
  const button = element("button", "", name);
  button.type = "button";
  button.setAttribute("aria-label", `Message ${name}`);
  button.addEventListener("click", open);
  li.append(button);
  return li;
}
