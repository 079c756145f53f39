// The supervisor view (#/supervisor): queues and agents, live.
//
// Opened, it reads GET /api/queues and GET /api/agents/overview; after that the live socket's
// queues.updated and agents.updated events carry the same payloads (at most about once a second,
// when something changed). Waits and idle times are snapshots in seconds; between snapshots they
// tick here from the moment the snapshot arrived, so the two clocks never have to agree.

import { api, ApiError } from "./api.js";
import { channelBadge, cssToken, fill, formatDuration, h } from "./dom.js";
import { presenceDot } from "./presence.js";
import { openTransfer } from "./transfer.js";

const TICK_MS = 1000;
const PRESENCE_ORDER = { online: 0, away: 1, offline: 2 };

function percent(share) {
  return share === null || share === undefined || !Number.isFinite(share) ? "—" : `${Math.round(share * 100)}%`;
}

function count(n) {
  return Number.isFinite(n) ? String(n) : "—";
}

export class SupervisorView {
  /** hooks.onError(err): report an error (toast, or the login page when the session ended). */
  constructor(root, hooks) {
    this.root = root;
    this.hooks = hooks;
    this.visible = false;
    this.queues = null;
    this.agents = null;
    this.unqueued = null; // conversations waiting in no queue: {waiting, longest_wait_seconds}
    this.rule = "";
    this.queuesAt = 0; // when (this browser's clock) the snapshots arrived
    this.agentsAt = 0;
    this.liveFrames = { queues: 0, agents: 0 }; // snapshots received from the socket
    this.ticking = []; // cells that count up: {node, seconds, at, suffix?, limit?}
    this.timer = null;
    this.seq = 0;
    this.build();
  }

  build() {
    this.updated = h("span", { class: "sup-updated", testid: "supervisor-updated" });
    this.notice = h("p", { class: "sup-notice", testid: "supervisor-notice", hidden: true, attrs: { role: "alert" } });
    this.rulesNode = h("p", { testid: "service-level-rule" });
    this.queuesBody = h("tbody");
    this.agentsBody = h("tbody");
    const head = (...labels) =>
      h("thead", {}, h("tr", {}, labels.map(([label, title]) => h("th", { scope: "col", title }, label))));
    const refresh = h(
      "button",
      { type: "button", class: "btn btn-secondary btn-small", testid: "supervisor-refresh", on: { click: () => this.load() } },
      "Refresh",
    );
    fill(
      this.root,
      h("header", { class: "sup-header" }, h("h1", {}, "Supervisor"), this.updated, h("div", { class: "topbar-spacer" }), refresh),
      this.notice,
      h(
        "section",
        { class: "sup-card", attrs: { "aria-labelledby": "sup-queues-title" } },
        h(
          "div",
          { class: "sup-card-head" },
          h("h2", { id: "sup-queues-title" }, "Queues"),
          h("details", { class: "sup-rule" }, h("summary", {}, "How service level is counted"), this.rulesNode),
        ),
        h(
          "div",
          { class: "table-wrap" },
          h(
            "table",
            { class: "sup-table", testid: "queues-table" },
            head(
              ["Queue"],
              ["Waiting"],
              ["Longest wait"],
              ["SL 15 min", "Service level over the last 15 minutes"],
              ["SL today", "Service level since midnight"],
              ["ASA", "Average speed of answer"],
              ["Wait p50 / p90", "Median and 90th percentile wait"],
              ["Abandoned", "Abandoned today"],
              ["Agents", "Available / eligible agents"],
            ),
            this.queuesBody,
          ),
        ),
      ),
      h(
        "section",
        { class: "sup-card", attrs: { "aria-labelledby": "sup-agents-title" } },
        h("div", { class: "sup-card-head" }, h("h2", { id: "sup-agents-title" }, "Agents")),
        h(
          "div",
          { class: "table-wrap" },
          h(
            "table",
            { class: "sup-table", testid: "agents-table" },
            head(["Agent"], ["Load"], ["Conversations"], ["Last assignment"], ["Skills"]),
            this.agentsBody,
          ),
        ),
      ),
    );
  }

  show() {
    this.visible = true;
    this.root.hidden = false;
    this.render();
    this.load();
    clearInterval(this.timer);
    this.timer = setInterval(() => this.tick(), TICK_MS);
  }

  hide() {
    this.visible = false;
    this.root.hidden = true;
    clearInterval(this.timer);
    this.timer = null;
  }

  stop() {
    this.hide();
    this.seq += 1;
    this.queues = this.agents = null;
  }

  async load() {
    const seq = ++this.seq;
    const framesBefore = { ...this.liveFrames };
    try {
      const [queues, agents] = await Promise.all([api.queues(), api.agentsOverview()]);
      if (seq !== this.seq) return;
      this.notice.hidden = true;
      // A snapshot pushed while the request was out is at least as new as its answer.
      if (this.liveFrames.queues === framesBefore.queues) this.setQueues(queues);
      if (this.liveFrames.agents === framesBefore.agents) this.setAgents(agents);
      this.render();
    } catch (err) {
      if (seq !== this.seq) return;
      if (err instanceof ApiError && err.status !== 401 && err.status !== 0) {
        this.notice.textContent = `Queues and agents cannot be shown: ${err.humanText}`;
        this.notice.hidden = false;
      } else {
        this.hooks.onError(err);
      }
    }
  }

  /** Live events; the snapshots are kept even while hidden, so opening the view shows them at once. */
  onEvent(event) {
    if (event.type === "queues.updated" && event.data) {
      this.setQueues(event.data);
      this.liveFrames.queues += 1;
    } else if (event.type === "agents.updated" && event.data) {
      this.setAgents(event.data);
      this.liveFrames.agents += 1;
    } else {
      return;
    }
    this.notice.hidden = true;
    if (this.visible) this.render();
  }

  setQueues(payload) {
    this.queues = Array.isArray(payload.queues) ? payload.queues : [];
    this.unqueued = payload.unqueued && payload.unqueued.waiting > 0 ? payload.unqueued : null;
    this.rule = typeof payload.service_level_rule === "string" ? payload.service_level_rule : "";
    this.queuesAt = Date.now();
  }

  setAgents(payload) {
    this.agents = Array.isArray(payload.agents) ? payload.agents : [];
    this.agentsAt = Date.now();
  }

  render() {
    if (!this.visible) return;
    const focused = this.root.contains(document.activeElement) ? document.activeElement.dataset.focusKey : null;
    this.ticking = [];
    this.rulesNode.textContent = this.rule;
    fill(this.queuesBody, this.queueRows());
    fill(this.agentsBody, this.agentRows());
    const at = Math.max(this.queuesAt, this.agentsAt);
    this.updated.textContent = at ? `Updated ${new Date(at).toLocaleTimeString()}` : "Loading…";
    if (focused) this.root.querySelector(`[data-focus-key="${CSS.escape(focused)}"]`)?.focus();
    this.tick();
  }

  queueRows() {
    if (this.queues === null) return emptyRow(9, "Loading…");
    if (!this.queues.length && !this.unqueued) return emptyRow(9, "No queues are defined.");
    const rows = this.queues.map((q) => this.queueRow(q));
    if (this.unqueued) rows.push(this.unqueuedRow(this.unqueued));
    return rows;
  }

  queueRow(q) {
    const sl = q.service_level || {};
    const breached = Number(q.sla_breached_now) > 0 || q.sla_breached_now === true;
    const atRisk = breached || Boolean(q.sla_at_risk);
    const flags = [];
    if (breached) {
      const n = typeof q.sla_breached_now === "number" ? `${q.sla_breached_now} ` : "";
      flags.push(h("span", { class: "pill pill-danger", testid: "queue-breached" }, `${n}over target`));
    } else if (atRisk) {
      const n = typeof q.sla_at_risk === "number" ? `${q.sla_at_risk} ` : "";
      flags.push(h("span", { class: "pill pill-warn", testid: "queue-at-risk" }, `${n}at risk`));
    }
    const byPriority = Object.entries(q.waiting_by_priority || {}).filter(([p, n]) => Number(p) > 0 && n > 0);
    const noneAvailable = q.waiting > 0 && !(q.available_agents > 0);
    return h(
      "tr",
      {
        class: `queue-row${atRisk ? " at-risk" : ""}${breached ? " breached" : ""}`,
        testid: "queue-row",
        dataset: { queue: q.name, atRisk: String(atRisk) },
      },
      h(
        "th",
        { scope: "row" },
        h("div", { class: "cell-title" }, h("span", { class: "queue-name" }, q.name), flags),
        h("div", { class: "cell-sub" }, `priority ${count(q.priority)} · target ${formatDuration(q.sla_seconds)}`),
      ),
      h(
        "td",
        { class: "num", testid: "queue-waiting" },
        h("strong", {}, count(q.waiting)),
        byPriority.length
          ? h("div", { class: "cell-sub" }, byPriority.map(([p, n]) => `P${p}: ${n}`).join(" · "))
          : null,
        Number(q.offered) > 0 ? h("div", { class: "cell-sub" }, `${q.offered} offered`) : null,
      ),
      h("td", { class: "num" }, this.longestWait(q)),
      h("td", { class: "num", testid: "queue-sl-15m" }, percent(sl.rolling_15m)),
      h(
        "td",
        {
          class: "num",
          testid: "queue-sl-today",
          title: Number.isFinite(sl.answered)
            ? `${sl.answered_within_sla ?? 0} of ${sl.answered} answered within target; ${sl.abandoned ?? 0} abandoned`
            : null,
        },
        percent(sl.today),
      ),
      h("td", { class: "num", testid: "queue-asa" }, formatDuration(q.average_speed_of_answer_seconds)),
      h("td", { class: "num" }, `${formatDuration(q.wait_p50_seconds)} / ${formatDuration(q.wait_p90_seconds)}`),
      h("td", { class: "num", testid: "queue-abandoned" }, count(q.abandoned_today)),
      h(
        "td",
        { class: `num${noneAvailable ? " danger-text" : ""}`, testid: "queue-agents", title: "available / eligible" },
        `${count(q.available_agents)} / ${count(q.eligible_agents)}`,
      ),
    );
  }

  /** Conversations waiting in no queue (none matched): only their number and the longest wait. */
  unqueuedRow(u) {
    const none = (testid) => h("td", { class: "num muted", testid }, "—");
    return h(
      "tr",
      { class: "queue-row unqueued", testid: "queue-row", dataset: { queue: u.name || "(unqueued)", atRisk: "false" } },
      h(
        "th",
        { scope: "row" },
        h("div", { class: "cell-title" }, h("span", { class: "queue-name" }, "Not in a queue")),
        h("div", { class: "cell-sub" }, "matched no queue's rules"),
      ),
      h("td", { class: "num", testid: "queue-waiting" }, h("strong", {}, count(u.waiting))),
      h("td", { class: "num" }, this.longestWait(u)),
      none("queue-sl-15m"),
      none("queue-sl-today"),
      none("queue-asa"),
      none(),
      none("queue-abandoned"),
      none("queue-agents"),
    );
  }

  /** The longest wait, ticking from the snapshot; past the queue's target it turns red. */
  longestWait(q) {
    const node = h("span", { class: "tick", testid: "queue-longest-wait" });
    if (q.waiting > 0 && Number.isFinite(q.longest_wait_seconds)) {
      this.ticking.push({ node, seconds: q.longest_wait_seconds, at: this.queuesAt, limit: q.sla_seconds });
    } else {
      node.textContent = "—";
    }
    return node;
  }

  agentRows() {
    if (this.agents === null) return emptyRow(5, "Loading…");
    if (!this.agents.length) return emptyRow(5, "No agents.");
    const sorted = [...this.agents].sort(
      (a, b) =>
        (PRESENCE_ORDER[a.presence] ?? 3) - (PRESENCE_ORDER[b.presence] ?? 3) ||
        String(a.name).localeCompare(String(b.name)),
    );
    return sorted.map((a) => {
      const since = h("span", { class: "tick", testid: "agent-last-assignment" });
      if (Number.isFinite(a.seconds_since_last_assignment)) {
        this.ticking.push({ node: since, seconds: a.seconds_since_last_assignment, at: this.agentsAt, suffix: " ago" });
      } else {
        since.textContent = "never";
      }
      const status = a.status && a.status !== a.presence ? `chose ${a.status}` : null;
      return h(
        "tr",
        { class: "agent-row", testid: "agent-row", dataset: { agentId: String(a.id), presence: a.presence || "" } },
        h(
          "th",
          { scope: "row" },
          h(
            "div",
            { class: "cell-title" },
            presenceDot(a.presence, "agent-presence"),
            h("span", { class: "agent-name", title: a.email || "" }, a.name || a.email),
            a.role && a.role !== "agent" ? h("span", { class: "pill" }, a.role) : null,
          ),
          status ? h("div", { class: "cell-sub" }, status) : null,
        ),
        h("td", {}, loadBar(a)),
        h("td", {}, this.conversationList(a)),
        h("td", { class: "num" }, since),
        h("td", {}, skills(a)),
      );
    });
  }

  conversationList(agent) {
    const conversations = agent.conversations || [];
    if (!conversations.length) return h("span", { class: "muted" }, "—");
    return h(
      "ul",
      { class: "sup-conversations" },
      conversations.map((c) =>
        h(
          "li",
          { testid: "agent-conversation", dataset: { conversationId: String(c.id) } },
          h(
            "a",
            { class: "sup-conv-link", href: `#/conversations/${encodeURIComponent(c.id)}`, title: `Open conversation #${c.id}` },
            channelBadge(c.channel_kind),
            `#${c.id}`,
          ),
          c.offered ? h("span", { class: "pill pill-warn" }, "offered") : null,
          h(
            "button",
            {
              type: "button",
              class: "btn btn-ghost btn-tiny",
              testid: "agent-conversation-transfer",
              dataset: { focusKey: `transfer:${c.id}` },
              attrs: { "aria-label": `Transfer conversation #${c.id} from ${agent.name}` },
              on: { click: () => this.transfer(agent, c) },
            },
            "Transfer",
          ),
        ),
      ),
    );
  }

  transfer(agent, c) {
    openTransfer({
      conversation: { id: c.id, queue: c.queue || null, assignee_id: agent.id },
      title: `#${c.id} (${c.channel_kind || "conversation"}), now with ${agent.name}`,
      targets: () => Promise.resolve({ agents: this.agents || [], queues: this.queues || [] }),
      onDone: () => this.load(),
      onError: this.hooks.onError,
    });
  }

  tick() {
    const now = Date.now();
    for (const t of this.ticking) {
      const seconds = t.seconds + (now - t.at) / 1000;
      t.node.textContent = `${formatDuration(seconds)}${t.suffix || ""}`;
      if (t.limit !== undefined) t.node.classList.toggle("over-target", Number.isFinite(t.limit) && seconds > t.limit);
    }
  }
}

function emptyRow(columns, text) {
  return h("tr", {}, h("td", { class: "sup-empty", colSpan: columns }, text));
}

/** load / capacity as a bar with one segment per channel kind. */
function loadBar(agent) {
  const capacity = Number(agent.capacity) || 0;
  const load = Number(agent.load) || 0;
  const segments = Object.entries(agent.load_by_channel || {})
    .filter(([, units]) => units > 0)
    .map(([kind, units]) => {
      const seg = h("span", { class: `load-seg load-${cssToken(kind)}`, title: `${kind}: ${units}` });
      seg.style.width = `${capacity ? Math.min(100, (units / capacity) * 100) : 0}%`;
      return seg;
    });
  const full = capacity > 0 && load >= capacity;
  const offers = Number(agent.offers) > 0 ? ` · ${agent.offers} offered` : "";
  return h(
    "div",
    { class: `load${full ? " load-full" : ""}`, testid: "agent-load" },
    h(
      "div",
      {
        class: "load-bar",
        attrs: {
          role: "meter",
          "aria-valuemin": 0,
          "aria-valuemax": capacity,
          "aria-valuenow": load,
          "aria-label": `Load ${load} of ${capacity}`,
        },
      },
      segments,
    ),
    h("span", { class: "load-text" }, `${load} / ${capacity}${offers}`),
  );
}

function skills(agent) {
  const entries = Object.entries(agent.skills || {});
  const kinds = agent.channel_kinds || [];
  if (!entries.length && !kinds.length) return h("span", { class: "muted" }, "—");
  return h(
    "div",
    { class: "skills" },
    entries.map(([skill, level]) => h("span", { class: "skill-chip", title: `${skill}: proficiency ${level} of 5` }, `${skill} ${level}`)),
    kinds.length ? h("div", { class: "cell-sub" }, `Channels: ${kinds.join(", ")}`) : null,
  );
}
