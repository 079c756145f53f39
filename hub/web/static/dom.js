// DOM helpers for the agent inbox.
//
// Contract: text that comes from customers or agents only ever reaches the page as a Text node.
// `h()` turns every string child into a Text node and never touches innerHTML, so markup in a
// message ("<img onerror=...>") is shown literally.

/**
 * Create an element.
 * props: class, text, dataset {..}, testid, attrs {..}, on {event: fn}, hidden, and any
 * property assignable on the element (value, type, disabled, title, ...).
 */
export function h(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value === undefined || value === null) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = String(value);
    else if (key === "testid") node.dataset.testid = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key === "attrs") for (const [a, v] of Object.entries(value)) node.setAttribute(a, String(v));
    else if (key === "on") for (const [ev, fn] of Object.entries(value)) node.addEventListener(ev, fn);
    else node[key] = value;
  }
  append(node, children);
  return node;
}

function append(node, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(node, child);
    else if (child instanceof Node) node.appendChild(child);
    else node.appendChild(document.createTextNode(String(child)));
  }
}

/** Replace all children of `node`. */
export function fill(node, ...children) {
  node.replaceChildren();
  append(node, children);
  return node;
}

const MINUTE = 60_000;
const HOUR = 60 * MINUTE;
const DAY = 24 * HOUR;

/** "now", "5m", "3h", "2d", then a short date. */
export function relativeTime(iso, now = Date.now()) {
  if (!iso) return "";
  const t = Date.parse(iso);
  if (Number.isNaN(t)) return "";
  const age = Math.max(0, now - t);
  if (age < MINUTE) return "now";
  if (age < HOUR) return `${Math.floor(age / MINUTE)}m`;
  if (age < DAY) return `${Math.floor(age / HOUR)}h`;
  if (age < 7 * DAY) return `${Math.floor(age / DAY)}d`;
  return new Date(t).toLocaleDateString(undefined, { month: "short", day: "numeric" });
}

/** Clock time for a message, with the date when it is not today. */
export function messageTime(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return "";
  const time = d.toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit" });
  if (d.toDateString() === new Date().toDateString()) return time;
  return `${d.toLocaleDateString(undefined, { month: "short", day: "numeric" })}, ${time}`;
}

export function fullTime(iso) {
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? "" : d.toLocaleString();
}

/** Up to two initials for an avatar. */
export function initials(name) {
  let text = String(name || "?");
  if (/^[^\s@]+@[^\s@]+$/.test(text)) text = text.split("@")[0]; // an address: initials of its local part
  const all = text.replace(/[^\p{L}\p{N}]+/gu, " ").trim().split(/\s+/).filter(Boolean);
  // "Website visitor 10" reads better as "WV" than "W1".
  const lettered = all.filter((w) => /^\p{L}/u.test(w));
  const words = lettered.length ? lettered : all;
  if (!words.length) return "?";
  const first = Array.from(words[0])[0] || "?";
  const second = words.length > 1 ? Array.from(words[words.length - 1])[0] || "" : "";
  return (first + second).toUpperCase();
}

/** A stable hue for a name, so each contact keeps its avatar colour. */
export function hueFor(text) {
  let hash = 0;
  for (const ch of String(text || "")) hash = (hash * 31 + ch.codePointAt(0)) | 0;
  return Math.abs(hash) % 360;
}

export function avatar(name, size = "md") {
  const node = h("span", { class: `avatar avatar-${size}`, attrs: { "aria-hidden": "true" } }, initials(name));
  node.style.setProperty("--hue", String(hueFor(name)));
  return node;
}

/** A class-name-safe token for a server-supplied value ("WhatsApp" -> "whatsapp"). */
export function cssToken(value) {
  return String(value).toLowerCase().replace(/[^a-z0-9_-]/g, "");
}

export function channelBadge(kind, name) {
  const label = kind || name || "channel";
  return h("span", { class: `channel-badge channel-${cssToken(label)}`, title: name || label }, label);
}

/** A span of time for people: "45s", "3m 05s", "1m", "2h 10m", "3d 4h"; "—" when unknown. */
export function formatDuration(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return "—";
  const total = Math.max(0, Math.round(seconds));
  if (total < 60) return `${total}s`;
  const minutes = Math.floor(total / 60);
  const hours = Math.floor(minutes / 60);
  const two = (n) => String(n).padStart(2, "0");
  if (minutes < 60) return total % 60 ? `${minutes}m ${two(total % 60)}s` : `${minutes}m`;
  if (hours < 24) return minutes % 60 ? `${hours}h ${two(minutes % 60)}m` : `${hours}h`;
  return hours % 24 ? `${Math.floor(hours / 24)}d ${hours % 24}h` : `${Math.floor(hours / 24)}d`;
}

export function formatBytes(n) {
  if (!Number.isFinite(n)) return "";
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KB`;
  return `${(n / 1024 / 1024).toFixed(1)} MB`;
}

/** Only http(s) and same-origin relative URLs become links; anything else ("javascript:") does not. */
export function safeUrl(url) {
  try {
    const parsed = new URL(url, location.href);
    return parsed.protocol === "http:" || parsed.protocol === "https:" ? parsed.href : null;
  } catch {
    return null;
  }
}

let toastHost = null;

/** A short message in the corner; `kind` is "error" or "info". */
export function toast(message, kind = "error", ms = 5000) {
  if (!toastHost) {
    toastHost = h("div", { class: "toasts", attrs: { role: "status", "aria-live": "polite" }, testid: "toasts" });
    document.body.appendChild(toastHost);
  }
  const item = h("div", { class: `toast toast-${kind}`, testid: "toast" }, message);
  toastHost.appendChild(item);
  setTimeout(() => {
    item.classList.add("leaving");
    setTimeout(() => item.remove(), 250);
  }, ms);
}

/** Call `fn` once, `ms` after the last of a burst of calls. */
export function debounce(fn, ms) {
  let timer = null;
  const debounced = (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => {
      timer = null;
      fn(...args);
    }, ms);
  };
  debounced.cancel = () => clearTimeout(timer);
  return debounced;
}
