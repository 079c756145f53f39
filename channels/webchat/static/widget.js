/*
 * Embeddable web-chat widget.
 *
 *   <script src="https://hub.example.com/widget.js" data-title="Chat with us" defer></script>
 *
 * Optional attributes: data-open="true" (open the panel at once), data-user-id, data-user-hash,
 * data-name, data-email. JS API: window.HubChat.open(), .close(), .toggle(),
 * .identify({user_id, user_hash, name, email}), .reset().
 *
 * The hub's base URL is taken from this script's own src, so the widget works on any site.
 * Everything renders inside a Shadow DOM; all text goes in through textContent only.
 *
 * Protocol (visitor side):
 *   POST {base}/webchat/session {name?, email?, user_id?, user_hash?} -> {token, visitor_id}
 *   WS   {base}/webchat/ws?token=...
 *     out: {type:"message", client_id, text}  {type:"typing"}
 *     in:  history | ack | message | typing | error
 * A message stays pending (and in localStorage) until the server acks its client_id; it is re-sent
 * with the same client_id after every reconnect, and the server de-duplicates on that id.
 */
(function () {
  "use strict";

  if (window.HubChat && window.HubChat.__widget) return; // loaded twice on one page

  var TYPING_SEND_EVERY_MS = 2000;
  var TYPING_SHOW_MS = 4000;
  var BACKOFF_MIN_MS = 500;
  var BACKOFF_MAX_MS = 10000;
  // Close codes with which the server refuses a token; handshake refusals are probed over HTTP.
  var REFUSED_CLOSE_CODES = [4401, 4403, 1008];
  var REFUSED_ERRORS = ["unauthorized", "forbidden", "invalid_token", "token_expired", "session_expired"];

  var script = document.currentScript || findOwnScript();
  var config = readConfig(script);
  var base = config.base;
  var wsBase = base.replace(/^http(s?):/, "ws$1:");
  var storeKey = "hubchat:" + base;
  var pendingKey = storeKey + ":pending";

  // ------------------------------------------------------------------------------------------
  // state

  var session = loadJSON(storeKey); // {token, visitor_id, user_id}
  if (session && (!session.token || (config.identity.user_id && session.user_id !== config.identity.user_id))) {
    session = null;
    removeKey(storeKey);
    removeKey(pendingKey);
  }
  var identity = config.identity;
  var entries = []; // {key, message_id, client_id, direction, text, author, at, state, error}
  var pending = loadJSON(pendingKey) || []; // [{client_id, text, at}] awaiting ack
  var ws = null;
  var connecting = false;
  var wanted = false; // connect only once the visitor opened the panel or has a conversation
  var attempts = 0;
  var retryTimer = null;
  var renewedSession = false;
  var lastTypingSent = 0;
  var typingTimer = null;
  var unread = 0;
  var isOpen = false;
  var ui = null;

  pending.forEach(function (p) {
    entries.push({
      key: "c:" + p.client_id,
      client_id: p.client_id,
      message_id: null,
      direction: "in",
      text: p.text,
      author: null,
      at: p.at,
      state: "pending",
    });
  });

  // ------------------------------------------------------------------------------------------
  // configuration

  function findOwnScript() {
    var scripts = document.getElementsByTagName("script");
    for (var i = scripts.length - 1; i >= 0; i--) {
      if (/\/widget\.js(\?|#|$)/.test(scripts[i].src)) return scripts[i];
    }
    return null;
  }

  function readConfig(el) {
    var src = el && el.src ? el.src : location.origin + "/widget.js";
    var url = new URL(src, location.href);
    var path = url.pathname.replace(/\/[^/]*$/, ""); // drop "widget.js"
    var d = (el && el.dataset) || {};
    return {
      base: url.origin + path,
      title: d.title || "Chat with us",
      subtitle: d.subtitle || "We usually reply in a few minutes",
      open: d.open === "true",
      identity: clean({ user_id: d.userId, user_hash: d.userHash, name: d.name, email: d.email }),
    };
  }

  function clean(obj) {
    var out = {};
    Object.keys(obj).forEach(function (k) {
      if (obj[k] !== undefined && obj[k] !== null && obj[k] !== "") out[k] = String(obj[k]);
    });
    return out;
  }

  // ------------------------------------------------------------------------------------------
  // storage (may be unavailable on some third-party pages: then the chat lasts for the page)

  function loadJSON(key) {
    try {
      var raw = window.localStorage.getItem(key);
      return raw ? JSON.parse(raw) : null;
    } catch (e) {
      return null;
    }
  }

  function saveJSON(key, value) {
    try {
      window.localStorage.setItem(key, JSON.stringify(value));
    } catch (e) {
      /* ignore */
    }
  }

  function removeKey(key) {
    try {
      window.localStorage.removeItem(key);
    } catch (e) {
      /* ignore */
    }
  }

  function savePending() {
    if (pending.length) saveJSON(pendingKey, pending);
    else removeKey(pendingKey);
  }

  function newClientId() {
    if (window.crypto && typeof window.crypto.randomUUID === "function") return window.crypto.randomUUID();
    var bytes = new Uint8Array(16);
    (window.crypto || window.msCrypto).getRandomValues(bytes);
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    var hex = Array.prototype.map.call(bytes, function (b) {
      return (b + 0x100).toString(16).slice(1);
    });
    return [hex.slice(0, 4), hex.slice(4, 6), hex.slice(6, 8), hex.slice(8, 10), hex.slice(10)]
      .map(function (p) {
        return p.join("");
      })
      .join("-");
  }

  // ------------------------------------------------------------------------------------------
  // DOM (Shadow DOM; text only through textContent)

  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    if (attrs) {
      Object.keys(attrs).forEach(function (k) {
        if (k === "text") node.textContent = attrs[k];
        else if (k === "class") node.className = attrs[k];
        else node.setAttribute(k, attrs[k]);
      });
    }
    (children || []).forEach(function (c) {
      if (c) node.appendChild(typeof c === "string" ? document.createTextNode(c) : c);
    });
    return node;
  }

  function icon(pathData, size) {
    var ns = "http://www.w3.org/2000/svg";
    var svg = document.createElementNS(ns, "svg");
    svg.setAttribute("viewBox", "0 0 24 24");
    svg.setAttribute("width", String(size || 24));
    svg.setAttribute("height", String(size || 24));
    svg.setAttribute("aria-hidden", "true");
    var path = document.createElementNS(ns, "path");
    path.setAttribute("d", pathData);
    path.setAttribute("fill", "currentColor");
    svg.appendChild(path);
    return svg;
  }

  var ICON_CHAT =
    "M12 3C6.5 3 2 6.8 2 11.5c0 2.4 1.2 4.6 3.1 6.1-.2 1.3-.8 2.6-1.9 3.6 2.1-.1 3.9-.9 5.2-1.9 1.1.3 2.3.5 3.6.5 5.5 0 10-3.8 10-8.5S17.5 3 12 3z";
  var ICON_CLOSE =
    "M18.3 5.7a1 1 0 0 0-1.4 0L12 10.6 7.1 5.7a1 1 0 1 0-1.4 1.4l4.9 4.9-4.9 4.9a1 1 0 1 0 1.4 1.4l4.9-4.9 4.9 4.9a1 1 0 0 0 1.4-1.4L13.4 12l4.9-4.9a1 1 0 0 0 0-1.4z";
  var ICON_SEND = "M3.4 20.4 21 12 3.4 3.6 3.4 10.2 15 12 3.4 13.8z";
  var ICON_DOWN = "M7.4 8.6 12 13.2l4.6-4.6L18 10l-6 6-6-6z";

  var CSS = [
    ":host{all:initial}",
    "*{box-sizing:border-box}",
    "[hidden]{display:none!important}",
    ".root{--accent:#2563eb;--accent-dark:#1d4ed8;font:14px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,'Helvetica Neue',Arial,sans-serif;color:#1f2933}",
    ".launcher{position:fixed;right:20px;bottom:20px;width:58px;height:58px;border-radius:50%;border:0;cursor:pointer;",
    "background:var(--accent);color:#fff;display:grid;place-items:center;box-shadow:0 6px 20px rgba(37,99,235,.35),0 2px 6px rgba(0,0,0,.12);",
    "z-index:2147483000;transition:transform .15s ease,background-color .15s}",
    ".launcher:hover{background:var(--accent-dark);transform:scale(1.05)}",
    ".launcher:focus-visible,.send:focus-visible,.close:focus-visible{outline:3px solid #93c5fd;outline-offset:2px}",
    ".badge{position:absolute;top:-2px;right:-2px;min-width:20px;height:20px;padding:0 5px;border-radius:10px;background:#ef4444;",
    "color:#fff;font-size:11px;font-weight:700;display:grid;place-items:center;border:2px solid #fff}",
    ".panel{position:fixed;right:20px;bottom:92px;width:372px;height:min(600px,calc(100vh - 116px));display:flex;flex-direction:column;",
    "background:#fff;border-radius:18px;overflow:hidden;z-index:2147483000;",
    "box-shadow:0 12px 48px rgba(16,24,40,.18),0 2px 8px rgba(16,24,40,.08);animation:pop .18s ease-out;transform-origin:bottom right}",
    "@keyframes pop{from{opacity:0;transform:translateY(8px) scale(.98)}}",
    ".header{display:flex;align-items:center;gap:12px;padding:16px 16px 16px 20px;color:#fff;",
    "background:linear-gradient(135deg,var(--accent),#4f46e5)}",
    ".header-text{flex:1;min-width:0}",
    ".title{margin:0;font-size:16px;font-weight:700;line-height:1.3;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}",
    ".subtitle{display:flex;align-items:center;gap:6px;margin-top:2px;font-size:12.5px;opacity:.9}",
    ".dot{width:8px;height:8px;border-radius:50%;background:#facc15;flex:none}",
    ".root[data-conn=online] .dot{background:#4ade80}",
    ".root[data-conn=offline] .dot,.root[data-conn=refused] .dot{background:#f87171}",
    ".close{border:0;background:rgba(255,255,255,.16);color:#fff;width:32px;height:32px;border-radius:50%;display:grid;place-items:center;cursor:pointer}",
    ".close:hover{background:rgba(255,255,255,.28)}",
    ".notice{margin:0;padding:8px 16px;font-size:12.5px;background:#fef2f2;color:#b42318;border-bottom:1px solid #fde2e2;white-space:pre-wrap;overflow-wrap:anywhere}",
    ".messages{flex:1;min-height:0;overflow-y:auto;padding:16px;display:flex;flex-direction:column;gap:6px;background:#f7f8fa}",
    ".welcome{align-self:center;text-align:center;color:#7b8794;font-size:13px;margin:auto 16px;max-width:260px}",
    ".welcome strong{display:block;color:#3e4c59;font-size:15px;margin-bottom:4px}",
    ".msg{display:flex;flex-direction:column;max-width:82%}",
    ".msg[data-direction=in]{align-self:flex-end;align-items:flex-end}",
    ".msg[data-direction=out]{align-self:flex-start;align-items:flex-start}",
    ".author{font-size:11.5px;color:#7b8794;margin:6px 0 2px 4px;font-weight:600}",
    ".bubble{padding:8px 12px;border-radius:16px;white-space:pre-wrap;overflow-wrap:anywhere;word-break:break-word}",
    ".msg[data-direction=in] .bubble{background:var(--accent);color:#fff;border-bottom-right-radius:5px}",
    ".msg[data-direction=out] .bubble{background:#fff;color:#1f2933;border:1px solid #e4e7eb;border-bottom-left-radius:5px}",
    ".msg[data-state=pending] .bubble{opacity:.65}",
    ".msg[data-state=failed] .bubble{background:#fee2e2;color:#7f1d1d}",
    ".meta{font-size:11px;color:#9aa5b1;margin:2px 4px 0}",
    ".msg[data-state=failed] .meta{color:#b42318}",
    ".retry{border:0;background:none;padding:0;margin-left:4px;color:var(--accent);font:inherit;font-weight:600;cursor:pointer;text-decoration:underline}",
    ".typing{display:flex;align-items:center;gap:6px;padding:4px 18px 6px;font-size:12px;color:#7b8794;background:#f7f8fa;font-style:italic}",
    ".dots{display:inline-flex;gap:3px}",
    ".dots i{width:5px;height:5px;border-radius:50%;background:#9aa5b1;animation:blink 1.2s infinite both}",
    ".dots i:nth-child(2){animation-delay:.2s}.dots i:nth-child(3){animation-delay:.4s}",
    "@keyframes blink{0%,80%,100%{opacity:.25}40%{opacity:1}}",
    ".composer{display:flex;align-items:flex-end;gap:8px;padding:10px 10px 10px 14px;border-top:1px solid #e4e7eb;background:#fff}",
    ".input{flex:1;resize:none;border:0;outline:none;font:inherit;color:inherit;max-height:120px;min-height:24px;padding:7px 0;background:transparent;line-height:1.4}",
    ".input::placeholder{color:#9aa5b1}",
    ".send{flex:none;width:38px;height:38px;border-radius:50%;border:0;background:var(--accent);color:#fff;display:grid;place-items:center;cursor:pointer;transition:background-color .15s,opacity .15s}",
    ".send:hover{background:var(--accent-dark)}",
    ".send:disabled{opacity:.4;cursor:default}",
    ".footer{padding:0 0 8px;text-align:center;font-size:11px;color:#9aa5b1;background:#fff}",
    "@media (max-width:480px){",
    ".panel{right:0;bottom:0;width:100vw;height:100vh;height:100dvh;border-radius:0}",
    ".root[data-open=true] .launcher{display:none}",
    ".input{font-size:16px}",
    "}",
    "@media (prefers-reduced-motion:reduce){.panel,.dots i{animation:none}.launcher{transition:none}}",
  ].join("");

  function buildUi() {
    var host = document.createElement("div");
    host.id = "hub-chat";
    host.setAttribute("data-hub-chat", "");
    var shadow = host.attachShadow({ mode: "open" });
    shadow.appendChild(el("style", { text: CSS }));

    var badge = el("span", { class: "badge", hidden: "" });
    var launcherIcon = el("span");
    var launcher = el(
      "button",
      { class: "launcher", type: "button", "data-testid": "chat-launcher", "aria-label": "Open chat", "aria-expanded": "false" },
      [launcherIcon, badge],
    );

    var title = el("h2", { class: "title", text: config.title });
    var status = el("span", { text: config.subtitle });
    var close = el("button", { class: "close", type: "button", "aria-label": "Close chat" }, [icon(ICON_DOWN, 22)]);
    var header = el("div", { class: "header" }, [
      el("div", { class: "header-text" }, [title, el("div", { class: "subtitle" }, [el("span", { class: "dot" }), status])]),
      close,
    ]);
    var notice = el("p", { class: "notice", role: "alert", hidden: "" });
    var list = el("div", { class: "messages", role: "log", "aria-live": "polite", "data-testid": "chat-messages" });
    var typing = el("div", { class: "typing", "data-testid": "chat-typing", hidden: "" }, [
      el("span", { class: "dots", "aria-hidden": "true" }, [el("i"), el("i"), el("i")]),
      "Agent is typing…",
    ]);
    var input = el("textarea", {
      class: "input",
      rows: "1",
      placeholder: "Type your message…",
      "aria-label": "Message",
      "data-testid": "chat-input",
    });
    var send = el(
      "button",
      { class: "send", type: "submit", "aria-label": "Send", "data-testid": "chat-send", disabled: "" },
      [icon(ICON_SEND, 18)],
    );
    var composer = el("form", { class: "composer" }, [input, send]);
    var panel = el(
      "section",
      { class: "panel", role: "dialog", "aria-label": config.title, "data-testid": "chat-panel", hidden: "" },
      [header, notice, list, typing, composer],
    );
    var root = el("div", { class: "root", "data-conn": "connecting", "data-open": "false" }, [panel, launcher]);
    shadow.appendChild(root);

    launcher.addEventListener("click", function () {
      if (isOpen) closePanel();
      else openPanel();
    });
    close.addEventListener("click", closePanel);
    composer.addEventListener("submit", function (e) {
      e.preventDefault();
      submitInput();
    });
    input.addEventListener("keydown", function (e) {
      if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
        e.preventDefault();
        submitInput();
      } else if (e.key === "Escape") {
        closePanel();
      }
    });
    input.addEventListener("input", function () {
      autoGrow();
      send.disabled = !input.value.trim();
      sendTyping();
    });
    panel.addEventListener("keydown", function (e) {
      if (e.key === "Escape") closePanel();
    });

    document.body.appendChild(host);
    ui = {
      host: host,
      root: root,
      launcher: launcher,
      launcherIcon: launcherIcon,
      badge: badge,
      panel: panel,
      status: status,
      notice: notice,
      list: list,
      typing: typing,
      input: input,
      send: send,
    };
    setLauncherIcon();
    render();
  }

  function setLauncherIcon() {
    ui.launcherIcon.replaceChildren(icon(isOpen ? ICON_CLOSE : ICON_CHAT, isOpen ? 24 : 28));
    ui.launcher.setAttribute("aria-label", isOpen ? "Close chat" : "Open chat");
    ui.launcher.setAttribute("aria-expanded", String(isOpen));
  }

  function autoGrow() {
    ui.input.style.height = "auto";
    ui.input.style.height = Math.min(ui.input.scrollHeight, 120) + "px";
  }

  function setConnState(conn) {
    if (!ui) return;
    ui.root.setAttribute("data-conn", conn);
    var labels = {
      online: config.subtitle,
      connecting: "Connecting…",
      offline: "Offline. We'll send your messages when you're back.",
      refused: "Chat is unavailable",
    };
    ui.status.textContent = labels[conn] || labels.connecting;
  }

  function showNotice(text) {
    if (!ui) return;
    ui.notice.textContent = text || "";
    ui.notice.hidden = !text;
  }

  function timeLabel(at) {
    var d = at ? new Date(at) : null;
    if (!d || isNaN(d.getTime())) return "";
    return d.toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit" });
  }

  function render() {
    if (!ui) return;
    var list = ui.list;
    var stick = list.scrollHeight - list.scrollTop - list.clientHeight < 80;
    var nodes = [];
    if (!entries.length) {
      nodes.push(
        el("div", { class: "welcome" }, [
          el("strong", { text: "Hi there 👋" }),
          "Ask us anything. We'll answer here, and you can keep this page open or come back later.",
        ]),
      );
    }
    var previousAuthorKey = null;
    entries.forEach(function (m) {
      var children = [];
      var authorKey = m.direction + ":" + (m.author || "");
      if (m.direction === "out" && authorKey !== previousAuthorKey) {
        children.push(el("div", { class: "author", text: m.author || "Support" }));
      }
      previousAuthorKey = authorKey;
      children.push(el("div", { class: "bubble", text: m.text }));
      var meta = el("div", { class: "meta" });
      if (m.state === "pending") meta.textContent = "Sending…";
      else if (m.state === "failed") {
        meta.appendChild(document.createTextNode(m.error ? "Not sent: " + m.error : "Not sent."));
        var retry = el("button", { class: "retry", type: "button", "data-testid": "chat-retry", text: "Retry" });
        retry.addEventListener("click", retryEntry.bind(null, m));
        meta.appendChild(retry);
      } else meta.textContent = timeLabel(m.at);
      if (meta.firstChild) children.push(meta);
      var attrs = { class: "msg", "data-testid": "chat-message", "data-direction": m.direction, "data-state": m.state };
      if (m.message_id != null) attrs["data-message-id"] = String(m.message_id);
      nodes.push(el("div", attrs, children));
    });
    list.replaceChildren.apply(list, nodes);
    if (stick) list.scrollTop = list.scrollHeight;
  }

  function scrollToEnd() {
    if (ui) ui.list.scrollTop = ui.list.scrollHeight;
  }

  function setUnread(n) {
    unread = n;
    if (!ui) return;
    ui.badge.textContent = n > 9 ? "9+" : String(n);
    ui.badge.hidden = n === 0;
  }

  function showTyping() {
    if (!ui) return;
    ui.typing.hidden = false;
    clearTimeout(typingTimer);
    typingTimer = setTimeout(hideTyping, TYPING_SHOW_MS);
    var list = ui.list;
    if (list.scrollHeight - list.scrollTop - list.clientHeight < 80) scrollToEnd();
  }

  function hideTyping() {
    clearTimeout(typingTimer);
    if (ui) ui.typing.hidden = true;
  }

  // ------------------------------------------------------------------------------------------
  // panel

  function openPanel() {
    if (!ui) return;
    isOpen = true;
    ui.panel.hidden = false;
    ui.root.setAttribute("data-open", "true");
    setLauncherIcon();
    setUnread(0);
    scrollToEnd();
    wanted = true;
    connect();
    setTimeout(function () {
      ui.input.focus();
    }, 0);
  }

  function closePanel() {
    if (!ui) return;
    isOpen = false;
    ui.panel.hidden = true;
    ui.root.setAttribute("data-open", "false");
    setLauncherIcon();
    ui.launcher.focus();
  }

  // ------------------------------------------------------------------------------------------
  // sending

  function submitInput() {
    var text = ui.input.value;
    if (!text.trim()) return;
    ui.input.value = "";
    ui.send.disabled = true;
    autoGrow();
    var item = { client_id: newClientId(), text: text, at: new Date().toISOString() };
    pending.push(item);
    savePending();
    entries.push({
      key: "c:" + item.client_id,
      client_id: item.client_id,
      message_id: null,
      direction: "in",
      text: text,
      author: null,
      at: item.at,
      state: "pending",
    });
    render();
    scrollToEnd();
    wanted = true;
    if (!transmit(item)) connect();
  }

  function transmit(item) {
    if (!ws || ws.readyState !== WebSocket.OPEN) return false;
    ws.send(JSON.stringify({ type: "message", client_id: item.client_id, text: item.text }));
    return true;
  }

  function flushPending() {
    pending.forEach(transmit);
  }

  function retryEntry(entry) {
    entry.state = "pending";
    entry.error = null;
    if (
      !pending.some(function (p) {
        return p.client_id === entry.client_id;
      })
    ) {
      pending.push({ client_id: entry.client_id, text: entry.text, at: entry.at });
      savePending();
    }
    showNotice("");
    render();
    var item = pending.filter(function (p) {
      return p.client_id === entry.client_id;
    })[0];
    wanted = true;
    if (!transmit(item)) connect();
  }

  function sendTyping() {
    var now = Date.now();
    if (now - lastTypingSent < TYPING_SEND_EVERY_MS) return;
    if (ws && ws.readyState === WebSocket.OPEN) {
      ws.send(JSON.stringify({ type: "typing" }));
      lastTypingSent = now;
    }
  }

  // ------------------------------------------------------------------------------------------
  // server frames

  function findEntry(pred) {
    for (var i = 0; i < entries.length; i++) if (pred(entries[i])) return entries[i];
    return null;
  }

  function dropPending(clientId) {
    var before = pending.length;
    pending = pending.filter(function (p) {
      return p.client_id !== clientId;
    });
    if (pending.length !== before) savePending();
  }

  function onHistory(messages) {
    var fresh = (messages || []).map(function (m) {
      return {
        key: "m:" + m.message_id,
        message_id: m.message_id,
        client_id: m.client_id || null,
        direction: m.direction === "out" ? "out" : "in",
        text: String(m.text == null ? "" : m.text),
        author: m.author || null,
        at: m.at,
        state: "sent",
      };
    });
    var known = {};
    fresh.forEach(function (m) {
      known[m.message_id] = true;
      if (m.client_id) dropPending(m.client_id);
    });
    // Unacked and failed messages of this page stay visible after the history.
    entries.forEach(function (e) {
      if ((e.state === "pending" || e.state === "failed") && !(e.message_id != null && known[e.message_id])) fresh.push(e);
    });
    entries = fresh;
    render();
    scrollToEnd();
  }

  function onAck(frame) {
    dropPending(frame.client_id);
    var entry = findEntry(function (e) {
      return e.client_id === frame.client_id;
    });
    if (!entry) return;
    var dup = frame.message_id != null && findEntry(function (e) {
      return e !== entry && e.message_id === frame.message_id;
    });
    if (dup) {
      entries.splice(entries.indexOf(entry), 1);
    } else {
      entry.state = "sent";
      entry.error = null;
      if (frame.message_id != null) {
        entry.message_id = frame.message_id;
        entry.key = "m:" + frame.message_id;
      }
      if (frame.at) entry.at = frame.at;
    }
    render();
  }

  function onMessage(frame) {
    if (frame.message_id != null && findEntry(function (e) {
      return e.message_id === frame.message_id;
    })) {
      return;
    }
    if (frame.client_id) {
      var mine = findEntry(function (e) {
        return e.client_id === frame.client_id;
      });
      if (mine) {
        onAck(frame);
        return;
      }
    }
    var direction = frame.direction === "out" ? "out" : "in";
    entries.push({
      key: "m:" + frame.message_id,
      message_id: frame.message_id,
      client_id: null,
      direction: direction,
      text: String(frame.text == null ? "" : frame.text),
      author: frame.author || null,
      at: frame.at,
      state: "sent",
    });
    if (direction === "out") {
      hideTyping();
      if (!isOpen) setUnread(unread + 1);
    }
    render();
  }

  function onError(frame) {
    var text = frame.detail || frame.error || "Something went wrong.";
    if (frame.client_id) {
      dropPending(frame.client_id);
      var entry = findEntry(function (e) {
        return e.client_id === frame.client_id;
      });
      if (entry) {
        entry.state = "failed";
        entry.error = frame.detail || frame.error || null;
        render();
      }
      showNotice(text);
      return;
    }
    if (REFUSED_ERRORS.indexOf(String(frame.error || "").toLowerCase()) >= 0) {
      refused();
      return;
    }
    showNotice(text);
  }

  function onFrame(frame) {
    switch (frame.type) {
      case "history":
        onHistory(frame.messages);
        break;
      case "ack":
        onAck(frame);
        break;
      case "message":
        onMessage(frame);
        break;
      case "typing":
        showTyping();
        break;
      case "error":
        onError(frame);
        break;
      default:
        break;
    }
  }

  // ------------------------------------------------------------------------------------------
  // connection

  function createSession() {
    var body = {};
    ["name", "email", "user_id", "user_hash"].forEach(function (k) {
      if (identity[k]) body[k] = identity[k];
    });
    return fetch(base + "/webchat/session", {
      method: "POST",
      mode: "cors",
      credentials: "omit",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    }).then(function (res) {
      return res
        .json()
        .catch(function () {
          return {};
        })
        .then(function (payload) {
          if (!res.ok || !payload.token) {
            var err = new Error((payload && (payload.detail || payload.error)) || "HTTP " + res.status);
            err.status = res.status;
            throw err;
          }
          session = { token: payload.token, visitor_id: payload.visitor_id, user_id: identity.user_id || null };
          saveJSON(storeKey, session);
          return session;
        });
    });
  }

  function forgetSession() {
    session = null;
    removeKey(storeKey);
  }

  function connect() {
    if (!wanted || ws || connecting) return;
    clearTimeout(retryTimer);
    retryTimer = null;
    connecting = true;
    setConnState(attempts > 0 ? "offline" : "connecting");
    var ready = session ? Promise.resolve(session) : createSession();
    ready.then(
      function (s) {
        openSocket(s);
      },
      function (err) {
        connecting = false;
        setConnState("offline");
        var status = (err && err.status) || 0;
        if (status >= 400 && status < 500 && status !== 408 && status !== 429) {
          // Refused for good (bad identity hash, site not allowed): retrying alone will not help;
          // the visitor's next message tries again.
          setConnState("refused");
          showNotice(err.message);
          return;
        }
        if (status) showNotice("Chat is unavailable right now: " + err.message);
        scheduleReconnect();
      },
    );
  }

  function openSocket(s) {
    var opened = false;
    var socket;
    try {
      socket = new WebSocket(wsBase + "/webchat/ws?token=" + encodeURIComponent(s.token));
    } catch (e) {
      connecting = false;
      scheduleReconnect();
      return;
    }
    ws = socket;
    socket.onopen = function () {
      opened = true;
      connecting = false;
      attempts = 0;
      renewedSession = false;
      setConnState("online");
      showNotice("");
      flushPending();
    };
    socket.onmessage = function (e) {
      var frame;
      try {
        frame = JSON.parse(e.data);
      } catch (err) {
        return;
      }
      if (frame && typeof frame.type === "string") onFrame(frame);
    };
    socket.onclose = function (e) {
      if (ws !== socket) return;
      ws = null;
      connecting = false;
      if (!wanted) return;
      setConnState("offline");
      if (REFUSED_CLOSE_CODES.indexOf(e.code) >= 0) {
        refused();
        return;
      }
      if (!opened) {
        // A refused upgrade looks like any network failure to a WebSocket; ask over HTTP.
        probeToken(s).then(function (isRefused) {
          if (isRefused) refused();
          else scheduleReconnect();
        });
        return;
      }
      scheduleReconnect();
    };
  }

  function probeToken(s) {
    return fetch(base + "/webchat/ws?token=" + encodeURIComponent(s.token), { mode: "cors", credentials: "omit" })
      .then(function (res) {
        return res.status === 401 || res.status === 403;
      })
      .catch(function () {
        return false;
      });
  }

  /** The server no longer accepts our token: start a new session, once per successful connect. */
  function refused() {
    if (ws) {
      var old = ws;
      ws = null;
      old.onclose = null;
      old.close();
    }
    connecting = false;
    forgetSession();
    if (renewedSession) {
      showNotice("Chat is unavailable right now. Please try again later.");
      scheduleReconnect();
      return;
    }
    renewedSession = true;
    connect();
  }

  function scheduleReconnect() {
    if (!wanted || retryTimer) return;
    attempts += 1;
    var ceiling = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * Math.pow(2, attempts - 1));
    var delay = ceiling / 2 + Math.random() * (ceiling / 2);
    retryTimer = setTimeout(function () {
      retryTimer = null;
      connect();
    }, delay);
  }

  function reconnectNow() {
    if (!wanted || ws || connecting) return;
    clearTimeout(retryTimer);
    retryTimer = null;
    attempts = 0;
    connect();
  }

  function disconnect() {
    wanted = false;
    clearTimeout(retryTimer);
    retryTimer = null;
    if (ws) {
      var old = ws;
      ws = null;
      old.onclose = null;
      old.close(1000);
    }
    connecting = false;
  }

  window.addEventListener("online", reconnectNow);
  document.addEventListener("visibilitychange", function () {
    if (document.visibilityState === "visible") reconnectNow();
  });

  // ------------------------------------------------------------------------------------------
  // public API

  function identify(info) {
    var next = clean(info || {});
    var changedUser = (next.user_id || null) !== ((session && session.user_id) || null) && !!next.user_id;
    identity = Object.assign({}, identity, next);
    if (changedUser && session) resetConversation();
  }

  function resetConversation() {
    var keep = wanted;
    disconnect();
    forgetSession();
    pending = [];
    savePending();
    entries = [];
    render();
    hideTyping();
    showNotice("");
    wanted = keep;
    if (wanted) connect();
  }

  window.HubChat = {
    __widget: true,
    open: function () {
      whenReady(openPanel);
    },
    close: function () {
      whenReady(closePanel);
    },
    toggle: function () {
      whenReady(function () {
        if (isOpen) closePanel();
        else openPanel();
      });
    },
    identify: identify,
    /** Forget this visitor (e.g. when your user logs out): the next chat starts a new conversation. */
    reset: function () {
      identity = {};
      resetConversation();
    },
  };

  function whenReady(fn) {
    if (ui) fn();
    else if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", fn);
    else fn();
  }

  function start() {
    if (ui) return;
    buildUi();
    // A returning visitor reconnects at once so replies arriving meanwhile show on the launcher.
    if (session || pending.length) {
      wanted = true;
      connect();
    }
    if (config.open) openPanel();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
