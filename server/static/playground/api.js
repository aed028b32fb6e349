// The gateway's public API (docs/API.md) from the browser: REST with fetch, steps over the WebSocket.
// Every failure becomes an ApiError in the API's own shape (status, code, field, message).

const KEY_STORE = "ivideogpt.api_key";

export class ApiError extends Error {
  constructor({ status = 0, code = "error", field = null, message = "", retry_after = null }) {
    super(message);
    Object.assign(this, { status, code, field, retryAfter: retry_after });
  }
}

async function errorOf(response, what) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    // not JSON (a proxy's page): fall back to the status line
  }
  return new ApiError(body?.error ?? { status: response.status, code: "http_error", message: `${what}: HTTP ${response.status}` });
}

export class Api {
  constructor(base = new URL(".", location.href)) {
    this.base = base; // relative paths: the page works behind a path prefix too
    this.key = localStorage.getItem(KEY_STORE) || "";
  }

  setKey(key) {
    this.key = key;
    if (key) localStorage.setItem(KEY_STORE, key);
    else localStorage.removeItem(KEY_STORE);
  }

  headers(extra = {}) {
    return this.key ? { ...extra, Authorization: `Bearer ${this.key}` } : extra;
  }

  async request(method, path, body = undefined, init = {}) {
    const what = `${method} /${path}`;
    const headers = this.headers(body === undefined ? {} : { "Content-Type": "application/json" });
    let response;
    try {
      response = await fetch(new URL(path, this.base), {
        method, headers, body: body === undefined ? undefined : JSON.stringify(body), ...init,
      });
    } catch (exc) {
      throw new ApiError({ code: "unreachable", message: `${what}: ${exc.message} (is the gateway running?)` });
    }
    if (!response.ok) throw await errorOf(response, what);
    return response;
  }

  async json(method, path, body) {
    const response = await this.request(method, path, body);
    return response.status === 204 ? null : response.json();
  }

  models() { return this.json("GET", "v1/models"); }
  sampleEpisodes() { return this.json("GET", "v1/sample_episodes"); }
  sampleContext(episode, start) { return this.json("GET", `v1/sample_context?episode=${episode}&start=${start}`); }
  createSession(contextFrames, sampling) { return this.json("POST", "v1/sessions", { context_frames: contextFrames, sampling }); }
  imagine(id, actionSequences, returnFrames) {
    return this.json("POST", `v1/sessions/${id}/imagine`, { action_sequences: actionSequences, return_frames: returnFrames });
  }
  plan(id, body) { return this.json("POST", `v1/sessions/${id}/plan`, body); }
  async renderGif(body) { return (await this.request("POST", "v1/render/gif", body)).blob(); }
  deleteSession(id, keepalive = false) { return this.request("DELETE", `v1/sessions/${id}`, undefined, { keepalive }); }

  // whether the API offers an operation (the OpenAPI schema is the API's own description of itself)
  async offers(method, path) {
    const schema = await this.json("GET", "openapi.json");
    return Boolean(schema.paths?.[path]?.[method]);
  }

  stream(id) {
    const url = new URL(`v1/sessions/${id}/stream`, this.base);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    if (this.key) url.searchParams.set("api_key", this.key); // browsers cannot set headers on a WebSocket
    return new StepStream(url);
  }
}

// One WebSocket per session, one step request in flight at a time: frames come one message each as
// soon as they are decoded, then a "done" message (docs/API.md, WebSocket).
export class StepStream {
  constructor(url) {
    this.url = url;
    this.pending = null;
    this.failure = null; // the error that ended the socket (sent by the gateway before it closes, or ours)
    this.ws = new WebSocket(url);
    this.opened = new Promise((resolve, reject) => {
      this.ws.onopen = () => resolve();
      this.ws.onerror = () => reject(this.fail({ code: "websocket", message: "WebSocket connection failed" }));
    });
    this.opened.catch(() => {}); // a failure is also reported to the step that waits on it
    this.ws.onmessage = (event) => this.receive(JSON.parse(event.data));
    this.ws.onclose = (event) => {
      this.fail({ code: "websocket_closed", message: `WebSocket closed (${event.code}${event.reason ? ` ${event.reason}` : ""})` });
    };
  }

  get closed() { return this.failure !== null; }

  fail(error) {
    this.failure ??= new ApiError(error);
    if (this.pending) {
      this.pending.reject(this.failure);
      this.pending = null;
    }
    return this.failure;
  }

  receive(msg) {
    if (msg.type === "error") {
      const error = new ApiError(msg.error);
      if (this.pending) {
        this.pending.reject(error);
        this.pending = null;
      } else {
        this.failure ??= error; // at connect (bad key, unknown session): the socket closes next
      }
    } else if (msg.type === "frame") {
      this.pending?.onFrame(msg);
    } else if (msg.type === "done") {
      this.pending?.resolve(msg);
      this.pending = null;
    }
  }

  async step(actions, stepIndex, onFrame) {
    await this.opened;
    if (this.failure) throw this.failure;
    return new Promise((resolve, reject) => {
      this.pending = { resolve, reject, onFrame };
      this.ws.send(JSON.stringify({ actions, step_index: stepIndex }));
    });
  }

  close() {
    this.ws.onclose = null;
    this.ws.close();
  }
}
