// The agent's own availability in the top bar.
//
// Two values are shown because they can differ: `status` is what the agent chose (the selector),
// `presence` is what the router sees (the dot): the chosen status while an inbox of theirs is
// connected, else offline. Only the status is written (PUT /api/agents/me/status); the presence
// comes back in that answer and in agent.presence_changed events.

import { api, ApiError } from "./api.js";
import { h } from "./dom.js";

export const PRESENCE_LABELS = { online: "Online", away: "Away", offline: "Offline" };
const STATUSES = Object.keys(PRESENCE_LABELS);

function known(value) {
  return STATUSES.includes(value) ? value : null;
}

/** A coloured dot with a text alternative, for the agent's own presence or another agent's. */
export function presenceDot(presence, testid) {
  const value = known(presence) || "unknown";
  const label = PRESENCE_LABELS[value] || "Presence unknown";
  return h("span", {
    class: `presence-dot presence-${value}`,
    testid,
    title: label,
    dataset: { presence: value },
    attrs: { role: "img", "aria-label": label },
  });
}

export class PresenceControl {
  /**
   * select: the <select> of statuses; dot: the element showing the effective presence;
   * note: a small text shown when the presence differs from the chosen status.
   * onError(err): report a failure the control cannot explain itself (e.g. an expired session).
   */
  constructor({ select, dot, note }, { onError }) {
    this.select = select;
    this.dot = dot;
    this.note = note;
    this.onError = onError;
    this.agentId = null;
    this.status = null;
    this.presence = null;
    this.seq = 0;
    this.presenceEvents = 0; // agent.presence_changed events seen, to spot answers older than one
    select.addEventListener("change", () => this.choose(select.value));
  }

  start(agent) {
    this.agentId = agent.id;
    this.status = null;
    this.presence = null;
    this.update(agent);
    if (this.status === null) this.refresh(); // e.g. the sign-in answer did not say
  }

  async refresh() {
    const seq = this.seq;
    const events = this.presenceEvents;
    try {
      const { agent } = await api.me();
      if (seq !== this.seq || !agent) return;
      // The inbox's own socket may have made the agent available while the request was out.
      const presence = events === this.presenceEvents ? agent.presence : null;
      this.update({ id: agent.id, status: agent.status, presence });
    } catch {
      /* the selector stays at "Status…" until an event or the agent says */
    }
  }

  stop() {
    this.agentId = null;
    this.seq += 1;
  }

  /** Take status/presence from any agent JSON about this agent (me, hello frame, lists). */
  update(agent) {
    if (!agent || agent.id !== this.agentId) return;
    this.status = known(agent.status) || this.status;
    this.presence = known(agent.presence) || this.presence;
    this.render();
  }

  /** agents: a GET /api/agents list or an agents.updated payload; picks this agent's row. */
  fromAgents(agents) {
    const mine = (agents || []).find((a) => a.id === this.agentId);
    if (mine) this.update(mine);
  }

  onEvent(event) {
    if (event.agent_id == null || Number(event.agent_id) !== this.agentId) return;
    const data = event.data || {};
    if (event.type === "agent.presence_changed" && known(data.presence)) {
      this.presenceEvents += 1;
      this.presence = data.presence;
      this.render();
    } else if (event.type === "agent.updated") {
      this.update({ id: this.agentId, status: data.status, presence: data.presence });
    }
  }

  async choose(status) {
    if (!known(status) || status === this.status) return;
    const seq = ++this.seq;
    const previous = this.status;
    this.status = status;
    this.select.disabled = true;
    this.render();
    try {
      const res = await api.setMyStatus(status);
      if (seq !== this.seq) return;
      this.update(res && res.agent ? res.agent : { id: this.agentId, status });
    } catch (err) {
      if (seq !== this.seq) return;
      this.status = previous;
      this.render();
      this.onError(err instanceof ApiError ? err : new ApiError(0, "network_error", String(err)));
    } finally {
      if (seq === this.seq) this.select.disabled = false;
    }
  }

  render() {
    const unknown = this.select.querySelector("option[value='']");
    if (unknown) unknown.hidden = this.status !== null;
    this.select.value = this.status || "";
    this.select.dataset.status = this.status || "unknown";

    // Before the server has said otherwise, the chosen status is the best guess of the presence.
    const presence = this.presence || this.status || "unknown";
    this.dot.className = `presence-dot presence-${presence}`;
    this.dot.dataset.presence = presence;
    const label = PRESENCE_LABELS[presence] || "unknown";
    this.dot.title = `Routing sees you as ${label.toLowerCase()}`;
    this.dot.setAttribute("aria-label", this.dot.title);

    const differs = this.presence && this.status && this.presence !== this.status;
    this.note.hidden = !differs;
    this.note.textContent = differs ? `seen as ${label.toLowerCase()}` : "";
  }
}
