// Offers: conversations the router offers to this agent, who accepts or declines before it expires.
//
// An offer is known from a conversation.offered event addressed to this agent (event.agent_id) or
// from a listed conversation whose offered_to is this agent. It goes away when the agent answers,
// at expiry, or when an event says the conversation moved on (declined, assigned, queued again,
// offered to someone else, resolved). Accept and decline carry the offer's routing version, so the
// server refuses (409 stale_offer) an answer to an offer that has already moved on.

import { api, ApiError } from "./api.js";
import { avatar, channelBadge, formatDuration, h } from "./dom.js";

const TICK_MS = 250;
// Events after which an offer of that conversation no longer stands (and a status change away
// from open: resolved, snoozed, pending).
const ENDS_OFFER = new Set([
  "offer.declined",
  "conversation.assigned",
  "conversation.queued",
  "conversation.unassigned",
]);
// Answers that mean the offer is gone for good: show why, then let the agent dismiss it.
const FINAL_ERRORS = new Set([403, 404, 409, 410]);

export class Offers {
  /**
   * host: the element the offer cards live in (a region near the top of the page).
   * hooks.agentId()          this agent's id
   * hooks.lookup(id)         a conversation already loaded by the page, or null
   * hooks.label(conv)        what to call the conversation's contact
   * hooks.onAccepted(conv)   the agent took it: open it
   * hooks.onError(err)       an error the card cannot explain (e.g. the session ended)
   */
  constructor(host, hooks) {
    this.host = host;
    this.hooks = hooks;
    this.offers = new Map(); // conversation id -> offer
    this.timer = null;
    this.announcer = h("div", { class: "visually-hidden", attrs: { role: "status", "aria-live": "polite" } });
    this.list = h("div", { class: "offer-list" });
    host.replaceChildren(this.announcer, this.list);
  }

  clear() {
    this.offers.clear();
    this.render();
  }

  /** The inbox's "my offers" fetch, on start and after a reconnect: offers are unassigned and open. */
  async refresh() {
    try {
      const res = await api.conversations({ status: "open", assignee: "none", limit: 100 });
      this.fromConversations(res.conversations || [], { complete: true });
    } catch (err) {
      if (err instanceof ApiError && err.status === 401) this.hooks.onError(err);
    }
  }

  /**
   * Conversations as listed by the server. complete: the list holds every conversation that could
   * be offered, so an offer missing from it has ended.
   */
  fromConversations(conversations, { complete = false } = {}) {
    const me = this.hooks.agentId();
    const listed = new Set();
    let changed = false;
    for (const c of conversations) {
      listed.add(c.id);
      const offer = this.offers.get(c.id);
      const deadline = Date.parse(c.offer_expires_at || "");
      if (c.offered_to === me && deadline > Date.now()) {
        if (!offer) {
          this.add({ conversationId: c.id, version: c.routing_version, queue: c.queue, deadline, conversation: c });
          changed = true;
        } else if (!offer.conversation) {
          offer.conversation = c;
          changed = true;
        }
      } else if (offer && !offer.error && newerThan(c.routing_version, offer.version)) {
        // The list is newer than the offer (the version moved on): a list fetched before the
        // offer arrived must not dismiss it.
        this.offers.delete(c.id);
        changed = true;
      }
    }
    if (complete) {
      for (const [id, offer] of this.offers) {
        if (!listed.has(id) && !offer.error && !offer.busy && Date.now() - offer.addedAt > 3000) {
          this.offers.delete(id);
          changed = true;
        }
      }
    }
    if (changed) this.render();
  }

  onEvent(event) {
    const id = event.conversation_id != null ? Number(event.conversation_id) : null;
    if (id == null) return;
    const data = event.data || {};
    if (event.type === "conversation.offered") {
      const to = event.agent_id ?? data.offered_to;
      if (to != null && Number(to) === this.hooks.agentId()) {
        this.offers.delete(id);
        const deadline = deadlineOf(data.expires_at, event.at);
        this.add({ conversationId: id, version: data.version, queue: data.queue, deadline });
        this.announce(`New conversation offered${data.queue ? ` from ${data.queue}` : ""}.`);
        this.render();
      } else {
        this.end(id);
      }
    } else if (ENDS_OFFER.has(event.type) || (event.type === "conversation.status_changed" && data.status !== "open")) {
      this.end(id);
    }
  }

  /** The conversation moved on. An answer in flight ends with its response, and a refusal stays
   * on screen until dismissed, so that the agent can read why. */
  end(id) {
    const offer = this.offers.get(id);
    if (offer && !offer.busy && !(offer.error && offer.error.final)) {
      this.offers.delete(id);
      this.render();
    }
  }

  add({ conversationId, version, queue, deadline, conversation = null }) {
    const offer = {
      conversationId,
      version: version ?? null,
      queue: queue || null,
      deadline,
      total: Math.max(1, deadline - Date.now()),
      addedAt: Date.now(),
      conversation: conversation || this.hooks.lookup(conversationId),
      busy: false,
      error: null,
      nodes: null,
    };
    this.offers.set(conversationId, offer);
    if (!offer.conversation) this.describe(offer);
  }

  async describe(offer) {
    try {
      const res = await api.conversation(offer.conversationId);
      if (this.offers.get(offer.conversationId) !== offer) return;
      offer.conversation = res.conversation;
      this.render();
    } catch {
      /* the card still works without the contact's name */
    }
  }

  async answer(offer, accept) {
    offer.busy = true;
    offer.error = null;
    this.render();
    try {
      const call = accept ? api.acceptOffer : api.declineOffer;
      const res = await call(offer.conversationId, offer.version);
      this.offers.delete(offer.conversationId);
      this.render();
      if (accept) this.hooks.onAccepted((res && res.conversation) || { id: offer.conversationId });
    } catch (err) {
      if (!(err instanceof ApiError) || err.status === 401) {
        this.offers.delete(offer.conversationId);
        this.render();
        this.hooks.onError(err);
        return;
      }
      offer.busy = false;
      offer.error = { text: err.humanText, code: err.error, final: FINAL_ERRORS.has(err.status) };
      this.announce(err.humanText);
      this.render();
    }
  }

  dismiss(offer) {
    this.offers.delete(offer.conversationId);
    this.render();
  }

  announce(text) {
    this.announcer.textContent = text;
  }

  render() {
    const focusedKey = this.host.contains(document.activeElement) ? document.activeElement.dataset.focusKey : null;
    const cards = [...this.offers.values()].map((offer) => this.card(offer));
    this.list.replaceChildren(...cards);
    if (focusedKey) this.host.querySelector(`[data-focus-key="${CSS.escape(focusedKey)}"]`)?.focus();
    this.host.hidden = cards.length === 0;
    this.tick();
    if (cards.length && !this.timer) this.timer = setInterval(() => this.tick(), TICK_MS);
    if (!cards.length && this.timer) {
      clearInterval(this.timer);
      this.timer = null;
    }
  }

  card(offer) {
    const id = offer.conversationId;
    const c = offer.conversation;
    const name = c ? this.hooks.label(c) : `Conversation #${id}`;
    const preview = c && c.last_message ? (c.last_message.text || "").replace(/\s+/g, " ").trim() : "";
    const headingId = `offer-${id}-title`;
    const countdown = h("span", { class: "offer-countdown", testid: "offer-countdown" });
    const bar = h("span", { class: "offer-progress-fill" });
    // focusKey: which button to focus again after the cards are drawn anew.
    const button = (label, action, primary, onClick) =>
      h(
        "button",
        {
          type: "button",
          class: `btn ${primary ? "btn-primary" : "btn-secondary"} btn-small`,
          testid: `offer-${action}`,
          disabled: offer.busy,
          dataset: { focusKey: `${id}:${action}` },
          on: { click: onClick },
        },
        label,
      );
    const actions =
      offer.error && offer.error.final
        ? [button("Dismiss", "dismiss", false, () => this.dismiss(offer))]
        : [
            button("Decline", "decline", false, () => this.answer(offer, false)),
            button("Accept", "accept", true, () => this.answer(offer, true)),
          ];
    offer.nodes = { countdown, bar };
    return h(
      "section",
      {
        class: `offer-card${offer.error ? " has-error" : ""}`,
        testid: "offer-card",
        dataset: { conversationId: String(id) },
        attrs: { "aria-labelledby": headingId },
      },
      h(
        "div",
        { class: "offer-head" },
        h("h2", { id: headingId, class: "offer-title" }, "Incoming conversation"),
        offer.queue
          ? h("span", { class: "queue-chip", testid: "offer-queue", title: `Queue ${offer.queue}` }, offer.queue)
          : null,
      ),
      h(
        "div",
        { class: "offer-body" },
        avatar(name, "sm"),
        h(
          "div",
          { class: "offer-who" },
          h("div", { class: "offer-name" }, name),
          preview ? h("div", { class: "offer-preview" }, preview) : null,
        ),
        c ? channelBadge(c.channel_kind, c.channel) : null,
      ),
      offer.error
        ? h(
            "p",
            { class: "offer-error", testid: "offer-error", dataset: { error: offer.error.code }, attrs: { role: "alert" } },
            offer.error.text,
          )
        : h("div", { class: "offer-timer" }, h("span", { class: "offer-progress", attrs: { "aria-hidden": "true" } }, bar), countdown),
      h("div", { class: "offer-actions" }, actions),
    );
  }

  tick() {
    const now = Date.now();
    for (const offer of [...this.offers.values()]) {
      if (offer.error && offer.error.final) continue; // stays until dismissed
      const left = offer.deadline - now;
      if (left <= 0 && !offer.busy) {
        this.offers.delete(offer.conversationId);
        this.announce("An offer expired.");
        this.render();
        return;
      }
      if (!offer.nodes) continue;
      offer.nodes.countdown.textContent = left > 0 ? `Expires in ${formatDuration(Math.ceil(left / 1000))}` : "Expiring…";
      offer.nodes.bar.style.width = `${Math.max(0, Math.min(100, (left / offer.total) * 100))}%`;
    }
  }
}

/**
 * When the offer ends, in this browser's clock. The server's expires_at minus the event's own
 * time is the offer's length whatever the two clocks say; without the event time, trust expires_at.
 */
function deadlineOf(expiresAt, eventAt) {
  const expires = Date.parse(expiresAt || "");
  const at = Date.parse(eventAt || "");
  if (Number.isNaN(expires)) return Date.now() + 30_000;
  if (Number.isNaN(at)) return expires;
  return Date.now() + Math.max(0, expires - at);
}

function newerThan(version, than) {
  return version != null && than != null && Number(version) > Number(than);
}
