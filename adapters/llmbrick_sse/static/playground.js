// The llmbrick playground: plain JavaScript, no dependencies, no build step.
//
// The page is served with a Content-Security-Policy that runs only this same-origin file.
// Rule for everything below: server text (events, errors, flow names and descriptions)
// reaches the page only through textContent, Text nodes and attribute values set from
// code; nothing is ever parsed as HTML, so a flow that yields markup shows markup.
"use strict";

const $ = (id) => document.getElementById(id);

/** Where the app serves each API (filled in by the server, see playground.py). */
const paths = {
  flows: document.body.dataset.flowsPath,
  sse: document.body.dataset.ssePath,
  ws: document.body.dataset.wsPath,
  ui: document.body.dataset.uiPath || null,
  streams: document.body.dataset.streamsPath,
};

/** Events shown in the list of one run; beyond this they are counted, not drawn. */
const MAX_SHOWN = 1000;
const TERMINAL = new Set(["done", "error"]);

const state = {
  flows: [],
  flow: null, // the chosen flow's description from GET /flows
  chat: false, // whether it takes chat messages
  resumable: false, // GET /flows says the server keeps streams
  conversation: [], // [{role, content}] sent with the next chat request
  chatId: newId("chat"),
  run: null, // the run in progress, if any
};

// --- DOM helpers -----------------------------------------------------------------------

/** An element with attributes (set from code, never from server text) and children. */
function h(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    node.setAttribute(name, value === true ? "" : String(value));
  }
  // Strings become Text nodes: append() never parses markup.
  node.append(...children.filter((child) => child !== null && child !== undefined));
  return node;
}

function newId(prefix) {
  return `${prefix}-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 10)}`;
}

function notice(text, isError = false) {
  const node = $("notice");
  node.hidden = !text;
  node.textContent = text || "";
  node.classList.toggle("error", isError);
}

function apiKey() {
  return $("api-key").value.trim();
}

function authHeaders() {
  const key = apiKey();
  return key ? { authorization: `Bearer ${key}` } : {};
}

/** The error of a failed HTTP response: llmbrick's {"error": {code, message}} when it is one. */
async function httpError(response) {
  let error = { code: `HTTP ${response.status}`, message: response.statusText || "request failed" };
  try {
    const body = await response.json();
    if (body && typeof body.error === "object" && body.error) error = body.error;
  } catch {
    // not JSON: keep the status line
  }
  return { ...error, status: response.status };
}

function describeError(error) {
  const status = error.status ? `${error.status} ` : "";
  return `${status}${error.code || "ERROR"}: ${error.message || ""}`;
}

// --- Flows -------------------------------------------------------------------------------

async function loadFlows() {
  let response;
  try {
    response = await fetch(paths.flows, { headers: authHeaders() });
  } catch (err) {
    notice(`Cannot reach the server: ${err.message}`, true);
    return;
  }
  if (!response.ok) {
    const error = await httpError(response);
    const hint = response.status === 401 ? " (enter an API key above)" : "";
    notice(describeError(error) + hint, true); // flows listed before stay listed
    return;
  }
  const body = await response.json();
  state.resumable = body.resumable === true;
  Resume.showControls();
  notice("");
  showFlows(Array.isArray(body.flows) ? body.flows : []);
}

function showFlows(flows) {
  state.flows = flows;
  const select = $("flow");
  const previous = select.value;
  select.replaceChildren(...flows.map((flow) => h("option", { value: flow.name }, flow.name)));
  const names = flows.map((flow) => flow.name);
  select.value = names.includes(previous) ? previous : names.includes("default") ? "default" : names[0] || "";
  chooseFlow(select.value);
}

function chooseFlow(name) {
  const flow = state.flows.find((item) => item.name === name) || null;
  state.flow = flow;
  const schema = (flow && flow.requestSchema) || {};
  const properties = schema.properties || {};
  state.chat = "messages" in properties;
  $("flow-description").textContent = flow ? flow.description || "" : "No flows to show.";
  $("chat").hidden = !state.chat;
  $("options").open = !state.chat;
  $("options-title").textContent = state.chat ? "More request fields" : "Request fields";
  const skip = new Set(["flow", "stream", ...(state.chat ? ["messages"] : [])]);
  buildFields(schema, skip);
  // The UI message stream carries chat messages only, and only where it is mounted.
  const ui = $("transport").querySelector('option[value="ui"]');
  ui.disabled = !state.chat || !paths.ui;
  ui.hidden = !paths.ui;
  if ($("transport").selectedOptions[0]?.disabled) $("transport").value = "sse";
  $("send").disabled = !flow || Boolean(state.run);
}

// --- A form from a JSON schema ---------------------------------------------------------

/** The schema behind $ref and Optional (anyOf with null), keeping the outer title and default. */
function resolveSchema(schema, root, depth = 0) {
  if (!schema || typeof schema !== "object" || depth > 8) return {};
  if (typeof schema.$ref === "string") {
    const name = schema.$ref.split("/").pop();
    const target = resolveSchema(((root.$defs || {})[name]) || {}, root, depth + 1);
    return { ...target, ...pick(schema, ["title", "description", "default"]) };
  }
  for (const key of ["anyOf", "oneOf"]) {
    if (!Array.isArray(schema[key])) continue;
    const options = schema[key].filter((option) => option && option.type !== "null");
    if (options.length === 1) {
      const inner = resolveSchema(options[0], root, depth + 1);
      return { ...inner, ...pick(schema, ["title", "description", "default"]) };
    }
    return { ...pick(schema, ["title", "description", "default"]), type: "json" };
  }
  return schema;
}

function pick(object, keys) {
  const picked = {};
  for (const key of keys) if (key in object) picked[key] = object[key];
  return picked;
}

function buildFields(schema, skip) {
  const required = new Set(schema.required || []);
  const fields = [];
  for (const [name, raw] of Object.entries(schema.properties || {})) {
    if (skip.has(name)) continue;
    fields.push(field(name, resolveSchema(raw, schema), required.has(name)));
  }
  $("fields").replaceChildren(...fields);
  if (!fields.length) $("fields").append(h("p", { class: "hint" }, "No other fields."));
}

function field(name, schema, required) {
  const type = Array.isArray(schema.type) ? schema.type.find((t) => t !== "null") : schema.type;
  const hasDefault = "default" in schema && schema.default !== null;
  const placeholder = hasDefault ? `default: ${JSON.stringify(schema.default)}` : required ? "required" : "";
  let control;
  let kind;
  if (Array.isArray(schema.enum)) {
    kind = "enum";
    control = h("select", {}, h("option", { value: "" }, placeholder || "(not set)"),
      ...schema.enum.map((value) => h("option", { value: JSON.stringify(value) }, String(value))));
  } else if (type === "boolean") {
    kind = "boolean";
    control = h("select", {}, h("option", { value: "" }, placeholder || "(not set)"),
      h("option", { value: "true" }, "true"), h("option", { value: "false" }, "false"));
  } else if (type === "integer" || type === "number") {
    kind = "number";
    control = h("input", {
      type: "number", step: type === "integer" ? "1" : "any", placeholder,
      min: schema.minimum ?? schema.exclusiveMinimum, max: schema.maximum ?? schema.exclusiveMaximum,
    });
  } else if (type === "string") {
    kind = "string";
    control = h("input", { type: "text", placeholder });
  } else {
    kind = "json"; // arrays, objects, unions: typed as JSON
    control = h("textarea", { rows: 2, placeholder: placeholder || "JSON", spellcheck: "false" });
  }
  control.dataset.field = name;
  control.dataset.kind = kind;
  control.id = `field-${name}`;
  return h("label", { title: schema.description || "" },
    `${schema.title || name}${required ? " *" : ""}${kind === "json" ? " (JSON)" : ""}`, control);
}

/** The form's values; an empty control leaves the field to the flow's default. */
function fieldValues() {
  const values = {};
  for (const control of $("fields").querySelectorAll("[data-field]")) {
    const { field: name, kind } = control.dataset;
    const raw = control.value;
    if (raw.trim() === "") continue;
    if (kind === "number") values[name] = Number(raw);
    else if (kind === "boolean") values[name] = raw === "true";
    else if (kind === "enum") values[name] = JSON.parse(raw);
    else if (kind === "json") {
      try {
        values[name] = JSON.parse(raw);
      } catch (err) {
        throw new Error(`${name} is not valid JSON: ${err.message}`);
      }
    } else values[name] = raw;
  }
  return values;
}

// --- Chat ------------------------------------------------------------------------------

function showConversation() {
  $("conversation").replaceChildren(...state.conversation.map((message) =>
    h("li", { class: message.role, "data-role": message.role }, message.content)));
}

// --- One run: a request and the events it streams --------------------------------------

class Run {
  constructor(transport) {
    this.transport = transport;
    this.sentAt = performance.now();
    this.firstAt = null;
    this.count = 0;
    this.shown = 0;
    this.lastEventId = null;
    this.streamId = null;
    this.ended = false;
    this.status = null;
    this.text = "";
    this.failure = null; // an UI stream's error chunk, until its finish
    this.stop = null; // set by the transport
    this.drop = null; // set by the transport when the server keeps streams
    this.stopping = false;
    this.dropping = false;
    this.textNode = document.createTextNode("");
    this.statsQueued = false;
    this.done = new Promise((resolve) => { this.resolve = resolve; });
    $("answer").replaceChildren(this.textNode);
    $("events").replaceChildren();
    $("error").hidden = true;
    $("error").textContent = "";
    $("stream-id").textContent = "–";
    this.setStatus("connecting");
    this.renderStats();
  }

  setStatus(status) {
    this.status = status;
    $("status").textContent = status;
    $("status").dataset.state = status;
  }

  setStreamId(id) {
    if (!id) return;
    this.streamId = id;
    $("stream-id").textContent = id;
  }

  /** One llmbrick event (SSE data, a WebSocket frame's event). */
  onEvent(event) {
    if (this.ended || !event || typeof event !== "object") return;
    // A resumed stream may replay events this page already has: ids rise within a stream.
    if (event.id !== undefined && this.lastEventId !== null
        && Number(event.id) <= Number(this.lastEventId)) return;
    if (event.id !== undefined) this.lastEventId = event.id;
    this.arrived();
    if (event.type === "text" && typeof event.text === "string") this.appendText(event.text);
    else this.fold(event.type, event, event.id);
    if (event.type === "done") this.end("done");
    else if (event.type === "error") {
      const error = event.error || { code: "INTERNAL", message: "" };
      this.end(error.code === "CANCELLED" ? "cancelled" : "error", error);
    }
  }

  /** One chunk of the AI SDK's UI message stream. */
  onChunk(chunk) {
    if (this.ended || !chunk || typeof chunk !== "object") return;
    this.arrived();
    if (chunk.type === "text-delta" && typeof chunk.delta === "string") this.appendText(chunk.delta);
    else this.fold(chunk.type, chunk, null);
    if (chunk.type === "error") {
      const text = String(chunk.errorText || "");
      const split = text.match(/^([A-Z_]+): ([\s\S]*)$/);
      this.failure = split ? { code: split[1], message: split[2] } : { code: "ERROR", message: text };
    }
    if (chunk.type === "finish") this.end(this.failure ? "error" : "done", this.failure);
  }

  arrived() {
    const now = performance.now();
    if (this.firstAt === null) {
      this.firstAt = now;
      this.setStatus("streaming");
    }
    this.lastAt = now;
    this.count += 1;
    this.queueStats();
  }

  appendText(text) {
    this.text += text;
    this.textNode.appendData(text);
  }

  /** A non-text event, folded: its number and type, the JSON inside. */
  fold(type, payload, id) {
    if (this.shown >= MAX_SHOWN) return;
    this.shown += 1;
    const at = Math.round(performance.now() - this.sentAt);
    const label = `${id !== null && id !== undefined ? `#${id} ` : ""}${type} · ${at} ms`;
    const item = h("li", { class: "event" },
      h("details", {}, h("summary", {}, label), h("pre", {}, JSON.stringify(payload, null, 2))));
    item.dataset.type = String(type);
    $("events").append(item);
  }

  /** A line in the event list about the connection itself (dropped, resumed). */
  marker(text) {
    $("events").append(h("li", { class: "marker" }, text));
  }

  queueStats() {
    if (this.statsQueued) return;
    this.statsQueued = true;
    requestAnimationFrame(() => {
      this.statsQueued = false;
      this.renderStats();
    });
  }

  renderStats() {
    $("count").textContent = String(this.count);
    $("ttfe").textContent = this.firstAt === null ? "–" : `${Math.round(this.firstAt - this.sentAt)} ms`;
    const seconds = this.firstAt === null ? 0 : (this.lastAt - this.firstAt) / 1000;
    $("rate").textContent = this.count > 1 && seconds > 0 ? (this.count - 1) / seconds >= 100
      ? String(Math.round((this.count - 1) / seconds)) : ((this.count - 1) / seconds).toFixed(1) : "–";
  }

  /** The run is over: done, error or cancelled; nothing more is shown for it. */
  end(status, error) {
    if (this.ended) return;
    this.ended = true;
    this.setStatus(status);
    this.renderStats();
    if (error && status !== "done") {
      $("error").hidden = false;
      $("error").textContent = describeError(error);
    }
    this.resolve(status);
  }

  /** The connection failed: a stop or a drop we asked for, or a real failure. */
  lost(err) {
    if (this.stopping) {
      this.end("cancelled", { code: "CANCELLED", message: "stopped; the server cancels the flow when the connection closes" });
    } else {
      this.end("error", { code: "UNAVAILABLE", message: `the connection failed: ${err && err.message ? err.message : err}` });
    }
  }
}

// --- Reading an event stream from a fetch response -------------------------------------

/** Calls onFrame({event, id, data}) for each SSE frame with data; comments are skipped. */
async function readEventStream(body, onFrame, run) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  try {
    while (!run.ended) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      let end;
      while ((end = buffer.search(/\r\n\r\n|\n\n|\r\r/)) >= 0) {
        const separator = buffer.startsWith("\r\n\r\n", end) ? 4 : 2;
        const frame = parseFrame(buffer.slice(0, end));
        buffer = buffer.slice(end + separator);
        if (frame) onFrame(frame);
        if (run.ended) return;
      }
    }
  } finally {
    reader.cancel().catch(() => {});
  }
}

function parseFrame(block) {
  const frame = { event: "message", id: null, data: [] };
  for (const line of block.split(/\r\n|\n|\r/)) {
    if (!line || line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const name = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (name === "data") frame.data.push(value);
    else if (name === "event") frame.event = value;
    else if (name === "id") frame.id = value;
  }
  return frame.data.length ? { ...frame, data: frame.data.join("\n") } : null;
}

// --- Transport: SSE over fetch ---------------------------------------------------------

async function runFetch(run, body) {
  let where = null; // the resumable stream's Location, when the server keeps streams
  let request = (signal) => fetch(paths.sse, {
    method: "POST",
    headers: { "content-type": "application/json", accept: "text/event-stream", ...authHeaders() },
    body: JSON.stringify(body),
    signal,
  });
  for (;;) {
    const controller = new AbortController();
    run.stop = () => {
      run.stopping = true;
      if (where) Resume.cancel(where).finally(() => controller.abort());
      else controller.abort(); // the server cancels the flow when the connection closes
    };
    let response;
    try {
      response = await request(controller.signal);
    } catch (err) {
      return run.lost(err);
    }
    if (!response.ok) return run.end("error", await httpError(response));
    run.setStreamId(response.headers.get("x-llmbrick-stream-id"));
    where = where || response.headers.get("location");
    if (where) run.drop = Resume.dropper(run, () => controller.abort());
    try {
      await readEventStream(response.body, (frame) => run.onEvent(JSON.parse(frame.data)), run);
    } catch (err) {
      if (!run.dropping) return run.lost(err);
    }
    if (run.ended) return;
    if (!run.dropping) {
      return run.end("error", { code: "UNAVAILABLE", message: "the stream ended before its terminal event" });
    }
    // Dropped on purpose: come back for what follows the last event this page has.
    request = Resume.fetchAfter(run, where);
  }
}

// --- Transport: WebSocket --------------------------------------------------------------

const sockets = {
  socket: null,
  key: null,
  runs: new Map(), // client stream id -> Run
  next: 0,
};

/** A WebSocket offering the API key as a subprotocol (a browser cannot set headers on one). */
function openSocket() {
  const key = apiKey();
  const open = sockets.socket;
  if (open && open.readyState === WebSocket.OPEN && sockets.key === key) return Promise.resolve(open);
  if (open && open.readyState <= WebSocket.OPEN) open.close(1000, "replaced");
  const scheme = window.location.protocol === "https:" ? "wss" : "ws";
  const url = `${scheme}://${window.location.host}${paths.ws}`;
  const protocols = key ? ["llmbrick", `llmbrick.bearer.${key}`] : ["llmbrick"];
  return new Promise((resolve, reject) => {
    let socket;
    try {
      socket = new WebSocket(url, protocols);
    } catch (err) {
      reject({ code: "INVALID_ARGUMENT", message: `this API key cannot be offered on a WebSocket (${err.message})` });
      return;
    }
    sockets.socket = socket;
    sockets.key = key;
    let opened = false;
    socket.onopen = () => {
      opened = true;
      resolve(socket);
    };
    socket.onmessage = (message) => onSocketFrame(message.data);
    socket.onclose = (close) => {
      if (sockets.socket === socket) sockets.socket = null;
      if (!opened) {
        // The handshake was refused; the browser does not say why, GET /flows does.
        whyRefused().then(reject);
        return;
      }
      for (const [id, run] of sockets.runs) {
        if (run.socket !== socket) continue;
        sockets.runs.delete(id);
        if (run.dropping) continue; // Resume takes it from here
        run.end("error", { code: "UNAVAILABLE", message: `the WebSocket closed (code ${close.code}) before the stream ended` });
      }
    };
  });
}

async function whyRefused() {
  try {
    const response = await fetch(paths.flows, { headers: authHeaders() });
    if (!response.ok) return await httpError(response);
  } catch {
    // fall through to the general explanation
  }
  return { code: "UNAVAILABLE", message: "the server refused the WebSocket connection (check its allowed origins and the API key)" };
}

function onSocketFrame(data) {
  let frame;
  try {
    frame = JSON.parse(data);
  } catch {
    return;
  }
  const run = sockets.runs.get(frame.id);
  if (frame.type === "started") {
    if (run) run.setStreamId(frame.streamId);
    return;
  }
  if (frame.type === "error") { // a frame the server could not act on
    if (run) {
      sockets.runs.delete(frame.id);
      run.end("error", frame.error);
    } else {
      notice(`WebSocket: ${describeError(frame.error || {})}`, true);
    }
    return;
  }
  if (!run || !frame.event) return;
  run.onEvent(frame.event);
  if (TERMINAL.has(frame.event.type)) sockets.runs.delete(frame.id);
}

async function runSocket(run, body) {
  let socket;
  try {
    socket = await openSocket();
  } catch (error) {
    return run.end("error", error);
  }
  const id = `s${++sockets.next}`;
  run.socket = socket;
  run.socketId = id;
  sockets.runs.set(id, run);
  run.stop = () => {
    run.stopping = true;
    // The stream's terminal CANCELLED event comes back once the flow has stopped.
    if (run.socket.readyState === WebSocket.OPEN) run.socket.send(JSON.stringify({ type: "cancel", id: run.socketId }));
  };
  if (state.resumable) run.drop = Resume.socketDropper(run);
  socket.send(JSON.stringify({ type: "start", id, request: body }));
  await run.done;
}

// --- Transport: the AI SDK's UI message stream -----------------------------------------

async function runUi(run, body) {
  const { messages, ...fields } = body;
  const request = {
    ...fields,
    id: state.chatId,
    messages: messages.map((message, index) => ({
      id: `${state.chatId}-${index}`,
      role: message.role,
      parts: [{ type: "text", text: message.content }],
    })),
    trigger: "submit-message",
  };
  const controller = new AbortController();
  run.stop = () => {
    run.stopping = true;
    controller.abort(); // the server cancels the flow when the connection closes
  };
  let response;
  try {
    response = await fetch(paths.ui, {
      method: "POST",
      headers: { "content-type": "application/json", ...authHeaders() },
      body: JSON.stringify(request),
      signal: controller.signal,
    });
  } catch (err) {
    return run.lost(err);
  }
  if (!response.ok) return run.end("error", await httpError(response));
  run.setStreamId(response.headers.get("x-llmbrick-stream-id"));
  try {
    await readEventStream(response.body, (frame) => {
      if (frame.data !== "[DONE]") run.onChunk(JSON.parse(frame.data));
    }, run);
  } catch (err) {
    return run.lost(err);
  }
  if (!run.ended) run.end("error", { code: "UNAVAILABLE", message: "the stream ended before its finish chunk" });
}

// --- Resumable streams -----------------------------------------------------------------
// Everything about resuming is here. It follows the resume contract: an SSE response
// names its stream in x-llmbrick-stream-id and, when the server keeps streams, in
// Location (/streams/<id>?token=...); POST /streams starts a detached stream (201
// {streamId, location}); GET <location>[&lastEventId=N] replays, then follows live;
// DELETE <location> cancels; on WebSocket, {"type": "resume", id, streamId, after}
// picks a stream up on a new connection. The controls stay hidden unless GET /flows
// says resumable: true.

const Resume = {
  showControls() {
    for (const node of document.querySelectorAll(".resume-only")) {
      node.hidden = !state.resumable;
      if (node.tagName === "OPTION") node.disabled = !state.resumable;
    }
    if (!state.resumable && $("transport").value === "eventsource") $("transport").value = "sse";
  },

  /** ``where`` with ``lastEventId`` set (same origin, so only path and query are kept). */
  after(where, lastEventId) {
    const url = new URL(where, window.location.href);
    if (lastEventId !== null && lastEventId !== undefined) url.searchParams.set("lastEventId", lastEventId);
    return url.pathname + url.search;
  },

  cancel(where) {
    return fetch(where, { method: "DELETE", headers: authHeaders() });
  },

  /** A drop control for ``run``: marks the drop, then cuts the connection with ``cut``. */
  dropper(run, cut) {
    return () => {
      run.dropping = true;
      run.marker(`connection dropped after event ${run.lastEventId ?? "(none)"}; resuming`);
      cut();
    };
  },

  /** The next request of a fetch run: GET the stream after its last event. */
  fetchAfter(run, where) {
    run.dropping = false;
    return (signal) => fetch(Resume.after(where, run.lastEventId), {
      headers: { accept: "text/event-stream", ...authHeaders() },
      signal,
    });
  },

  /** A detached stream read with EventSource, which reconnects with Last-Event-ID itself. */
  async runEventSource(run, body) {
    let response;
    try {
      response = await fetch(paths.streams, {
        method: "POST",
        headers: { "content-type": "application/json", ...authHeaders() },
        body: JSON.stringify(body),
      });
    } catch (err) {
      return run.lost(err);
    }
    if (response.status !== 201) return run.end("error", await httpError(response));
    const { streamId, location: where } = await response.json();
    run.setStreamId(streamId);
    let source = null;
    const listen = (url) => {
      source = new EventSource(url);
      const current = source;
      const onFrame = (message) => {
        run.onEvent(JSON.parse(message.data));
        if (run.ended) current.close(); // else EventSource would reconnect when the stream closes
      };
      current.addEventListener("message", onFrame);
      current.addEventListener("error", (event) => {
        if (event instanceof MessageEvent && event.data) return onFrame(event); // an llmbrick error event
        if (run.ended || current !== source) return;
        if (current.readyState === EventSource.CLOSED) {
          run.end("error", { code: "UNAVAILABLE", message: "the event stream was refused or closed" });
        } else {
          run.marker("connection lost; EventSource reconnects with Last-Event-ID");
        }
      });
    };
    listen(where);
    run.stop = () => {
      run.stopping = true;
      Resume.cancel(where).finally(() => {
        source.close();
        run.end("cancelled", { code: "CANCELLED", message: "stopped" });
      });
    };
    run.drop = () => {
      run.marker(`connection dropped after event ${run.lastEventId ?? "(none)"}; resuming`);
      source.close();
      listen(Resume.after(where, run.lastEventId));
    };
    await run.done;
  },

  /** A drop control for a WebSocket run: close its socket, resume on a new one. */
  socketDropper(run) {
    return () => {
      Resume.dropper(run, () => run.socket.close(4000, "dropped to show resume"))();
      Resume.resumeSocket(run);
    };
  },

  /** After a WebSocket drop: a new connection, and the stream resumed on it under a new id. */
  async resumeSocket(run) {
    sockets.runs.delete(run.socketId);
    let socket;
    try {
      socket = await openSocket();
    } catch (error) {
      return run.end("error", error);
    }
    run.dropping = false;
    const id = `s${++sockets.next}`;
    run.socket = socket;
    run.socketId = id;
    sockets.runs.set(id, run);
    const after = Number(run.lastEventId ?? 0); // the last event this page has (0: none yet)
    socket.send(JSON.stringify({ type: "resume", id, streamId: run.streamId, after }));
  },
};

// --- Sending ---------------------------------------------------------------------------

const TRANSPORTS = {
  sse: runFetch,
  eventsource: (run, body) => Resume.runEventSource(run, body),
  websocket: runSocket,
  ui: runUi,
};

async function send() {
  if (state.run || !state.flow) return;
  let body;
  try {
    body = { flow: state.flow.name, ...fieldValues() };
  } catch (err) {
    notice(err.message, true);
    return;
  }
  if (state.chat) {
    const text = $("message").value;
    if (!text.trim()) {
      notice("Type a message first.", true);
      return;
    }
    state.conversation.push({ role: "user", content: text });
    $("message").value = "";
    body.messages = state.conversation.map(({ role, content }) => ({ role, content }));
    showConversation();
  }
  notice("");
  $("request-body").textContent = JSON.stringify(body, null, 2);
  const transport = $("transport").value;
  const run = new Run(transport);
  state.run = run;
  setButtons();
  const timer = setInterval(setButtons, 250); // Drop becomes possible once the stream is known
  try {
    await TRANSPORTS[transport](run, body);
    await run.done;
  } catch (err) {
    run.end("error", { code: "INTERNAL", message: `the page failed: ${err.message}` });
  } finally {
    clearInterval(timer);
    if (state.chat && run.text) state.conversation.push({ role: "assistant", content: run.text });
    state.run = null;
    setButtons();
  }
}

function setButtons() {
  const run = state.run;
  $("send").disabled = Boolean(run) || !state.flow;
  $("stop").disabled = !run || run.ended || run.stopping;
  $("drop").disabled = !run || run.ended || !run.drop || run.dropping || !state.resumable;
}

function drop() {
  const run = state.run;
  if (!run || !run.drop || run.ended) return;
  run.drop();
  setButtons();
}

function clear() {
  if (state.run) return;
  state.conversation = [];
  state.chatId = newId("chat");
  showConversation();
  $("answer").replaceChildren();
  $("events").replaceChildren();
  $("error").hidden = true;
  $("request-body").textContent = "";
  $("status").textContent = "idle";
  $("status").dataset.state = "idle";
}

// --- Wiring ----------------------------------------------------------------------------

// The setup fields sit in a form (browsers expect a password field in one); Enter in
// them must not navigate.
$("setup").addEventListener("submit", (event) => event.preventDefault());
$("flow").addEventListener("change", (event) => chooseFlow(event.target.value));
// A new key lists the flows again (the list may need the key): when the field loses
// focus, or once typing pauses.
let keyTimer = null;
$("api-key").addEventListener("change", () => {
  clearTimeout(keyTimer);
  loadFlows();
});
$("api-key").addEventListener("input", () => {
  clearTimeout(keyTimer);
  keyTimer = setTimeout(loadFlows, 400);
});
$("send").addEventListener("click", send);
$("stop").addEventListener("click", () => {
  if (state.run && state.run.stop && !state.run.ended) {
    state.run.stop();
    setButtons();
  }
});
$("drop").addEventListener("click", drop);
$("clear").addEventListener("click", clear);
$("message").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    send();
  }
});
Resume.showControls();
loadFlows();
