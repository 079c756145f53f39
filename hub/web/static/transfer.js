// The transfer dialog: move a conversation to another agent or into a queue
// (POST /api/conversations/{id}/transfer). Supervisors and the conversation's assignee may do it.
// The server decides whether the target can take it; its refusal (409 no_capacity, conflict) is
// shown in the dialog, which stays open so another target can be tried.

import { api, ApiError } from "./api.js";
import { fill, h, toast } from "./dom.js";
import { PRESENCE_LABELS } from "./presence.js";

/**
 * Agents and queues to offer as targets. Supervisors get the queues and the agents' overview
 * (presence and load beside each name); anyone else the plain agent list, plus the conversation's
 * own queue when it has one ("back to its queue").
 */
export async function loadTargets(isSupervisor) {
  const quietly = (promise, key) =>
    promise.then((res) => (res && res[key]) || []).catch((err) => {
      if (err instanceof ApiError && err.status === 401) throw err;
      return [];
    });
  const [agents, queues] = await Promise.all([
    quietly(isSupervisor ? api.agentsOverview() : api.agents(), "agents"),
    isSupervisor ? quietly(api.queues(), "queues") : Promise.resolve([]),
  ]);
  return { agents, queues };
}

/**
 * conversation: {id, queue, assignee_id}; title: what to call it in the dialog.
 * targets(): a promise of {agents, queues}. onDone(conversation) after a transfer;
 * onError(err) for what the dialog cannot show (an ended session).
 */
export function openTransfer({ conversation, title, targets, onDone, onError }) {
  const select = h("select", { id: "transfer-target", testid: "transfer-target", required: true, disabled: true });
  const error = h("p", { class: "dialog-error", testid: "transfer-error", hidden: true, attrs: { role: "alert" } });
  const submit = h("button", { type: "submit", class: "btn btn-primary btn-small", testid: "transfer-submit", disabled: true }, "Transfer");
  const cancel = h("button", { type: "button", class: "btn btn-secondary btn-small", testid: "transfer-cancel" }, "Cancel");
  const form = h(
    "form",
    { class: "dialog-body", method: "dialog" },
    h("h2", { class: "dialog-title", id: "transfer-title" }, "Transfer conversation"),
    h("p", { class: "dialog-subtitle" }, title),
    h("label", { class: "field", htmlFor: "transfer-target" }, h("span", {}, "Transfer to"), select),
    error,
    h("div", { class: "dialog-actions" }, cancel, submit),
  );
  const dialog = h("dialog", { class: "dialog", testid: "transfer-dialog", attrs: { "aria-labelledby": "transfer-title" } }, form);
  document.body.appendChild(dialog);
  dialog.addEventListener("close", () => dialog.remove());
  cancel.addEventListener("click", () => dialog.close());
  dialog.showModal();

  const showError = (text) => {
    error.textContent = text;
    error.hidden = !text;
  };

  fill(select, h("option", { value: "" }, "Loading…"));
  targets()
    .then(({ agents, queues }) => {
      const options = targetOptions(conversation, agents, queues);
      if (!options.length) {
        fill(select, h("option", { value: "" }, "No agent or queue to transfer to"));
        return;
      }
      fill(select, h("option", { value: "", disabled: true, selected: true }, "Choose an agent or a queue…"), options);
      select.disabled = false;
      submit.disabled = false;
      select.focus();
    })
    .catch((err) => {
      dialog.close();
      onError(err);
    });

  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const colon = select.value.indexOf(":"); // "agent:<id>" or "queue:<name>"; names may hold colons
    const kind = select.value.slice(0, colon);
    const value = colon > 0 ? select.value.slice(colon + 1) : "";
    if (!value) {
      showError("Choose an agent or a queue.");
      return;
    }
    const target = kind === "agent" ? { agent_id: Number(value) } : { queue: value };
    const label = select.selectedOptions[0] ? select.selectedOptions[0].dataset.name : value;
    submit.disabled = true;
    showError("");
    try {
      const res = await api.transfer(conversation.id, target);
      dialog.close();
      toast(`Transferred to ${label}.`, "info", 3000);
      onDone((res && res.conversation) || null);
    } catch (err) {
      if (err instanceof ApiError && err.status !== 401) showError(err.humanText);
      else {
        dialog.close();
        onError(err);
      }
    } finally {
      submit.disabled = false;
    }
  });
}

function targetOptions(conversation, agents, queues) {
  const groups = [];
  const queueNames = queues.map((q) => q.name);
  if (conversation.queue && !queueNames.includes(conversation.queue)) queueNames.unshift(conversation.queue);
  if (queueNames.length) {
    groups.push(
      h(
        "optgroup",
        { label: "Queues" },
        queueNames.map((name) => {
          const q = queues.find((x) => x.name === name);
          const waiting = q && Number.isFinite(q.waiting) ? ` (${q.waiting} waiting)` : "";
          const back = name === conversation.queue ? " — back to its queue" : "";
          return h("option", { value: `queue:${name}`, dataset: { name } }, `${name}${waiting}${back}`);
        }),
      ),
    );
  }
  const others = agents.filter((a) => a.id !== conversation.assignee_id && a.active !== false);
  if (others.length) {
    groups.push(
      h(
        "optgroup",
        { label: "Agents" },
        others.map((a) => {
          const details = [];
          if (PRESENCE_LABELS[a.presence]) details.push(PRESENCE_LABELS[a.presence].toLowerCase());
          if (Number.isFinite(a.load) && Number.isFinite(a.capacity)) details.push(`${a.load}/${a.capacity}`);
          const name = a.name || a.email;
          return h(
            "option",
            { value: `agent:${a.id}`, dataset: { name } },
            details.length ? `${name} (${details.join(", ")})` : name,
          );
        }),
      ),
    );
  }
  return groups;
}
