// The agent inbox: login, conversation list, timeline with composer, contact panel, live updates,
// and the views that hang off them (presence, offers, transfer, the supervisor view #/supervisor).
//
// State flows one way: the server is the source of truth; live events only say *what* changed and
// the page refetches it. Customer- and agent-supplied text reaches the DOM only through `h()`
// (Text nodes), never innerHTML.

import { api, ApiError } from "./api.js";
import { LiveSocket, liveUrl } from "./live.js";
import {
  avatar,
  channelBadge,
  cssToken,
  debounce,
  fill,
  formatBytes,
  fullTime,
  h,
  messageTime,
  relativeTime,
  safeUrl,
  toast,
} from "./dom.js";
import { Offers } from "./offers.js";
import { PresenceControl } from "./presence.js";
import { SupervisorView } from "./supervisor.js";
import { loadTargets, openTransfer } from "./transfer.js";

const STATUS_FILTERS = [
  ["open", "Open"],
  ["pending", "Pending"],
  ["snoozed", "Snoozed"],
  ["resolved", "Resolved"],
  ["all", "All"],
];
const ASSIGNEE_FILTERS = [
  ["me", "Mine"],
  ["none", "Unassigned"],
  ["all", "All"],
];
const STATUS_LABELS = { open: "Open", pending: "Pending", snoozed: "Snoozed", resolved: "Resolved" };
const DELIVERY_LABELS = {
  queued: "Queued",
  sent: "Sent",
  delivered: "Delivered",
  read: "Read",
  failed: "Failed",
};
const TYPING_SHOW_MS = 4000;
const TYPING_SEND_EVERY_MS = 2000;
const LIST_PAGE = 50;
const LIST_MAX = 200;
const TIMELINE_PAGE = 30;
const NEAR_BOTTOM_PX = 120;

const $ = (id) => document.getElementById(id);

const state = {
  agent: null,
  agents: [],
  filters: loadFilters(),
  conversations: [],
  nextBefore: null,
  selectedId: null,
  selected: null, // {conversation, messages}
  contactId: null,
  contact: null,
  contactTimeline: [],
  contactNextBefore: null,
  mode: "reply",
  drafts: new Map(),
  seen: {}, // conversation id -> last_message_at the agent has looked at
  live: null,
  lastTypingSentAt: 0,
  typingTimer: null,
  view: "inbox", // or "supervisor"
  presence: null, // PresenceControl, Offers and SupervisorView: made once, at boot
  offers: null,
  supervisor: null,
  // Sequence numbers drop responses that arrive after a newer request was made.
  seq: { list: 0, conversation: 0, contact: 0 },
};

// ---------------------------------------------------------------------------------------------
// Boot, login, logout

async function boot() {
  bindStaticHandlers();
  createViews();
  try {
    const res = await api.me();
    startApp(res.agent);
  } catch (err) {
    if (!(err instanceof ApiError && err.status === 401)) reportError(err);
    showLogin();
  } finally {
    $("boot").hidden = true;
  }
}

function showLogin(message) {
  $("app").hidden = true;
  $("login-view").hidden = false;
  const error = $("login-error");
  error.hidden = !message;
  error.textContent = message || "";
  document.title = "Sign in · Inbox";
  $("login-email").focus();
}

async function onLoginSubmit(e) {
  e.preventDefault();
  const email = $("login-email").value.trim();
  const password = $("login-password").value;
  const error = $("login-error");
  if (!email || !password) {
    error.textContent = "Enter your email and password.";
    error.hidden = false;
    return;
  }
  const button = $("login-submit");
  button.disabled = true;
  try {
    const res = await api.login(email, password);
    $("login-password").value = "";
    error.hidden = true;
    startApp(res.agent);
  } catch (err) {
    error.textContent = err instanceof ApiError ? err.humanText : String(err);
    error.hidden = false;
    if (!(err instanceof ApiError && (err.status === 401 || err.status === 400))) reportError(err);
  } finally {
    button.disabled = false;
  }
}

function startApp(agent) {
  state.agent = agent;
  state.seen = loadSeen(agent.id);
  $("login-view").hidden = true;
  $("app").hidden = false;
  fill($("me"), avatar(agent.name || agent.email, "sm"), h("span", { class: "me-name" }, agent.name || agent.email));
  $("me").title = agent.email;
  state.presence.start(agent);
  $("view-tabs").hidden = !isSupervisor();
  renderFilters();
  loadAgents();
  refreshList();
  state.offers.refresh();
  route();
  state.live = new LiveSocket(liveUrl(), {
    onFrame: onLiveFrame,
    onState: renderLiveState,
    onReconnect: refreshAll,
    onHandshakeFailed: checkSessionAfterFailedHandshake,
    onUnauthorized: sessionExpired,
  });
  state.live.start();
}

function stopApp() {
  state.live?.stop();
  state.live = null;
  clearTimeout(state.typingTimer);
  state.presence.stop();
  state.offers.clear();
  state.supervisor.stop();
  showView("inbox");
  $("view-tabs").hidden = true;
  Object.assign(state, {
    agent: null,
    agents: [],
    conversations: [],
    nextBefore: null,
    selectedId: null,
    selected: null,
    contactId: null,
    contact: null,
    contactTimeline: [],
    contactNextBefore: null,
  });
  state.drafts.clear();
  fill($("conversation-list"));
  fill($("contact-panel"));
}

async function logout() {
  try {
    await api.logout();
  } catch (err) {
    if (!(err instanceof ApiError && err.status === 401)) reportError(err);
  }
  stopApp();
  history.replaceState(null, "", location.pathname);
  showLogin();
}

function sessionExpired() {
  if (!state.agent) return;
  stopApp();
  showLogin("Your session has ended. Please sign in again.");
}

async function checkSessionAfterFailedHandshake(failures) {
  if (failures < 2 || failures % 2) return;
  try {
    await api.me();
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) sessionExpired();
  }
}

function isSupervisor() {
  return Boolean(state.agent) && (state.agent.role === "supervisor" || state.agent.role === "admin");
}

function reportError(err) {
  if (err instanceof ApiError) {
    if (err.status === 401) return sessionExpired();
    toast(err.humanText);
  } else {
    console.error(err);
    toast(String(err && err.message ? err.message : err));
  }
}

// ---------------------------------------------------------------------------------------------
// Persistence of small UI preferences (never tokens: the session is an HttpOnly cookie)

function loadFilters() {
  try {
    const saved = JSON.parse(localStorage.getItem("inbox.filters") || "{}");
    const status = STATUS_FILTERS.some(([v]) => v === saved.status) ? saved.status : "open";
    const assignee = ASSIGNEE_FILTERS.some(([v]) => v === saved.assignee) ? saved.assignee : "all";
    return { status, assignee };
  } catch {
    return { status: "open", assignee: "all" };
  }
}

function saveFilters() {
  try {
    localStorage.setItem("inbox.filters", JSON.stringify(state.filters));
  } catch {
    /* storage may be disabled; filters then last for the page only */
  }
}

function loadSeen(agentId) {
  try {
    return JSON.parse(localStorage.getItem(`inbox.seen.${agentId}`) || "{}") || {};
  } catch {
    return {};
  }
}

function markSeen(conversation) {
  const at = conversation.last_message_at || conversation.updated_at;
  if (!at || state.seen[conversation.id] === at) return;
  state.seen[conversation.id] = at;
  try {
    localStorage.setItem(`inbox.seen.${state.agent.id}`, JSON.stringify(state.seen));
  } catch {
    /* ignore */
  }
}

function isUnread(c) {
  if (!c.last_message || c.last_message.direction !== "in") return false;
  if (c.id === state.selectedId && document.visibilityState === "visible") return false;
  const seen = state.seen[c.id];
  const last = c.last_message_at || c.last_message.at;
  return !seen || Date.parse(last) > Date.parse(seen);
}

// ---------------------------------------------------------------------------------------------
// Conversation list

function renderFilters() {
  const segmented = (container, options, key) =>
    fill(
      container,
      options.map(([value, label]) =>
        h(
          "button",
          {
            type: "button",
            class: "segment",
            role: "tab",
            testid: `filter-${key}-${value}`,
            attrs: { "aria-selected": String(state.filters[key] === value) },
            on: {
              click: () => {
                if (state.filters[key] === value) return;
                state.filters[key] = value;
                saveFilters();
                renderFilters();
                state.conversations = [];
                renderList();
                refreshList();
              },
            },
          },
          label,
        ),
      ),
    );
  segmented($("status-filter"), STATUS_FILTERS, "status");
  segmented($("assignee-filter"), ASSIGNEE_FILTERS, "assignee");
}

async function refreshList() {
  const seq = ++state.seq.list;
  const limit = Math.min(LIST_MAX, Math.max(LIST_PAGE, state.conversations.length));
  try {
    const res = await api.conversations({ ...state.filters, limit });
    if (seq !== state.seq.list) return;
    state.conversations = res.conversations || [];
    state.nextBefore = res.next_before ?? null;
    renderList();
    state.offers.fromConversations(state.conversations);
  } catch (err) {
    if (seq === state.seq.list) reportError(err);
  }
}

async function loadMoreConversations(button) {
  if (state.nextBefore == null) return;
  button.disabled = true;
  const seq = ++state.seq.list;
  try {
    const res = await api.conversations({ ...state.filters, before: state.nextBefore, limit: LIST_PAGE });
    if (seq !== state.seq.list) return;
    const known = new Set(state.conversations.map((c) => c.id));
    state.conversations.push(...(res.conversations || []).filter((c) => !known.has(c.id)));
    state.nextBefore = res.next_before ?? null;
    renderList();
  } catch (err) {
    reportError(err);
    button.disabled = false;
  }
}

const scheduleList = debounce(refreshList, 150);

/**
 * What to call a contact. Anonymous web-chat visitors are named after their opaque visitor id,
 * which means nothing to a person, so they become "Website visitor #<contact id>".
 */
function displayName(contact, address, kind) {
  const name = contact && contact.name;
  const anonymousVisitor = kind === "webchat" && (!name || name === address);
  if (anonymousVisitor && contact && contact.id != null) return `Website visitor #${contact.id}`;
  return name || address || "Unknown contact";
}

function conversationName(c) {
  return displayName(c.contact, c.address, c.channel_kind);
}

function previewText(c) {
  const last = c.last_message;
  if (!last) return c.subject || "No messages yet";
  const text = (last.text || "").replace(/\s+/g, " ").trim() || "Attachment";
  if (last.direction === "out") return `You: ${text}`;
  if (last.direction === "note") return `Note: ${text}`;
  return text;
}

function renderList() {
  const list = $("conversation-list");
  const items = state.conversations.map((c) => {
    const unread = isUnread(c);
    const selected = c.id === state.selectedId;
    const name = conversationName(c);
    const topLine = h(
      "div",
      { class: "conv-top" },
      h("span", { class: "conv-name" }, name),
      channelBadge(c.channel_kind, c.channel),
      h(
        "time",
        { class: "conv-time", dateTime: c.last_message_at || c.updated_at || "", title: fullTime(c.last_message_at || c.updated_at) },
        relativeTime(c.last_message_at || c.updated_at),
      ),
    );
    const tags = [];
    if (state.filters.status === "all" && c.status !== "open")
      tags.push(h("span", { class: `mini-status status-${cssToken(c.status)}` }, STATUS_LABELS[c.status] || c.status));
    if (isNotablePriority(c.priority)) tags.push(h("span", { class: "mini-priority" }, String(c.priority)));
    if (c.queue && c.assignee_id == null)
      tags.push(h("span", { class: "mini-queue", title: `Waiting in queue ${c.queue}` }, c.queue));
    if (c.assignee && state.filters.assignee !== "me")
      tags.push(h("span", { class: "mini-assignee", title: `Assigned to ${c.assignee.name}` }, c.assignee.name));
    const bottomLine = h(
      "div",
      { class: "conv-bottom" },
      h("span", { class: "conv-preview" }, previewText(c)),
      tags,
      unread ? h("span", { class: "unread-dot", testid: "unread-dot", title: "New activity" }) : null,
    );
    return h(
      "li",
      {
        class: `conversation-item${selected ? " selected" : ""}${unread ? " unread" : ""}`,
        testid: "conversation-item",
        dataset: { conversationId: String(c.id), status: c.status },
        attrs: selected ? { "aria-current": "true" } : {},
      },
      h(
        "button",
        { type: "button", class: "conv-button", on: { click: () => selectConversation(c.id) } },
        avatar(name),
        h("div", { class: "conv-body" }, topLine, bottomLine),
      ),
    );
  });
  if (!items.length) {
    items.push(
      h(
        "li",
        { class: "list-empty" },
        h("strong", {}, "Nothing here"),
        h("span", {}, "No conversations match these filters."),
      ),
    );
  } else if (state.nextBefore != null) {
    const more = h("button", { type: "button", class: "btn btn-ghost btn-block" }, "Load more");
    more.addEventListener("click", () => loadMoreConversations(more));
    items.push(h("li", { class: "list-more" }, more));
  }
  fill(list, items);
  const unreadCount = state.conversations.filter(isUnread).length;
  document.title = unreadCount ? `(${unreadCount}) Inbox` : "Inbox";
}

function isNotablePriority(priority) {
  if (priority === null || priority === undefined) return false;
  if (typeof priority === "number") return priority > 0;
  return !["", "none", "normal", "low", "medium"].includes(String(priority).toLowerCase());
}

// ---------------------------------------------------------------------------------------------
// Selected conversation

function conversationIdFromHash() {
  const m = /^#\/conversations\/(\d+)$/.exec(location.hash);
  return m ? Number(m[1]) : null;
}

function selectConversation(id) {
  id = Number(id);
  if (state.view !== "inbox") showView("inbox");
  if (state.selectedId === id && state.selected) return;
  saveDraft();
  state.selectedId = id;
  state.selected = null;
  hideTyping();
  if (conversationIdFromHash() !== id) history.replaceState(null, "", `#/conversations/${id}`);
  document.body.classList.add("has-selection");
  $("empty-conversation").hidden = true;
  $("conversation-view").hidden = false;
  fill($("timeline"), h("div", { class: "timeline-loading" }, "Loading…"));
  fill($("conversation-name"));
  fill($("conversation-meta"));
  $("status-badge").hidden = true;
  restoreDraft();
  renderList();
  loadConversation({ scrollToEnd: true });
}

function clearSelection() {
  saveDraft();
  state.selectedId = null;
  state.selected = null;
  hideTyping();
  history.replaceState(null, "", location.pathname + location.search);
  renderNoSelection();
  renderList();
}

function renderNoSelection() {
  document.body.classList.remove("has-selection");
  $("conversation-view").hidden = true;
  $("empty-conversation").hidden = false;
  state.contactId = null;
  state.contact = null;
  renderContact();
}

async function loadConversation({ scrollToEnd = false } = {}) {
  const id = state.selectedId;
  if (id == null) return;
  const seq = ++state.seq.conversation;
  try {
    const res = await api.conversation(id);
    if (seq !== state.seq.conversation || id !== state.selectedId) return;
    state.selected = { conversation: res.conversation, messages: res.messages || [] };
    if (document.visibilityState === "visible") markSeen(res.conversation);
    renderConversation({ scrollToEnd });
    mergeIntoList(res.conversation);
    const contactId = res.conversation.contact ? res.conversation.contact.id : null;
    if (contactId !== state.contactId) loadContact(contactId);
  } catch (err) {
    if (seq !== state.seq.conversation) return;
    reportError(err);
    if (err instanceof ApiError && (err.status === 404 || err.status === 403)) clearSelection();
  }
}

const scheduleConversation = debounce(() => loadConversation(), 60);

/** Keep the list row in step with the conversation just fetched, without waiting for the list. */
function mergeIntoList(conversation) {
  const i = state.conversations.findIndex((c) => c.id === conversation.id);
  if (i >= 0) {
    state.conversations[i] = conversation;
  }
  renderList();
}

function renderConversation({ scrollToEnd = false } = {}) {
  const { conversation: c, messages } = state.selected;
  const name = conversationName(c);
  fill($("conversation-name"), name);
  $("conversation-name").title = name;

  const badge = $("status-badge");
  badge.hidden = false;
  badge.className = `status-badge status-${cssToken(c.status)}`;
  badge.dataset.status = c.status;
  badge.textContent = STATUS_LABELS[c.status] || c.status;

  const meta = [channelBadge(c.channel_kind, c.channel)];
  if (c.address && c.address !== name) meta.push(h("span", { class: "meta-address" }, c.address));
  if (c.subject) meta.push(h("span", { class: "meta-subject", title: c.subject }, c.subject));
  meta.push(routingMeta(c));
  fill($("conversation-meta"), meta);

  renderAssignee(c);
  const resolved = c.status === "resolved";
  $("resolve-button").hidden = resolved;
  $("reopen-button").hidden = !resolved;
  $("transfer-button").hidden = resolved || !(isSupervisor() || c.assignee_id === state.agent.id);

  renderTimeline(messages, { scrollToEnd });
}

/** Where routing has the conversation: its queue (while it waits there) and any open offer. */
function routingMeta(c) {
  const parts = [];
  if (c.queue) {
    const since = c.assignee_id == null && c.enqueued_at ? `, waiting since ${fullTime(c.enqueued_at)}` : "";
    const title = `Queue ${c.queue}${since}`;
    parts.push(h("span", { class: "queue-chip", testid: "conversation-queue", title }, c.queue));
  }
  if (c.offered_to != null) {
    const agent = state.agents.find((a) => a.id === c.offered_to);
    const to = c.offered_to === state.agent.id ? "you" : agent ? agent.name : `agent #${c.offered_to}`;
    parts.push(h("span", { class: "meta-offer", testid: "conversation-offered" }, `offered to ${to}`));
  }
  return parts;
}

function transferSelected() {
  const c = state.selected && state.selected.conversation;
  if (!c) return;
  openTransfer({
    conversation: c,
    title: conversationName(c),
    targets: () => loadTargets(isSupervisor()),
    onDone: (conversation) => {
      scheduleList();
      // An agent who handed the conversation to someone else may no longer read it.
      const mine = (cv) => cv.assignee_id == null || cv.assignee_id === state.agent.id;
      if (!conversation || !(isSupervisor() || mine(conversation))) clearSelection();
      else if (conversation.id === state.selectedId && state.selected) {
        state.selected.conversation = conversation;
        renderConversation();
      }
    },
    onError: reportError,
  });
}

function renderAssignee(c) {
  const select = $("assignee-select");
  const options = [h("option", { value: "" }, "Unassigned")];
  const known = new Set();
  for (const agent of state.agents) {
    known.add(agent.id);
    options.push(h("option", { value: String(agent.id) }, agent.id === state.agent.id ? `${agent.name} (you)` : agent.name));
  }
  if (c.assignee && !known.has(c.assignee.id)) options.push(h("option", { value: String(c.assignee.id) }, c.assignee.name));
  fill(select, options);
  select.value = c.assignee_id != null ? String(c.assignee_id) : "";
  $("assign-me").hidden = c.assignee_id === state.agent.id;
}

async function updateSelected(changes, button) {
  const id = state.selectedId;
  if (id == null) return;
  if (button) button.disabled = true;
  try {
    const res = await api.updateConversation(id, changes);
    if (id === state.selectedId && state.selected) {
      state.selected.conversation = res.conversation;
      renderConversation();
    }
    scheduleList();
  } catch (err) {
    reportError(err);
    if (state.selected) renderAssignee(state.selected.conversation);
  } finally {
    if (button) button.disabled = false;
  }
}

// ---------------------------------------------------------------------------------------------
// Timeline

function isNearBottom(node) {
  return node.scrollHeight - node.scrollTop - node.clientHeight < NEAR_BOTTOM_PX;
}

function dayLabel(iso) {
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return "";
  const today = new Date();
  const yesterday = new Date(Date.now() - 86_400_000);
  if (d.toDateString() === today.toDateString()) return "Today";
  if (d.toDateString() === yesterday.toDateString()) return "Yesterday";
  return d.toLocaleDateString(undefined, { weekday: "short", month: "short", day: "numeric", year: "numeric" });
}

function renderTimeline(messages, { scrollToEnd = false } = {}) {
  const timeline = $("timeline");
  const stick = scrollToEnd || isNearBottom(timeline);
  const previousTop = timeline.scrollTop;
  const c = state.selected.conversation;
  const nodes = [];
  let lastDay = null;
  for (const m of messages) {
    const day = dayLabel(m.created_at);
    if (day && day !== lastDay) {
      nodes.push(h("div", { class: "day-divider" }, h("span", {}, day)));
      lastDay = day;
    }
    nodes.push(messageNode(m, c));
  }
  if (!messages.length) nodes.push(h("div", { class: "timeline-empty" }, "No messages in this conversation yet."));
  fill(timeline, nodes);
  timeline.scrollTop = stick ? timeline.scrollHeight : previousTop;
}

function messageNode(m, conversation) {
  const direction = m.direction === "out" || m.direction === "note" ? m.direction : "in";
  let author;
  if (direction === "in") {
    // In a thread with several senders (e-mail Cc) the author differs from the contact's address.
    const own = !m.author || m.author === m.sender && m.sender === conversation.address;
    author = own ? conversationName(conversation) : m.author;
  }
  else if (m.agent_id != null && state.agent && m.agent_id === state.agent.id) author = "You";
  else author = m.author || "Agent";

  const bubble = h("div", { class: "bubble" });
  if (direction === "note") bubble.appendChild(h("div", { class: "note-label" }, "Private note"));
  if (m.text) bubble.appendChild(h("div", { class: "message-text" }, m.text));
  const attachments = (m.attachments || []).map(attachmentNode);
  if (attachments.length) bubble.appendChild(h("div", { class: "attachments" }, attachments));
  if (!m.text && !attachments.length) bubble.appendChild(h("div", { class: "message-text muted" }, "(empty message)"));

  const meta = h(
    "div",
    { class: "message-meta" },
    h("span", { class: "message-author" }, author),
    h("time", { dateTime: m.created_at || "", title: fullTime(m.created_at) }, messageTime(m.created_at)),
  );
  if (direction === "in" && m.channel && m.channel !== conversation.channel) meta.appendChild(channelBadge(m.channel));

  const parts = [meta, bubble];
  if (direction === "out") parts.push(deliveryNode(m));
  return h(
    "div",
    {
      class: `message message-${direction}`,
      testid: "message",
      dataset: { direction, messageId: String(m.id), status: m.status || "" },
    },
    parts,
  );
}

function deliveryNode(m) {
  const status = m.status || "queued";
  const node = h(
    "div",
    { class: `delivery delivery-${cssToken(status)}`, testid: "delivery-status", dataset: { status } },
    h("span", { class: "delivery-icon", attrs: { "aria-hidden": "true" } }),
    status === "failed" && m.error ? "Failed:" : DELIVERY_LABELS[status] || status,
  );
  if (status === "failed" && m.error) node.appendChild(h("span", { class: "delivery-error", testid: "delivery-error" }, m.error));
  return node;
}

function attachmentNode(a) {
  const url = a.url ? safeUrl(a.url) : null;
  const label = [h("span", { class: "attachment-name" }, a.filename || "attachment"), h("span", { class: "attachment-size" }, formatBytes(a.size))];
  return url
    ? h("a", { class: "attachment", href: url, target: "_blank", rel: "noopener noreferrer", download: a.filename || "" }, label)
    : h("span", { class: "attachment" }, label);
}

// ---------------------------------------------------------------------------------------------
// Composer

function setMode(mode) {
  state.mode = mode;
  const form = $("composer");
  form.dataset.mode = mode;
  $("mode-reply").setAttribute("aria-selected", String(mode === "reply"));
  $("mode-note").setAttribute("aria-selected", String(mode === "note"));
  const input = $("composer-input");
  input.placeholder = mode === "note" ? "Write a private note. Only agents see it." : "Write a reply…";
  $("send-button").textContent = mode === "note" ? "Add note" : "Send";
  input.focus();
}

function saveDraft() {
  if (state.selectedId == null) return;
  const text = $("composer-input").value;
  if (text) state.drafts.set(state.selectedId, text);
  else state.drafts.delete(state.selectedId);
}

function restoreDraft() {
  $("composer-input").value = state.drafts.get(state.selectedId) || "";
}

async function onComposerSubmit(e) {
  e.preventDefault();
  const input = $("composer-input");
  const text = input.value;
  const id = state.selectedId;
  if (!text.trim() || id == null) return;
  const button = $("send-button");
  if (button.disabled) return;
  button.disabled = true;
  const mode = state.mode;
  try {
    const res = mode === "note" ? await api.note(id, text) : await api.reply(id, text);
    if (input.value === text) input.value = "";
    state.drafts.delete(id);
    if (id === state.selectedId && state.selected && res && res.message) {
      const messages = state.selected.messages;
      if (!messages.some((m) => m.id === res.message.id)) messages.push(res.message);
      renderTimeline(messages, { scrollToEnd: true });
    }
    scheduleList();
  } catch (err) {
    reportError(err);
  } finally {
    button.disabled = false;
    input.focus();
  }
}

function onComposerKeydown(e) {
  if (e.key === "Enter" && !e.shiftKey && !e.isComposing && !e.altKey && !e.ctrlKey && !e.metaKey) {
    e.preventDefault();
    $("composer").requestSubmit();
  }
}

function onComposerInput() {
  // Private notes are never signalled to the customer.
  if (state.mode !== "reply" || state.selectedId == null || !state.live) return;
  const now = Date.now();
  if (now - state.lastTypingSentAt < TYPING_SEND_EVERY_MS) return;
  if (state.live.send({ type: "typing", conversation_id: state.selectedId })) state.lastTypingSentAt = now;
}

// ---------------------------------------------------------------------------------------------
// Contact panel

async function loadContact(contactId) {
  state.contactId = contactId;
  state.contact = null;
  state.contactTimeline = [];
  state.contactNextBefore = null;
  renderContact();
  if (contactId == null) return;
  await refreshContact();
}

async function refreshContact() {
  const contactId = state.contactId;
  if (contactId == null) return;
  const seq = ++state.seq.contact;
  try {
    const limit = Math.max(TIMELINE_PAGE, state.contactTimeline.length);
    const [contactRes, timelineRes] = await Promise.all([
      api.contact(contactId),
      api.contactTimeline(contactId, { limit: Math.min(limit, 200) }),
    ]);
    if (seq !== state.seq.contact || contactId !== state.contactId) return;
    state.contact = contactRes.contact;
    state.contactTimeline = timelineRes.messages || [];
    state.contactNextBefore = timelineRes.next_before ?? null;
    renderContact();
  } catch (err) {
    if (seq === state.seq.contact) reportError(err);
  }
}

const scheduleContact = debounce(refreshContact, 200);

async function loadOlderContactTimeline(button) {
  const contactId = state.contactId;
  if (contactId == null || state.contactNextBefore == null) return;
  button.disabled = true;
  try {
    const res = await api.contactTimeline(contactId, { before: state.contactNextBefore, limit: TIMELINE_PAGE });
    if (contactId !== state.contactId) return;
    const known = new Set(state.contactTimeline.map((m) => m.id));
    state.contactTimeline.push(...(res.messages || []).filter((m) => !known.has(m.id)));
    state.contactNextBefore = res.next_before ?? null;
    renderContact();
  } catch (err) {
    reportError(err);
    button.disabled = false;
  }
}

function panelSection(title, ...children) {
  return h("section", { class: "panel-section" }, h("h2", {}, title), children);
}

function renderContact() {
  const panel = $("contact-panel");
  const contact = state.contact;
  if (state.contactId == null) {
    fill(panel, h("div", { class: "panel-empty" }, "Contact details appear here."));
    return;
  }
  if (!contact) {
    fill(panel, h("div", { class: "panel-empty" }, "Loading contact…"));
    return;
  }
  const identitiesList = contact.identities || [];
  const first = identitiesList[0];
  const name = displayName(contact, first ? first.value : null, first ? first.kind : null);
  const header = h(
    "div",
    { class: "contact-card" },
    avatar(name, "lg"),
    h("div", { class: "contact-name", testid: "contact-name" }, name),
    contact.created_at ? h("div", { class: "contact-since" }, `Contact since ${new Date(contact.created_at).toLocaleDateString()}`) : null,
  );

  const identities = identitiesList.map((i) =>
    h("li", { class: "identity" }, h("span", { class: `identity-kind kind-${cssToken(i.kind)}` }, i.kind), h("span", { class: "identity-value" }, i.value)),
  );

  const attributes = Object.entries(contact.attributes || {}).map(([key, value]) =>
    h(
      "div",
      { class: "attribute" },
      h("dt", {}, key),
      h("dd", {}, typeof value === "string" ? value : JSON.stringify(value)),
    ),
  );

  const conversations = (contact.conversations || []).map((c) =>
    h(
      "li",
      {},
      h(
        "button",
        {
          type: "button",
          class: `contact-conversation${c.id === state.selectedId ? " current" : ""}`,
          on: { click: () => selectConversation(c.id) },
        },
        channelBadge(c.channel_kind, c.channel),
        h("span", { class: "cc-subject" }, c.subject || (c.last_message && c.last_message.text) || `Conversation #${c.id}`),
        h("span", { class: `mini-status status-${cssToken(c.status)}` }, STATUS_LABELS[c.status] || c.status),
      ),
    ),
  );

  const activity = state.contactTimeline.map((m) => {
    const direction = m.direction === "out" || m.direction === "note" ? m.direction : "in";
    const label = direction === "in" ? "Customer" : direction === "note" ? "Note" : m.author || "Agent";
    return h(
      "li",
      {},
      h(
        "button",
        {
          type: "button",
          class: `activity activity-${direction}${m.conversation_id === state.selectedId ? " current" : ""}`,
          testid: "contact-timeline-item",
          dataset: { messageId: String(m.id), direction },
          on: { click: () => selectConversation(m.conversation_id) },
        },
        h(
          "div",
          { class: "activity-meta" },
          channelBadge(m.channel),
          h("span", { class: "activity-author" }, label),
          h("time", { dateTime: m.created_at || "", title: fullTime(m.created_at) }, relativeTime(m.created_at)),
        ),
        h("div", { class: "activity-text" }, m.text || "(attachment)"),
      ),
    );
  });
  let more = null;
  if (state.contactNextBefore != null) {
    more = h("button", { type: "button", class: "btn btn-ghost btn-small btn-block" }, "Load older");
    more.addEventListener("click", () => loadOlderContactTimeline(more));
  }

  fill(
    panel,
    header,
    identities.length ? panelSection("Identities", h("ul", { class: "identities" }, identities)) : null,
    attributes.length ? panelSection("Attributes", h("dl", { class: "attributes" }, attributes)) : null,
    conversations.length > 1 ? panelSection("Conversations", h("ul", { class: "contact-conversations" }, conversations)) : null,
    panelSection(
      "Activity on all channels",
      activity.length
        ? h("ul", { class: "activity-list", testid: "contact-timeline" }, activity)
        : h("p", { class: "muted" }, "No messages yet."),
      more,
    ),
  );
}

// ---------------------------------------------------------------------------------------------
// Live updates

function renderLiveState(liveState) {
  const node = $("live-state");
  node.dataset.state = liveState;
  $("live-label").textContent = liveState === "open" ? "Live" : liveState === "connecting" ? "Connecting…" : "Reconnecting…";
}

function onLiveFrame(frame) {
  switch (frame.type) {
    case "hello":
      state.presence.update(frame.agent);
      break;
    case "event":
      onLiveEvent(frame.event);
      break;
    case "typing":
      // Only the customer's typing is shown; other agents' signals (if any) are not "the customer".
      if (frame.who && frame.who !== "customer") break;
      if (frame.conversation_id != null && Number(frame.conversation_id) === state.selectedId) showTyping();
      break;
    case "resync":
      refreshAll();
      break;
    default:
      break; // pong
  }
}

function onLiveEvent(event) {
  if (!event || typeof event.type !== "string") return;
  const type = event.type;
  state.offers.onEvent(event);
  state.presence.onEvent(event);
  state.supervisor.onEvent(event);
  if (type === "agents.updated" && event.data) state.presence.fromAgents(event.data.agents);
  const conversationId = event.conversation_id != null ? Number(event.conversation_id) : null;
  if (conversationId != null && conversationId === state.selectedId) {
    if (type === "message.received") hideTyping();
    scheduleConversation();
  }
  const touchesConversations = /^(message|conversation|note|offer)\./.test(type);
  if (touchesConversations) scheduleList();
  const contactId = event.contact_id != null ? Number(event.contact_id) : null;
  if (contactId != null && contactId === state.contactId && (touchesConversations || type.startsWith("contact."))) {
    scheduleContact();
  }
  if (type === "agent.created") loadAgents();
}

function showTyping() {
  $("typing-indicator").hidden = false;
  clearTimeout(state.typingTimer);
  state.typingTimer = setTimeout(hideTyping, TYPING_SHOW_MS);
}

function hideTyping() {
  clearTimeout(state.typingTimer);
  $("typing-indicator").hidden = true;
}

function refreshAll() {
  if (!state.agent) return;
  loadAgents();
  refreshList();
  state.offers.refresh();
  if (state.supervisor.visible) state.supervisor.load();
  if (state.selectedId != null) loadConversation();
  if (state.contactId != null) refreshContact();
}

async function loadAgents() {
  try {
    const res = await api.agents();
    state.agents = res.agents || [];
    state.presence.fromAgents(state.agents);
    if (state.selected) renderAssignee(state.selected.conversation);
  } catch (err) {
    reportError(err);
  }
}

// ---------------------------------------------------------------------------------------------
// Views: the inbox (#/conversations/<id> or none) and, for supervisors, #/supervisor

function createViews() {
  state.presence = new PresenceControl(
    { select: $("presence-select"), dot: $("presence-dot"), note: $("presence-note") },
    { onError: reportError },
  );
  state.offers = new Offers($("offers"), {
    agentId: () => (state.agent ? state.agent.id : null),
    lookup: (id) =>
      state.conversations.find((c) => c.id === id) ||
      (state.selected && state.selected.conversation.id === id ? state.selected.conversation : null),
    label: conversationName,
    onAccepted: (conversation) => {
      scheduleList();
      if (conversation.id === state.selectedId) loadConversation();
      else selectConversation(conversation.id);
    },
    onError: reportError,
  });
  state.supervisor = new SupervisorView($("supervisor-view"), { onError: reportError });
}

function route() {
  if (!state.agent) return;
  if (location.hash === "#/supervisor") {
    if (isSupervisor()) {
      showView("supervisor");
      return;
    }
    history.replaceState(null, "", location.pathname + location.search);
  }
  showView("inbox");
  const id = conversationIdFromHash();
  if (id != null) {
    if (id !== state.selectedId) selectConversation(id);
  } else if (state.selectedId != null) {
    history.replaceState(null, "", `#/conversations/${state.selectedId}`);
  } else {
    renderNoSelection();
  }
}

function showView(view) {
  state.view = view;
  const supervisor = view === "supervisor";
  $("app").dataset.view = view;
  document.querySelector(".list-pane").hidden = supervisor;
  $("conversation-pane").hidden = supervisor;
  $("contact-panel").hidden = supervisor;
  for (const [tab, name] of [["inbox-tab", "inbox"], ["supervisor-tab", "supervisor"]]) {
    if (name === view) $(tab).setAttribute("aria-current", "page");
    else $(tab).removeAttribute("aria-current");
  }
  if (supervisor && !state.supervisor.visible) state.supervisor.show();
  else if (!supervisor && state.supervisor.visible) state.supervisor.hide();
}

// ---------------------------------------------------------------------------------------------
// Wiring

function bindStaticHandlers() {
  $("login-form").addEventListener("submit", onLoginSubmit);
  $("logout").addEventListener("click", logout);
  $("composer").addEventListener("submit", onComposerSubmit);
  $("composer-input").addEventListener("keydown", onComposerKeydown);
  $("composer-input").addEventListener("input", onComposerInput);
  $("mode-reply").addEventListener("click", () => setMode("reply"));
  $("mode-note").addEventListener("click", () => setMode("note"));
  $("resolve-button").addEventListener("click", (e) => updateSelected({ status: "resolved" }, e.currentTarget));
  $("reopen-button").addEventListener("click", (e) => updateSelected({ status: "open" }, e.currentTarget));
  $("assign-me").addEventListener("click", (e) => updateSelected({ assignee_id: state.agent.id }, e.currentTarget));
  $("assignee-select").addEventListener("change", (e) => {
    const value = e.currentTarget.value;
    updateSelected({ assignee_id: value ? Number(value) : null });
  });
  $("transfer-button").addEventListener("click", transferSelected);
  $("back-to-list").addEventListener("click", clearSelection);
  window.addEventListener("hashchange", route);
  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState === "visible" && state.selected) {
      markSeen(state.selected.conversation);
      renderList();
    }
  });
  // Relative times ("5m") age while the page is open.
  setInterval(() => {
    if (state.agent) renderList();
  }, 30_000);
}

boot();
