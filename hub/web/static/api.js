// REST client for the agent API. The session lives in the HttpOnly `hub_session` cookie, so every
// request is same-origin with credentials; no token is kept in script-readable storage.

export class ApiError extends Error {
  constructor(status, error, detail) {
    super(detail || error || `HTTP ${status}`);
    this.status = status;
    this.error = error || `http_${status}`;
    this.detail = detail || "";
  }

  /** What a person should read in a toast. */
  get humanText() {
    if (this.status === 0) return "The hub cannot be reached. Check your connection.";
    return this.detail || this.error.replaceAll("_", " ");
  }
}

async function request(method, path, body) {
  const init = { method, credentials: "same-origin", headers: { Accept: "application/json" } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (err) {
    throw new ApiError(0, "network_error", String(err && err.message ? err.message : err));
  }
  if (response.status === 204) return null;
  let payload = null;
  const text = await response.text();
  if (text) {
    try {
      payload = JSON.parse(text);
    } catch {
      payload = null;
    }
  }
  if (!response.ok) {
    const error = payload && typeof payload.error === "string" ? payload.error : null;
    const detail = payload && typeof payload.detail === "string" ? payload.detail : response.statusText;
    throw new ApiError(response.status, error, detail);
  }
  return payload;
}

function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== "") q.set(k, String(v));
  const s = q.toString();
  return s ? `?${s}` : "";
}

const id = (n) => encodeURIComponent(String(n));

export const api = {
  login: (email, password) => request("POST", "/api/session", { email, password }),
  logout: () => request("DELETE", "/api/session"),
  me: () => request("GET", "/api/me"),
  /** Every agent's name, for assigning. */
  agents: () => request("GET", "/api/agents"),
  /** Supervisors: agents with presence, load, conversations and skills (the agents.updated payload). */
  agentsOverview: () => request("GET", "/api/agents/overview"),
  setMyStatus: (status) => request("PUT", "/api/agents/me/status", { status }),
  queues: () => request("GET", "/api/queues"),
  conversations: (params) => request("GET", `/api/conversations${query(params)}`),
  conversation: (cid) => request("GET", `/api/conversations/${id(cid)}`),
  updateConversation: (cid, changes) => request("PATCH", `/api/conversations/${id(cid)}`, changes),
  reply: (cid, text) => request("POST", `/api/conversations/${id(cid)}/messages`, { text }),
  note: (cid, text) => request("POST", `/api/conversations/${id(cid)}/notes`, { text }),
  /** target: {agent_id: n} or {queue: "name"} */
  transfer: (cid, target) => request("POST", `/api/conversations/${id(cid)}/transfer`, target),
  acceptOffer: (cid, version) => request("POST", `/api/conversations/${id(cid)}/accept`, { version }),
  declineOffer: (cid, version) => request("POST", `/api/conversations/${id(cid)}/decline`, { version }),
  contact: (contactId) => request("GET", `/api/contacts/${id(contactId)}`),
  contactTimeline: (contactId, params) =>
    request("GET", `/api/contacts/${id(contactId)}/timeline${query(params)}`),
};
