// The inbox's live connection to /api/live.
//
// The socket authenticates with the session cookie (same origin). It reconnects with exponential
// back-off and jitter; events missed while it was down are not replayed, so every reconnect after
// the first open is reported to the caller, which refetches what it shows.

const MIN_DELAY_MS = 500;
const MAX_DELAY_MS = 15_000;
const PING_EVERY_MS = 25_000;
const UNAUTHORIZED_CLOSE_CODE = 4401;

export function liveUrl(loc = window.location) {
  const scheme = loc.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${loc.host}/api/live`;
}

export class LiveSocket {
  /**
   * handlers.onFrame(frame)          every JSON frame from the server
   * handlers.onState(state)          "connecting" | "open" | "closed"
   * handlers.onReconnect()           opened again after a drop: state may have been missed
   * handlers.onHandshakeFailed(n)    n consecutive attempts never opened (maybe the session expired)
   * handlers.onUnauthorized()        the server closed with 4401: the session expired or was revoked
   */
  constructor(url, handlers) {
    this.url = url;
    this.handlers = handlers;
    this.ws = null;
    this.stopped = true;
    this.everOpened = false;
    this.failures = 0;
    this.retryTimer = null;
    this.pingTimer = null;
  }

  start() {
    if (!this.stopped) return;
    this.stopped = false;
    this.connect();
    window.addEventListener("online", this.onOnline);
  }

  stop() {
    this.stopped = true;
    window.removeEventListener("online", this.onOnline);
    clearTimeout(this.retryTimer);
    clearInterval(this.pingTimer);
    if (this.ws) {
      const ws = this.ws;
      this.ws = null;
      ws.onclose = ws.onerror = ws.onmessage = ws.onopen = null;
      ws.close(1000);
    }
    this.everOpened = false;
    this.failures = 0;
  }

  /** Send a frame if connected; frames are signals, so nothing is queued while down. */
  send(frame) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) {
      this.ws.send(JSON.stringify(frame));
      return true;
    }
    return false;
  }

  onOnline = () => {
    if (!this.stopped && !this.ws) {
      clearTimeout(this.retryTimer);
      this.connect();
    }
  };

  connect() {
    this.handlers.onState?.("connecting");
    let opened = false;
    const ws = new WebSocket(this.url);
    this.ws = ws;
    ws.onopen = () => {
      opened = true;
      this.failures = 0;
      this.handlers.onState?.("open");
      if (this.everOpened) this.handlers.onReconnect?.();
      this.everOpened = true;
      clearInterval(this.pingTimer);
      this.pingTimer = setInterval(() => this.send({ type: "ping" }), PING_EVERY_MS);
    };
    ws.onmessage = (e) => {
      let frame;
      try {
        frame = JSON.parse(e.data);
      } catch {
        return;
      }
      if (frame && typeof frame.type === "string") this.handlers.onFrame?.(frame);
    };
    ws.onclose = (e) => {
      clearInterval(this.pingTimer);
      if (this.ws === ws) this.ws = null;
      if (this.stopped) return;
      if (e.code === UNAUTHORIZED_CLOSE_CODE) this.handlers.onUnauthorized?.();
      if (this.stopped) return;
      this.handlers.onState?.("closed");
      this.failures += 1;
      if (!opened) this.handlers.onHandshakeFailed?.(this.failures);
      if (this.stopped) return;
      const base = Math.min(MAX_DELAY_MS, MIN_DELAY_MS * 2 ** Math.min(this.failures - 1, 10));
      const delay = base / 2 + Math.random() * (base / 2);
      this.retryTimer = setTimeout(() => this.connect(), delay);
    };
  }
}
