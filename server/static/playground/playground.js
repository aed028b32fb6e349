// The playground: pick a context, open a session, drive it over the WebSocket, imagine futures.
// It uses only the public API (docs/API.md); every error the API answers is shown with its field.

import { Api, ApiError } from "./api.js";
import { Controls, actionBounds } from "./controls.js";
import { drawRewards } from "./plot.js";

const $ = (id) => document.getElementById(id);
const api = new Api();
const demoMode = new URLSearchParams(location.search).get("demo") === "1";
// /?demo=1: eight steps on the first held-out context; [dimension, amount of its bound] or "grip" (toggle)
const DEMO = [[0, 0.8], [0, 0.8], [1, 0.8], [1, 0.8], [2, -0.8], "grip", [2, 0.8], [0, -0.8]];

const state = {
  model: null,
  controls: null,
  context: null, // {frames: [base64 PNG], source}
  session: null, // {id, stepIndex, sampling}
  stream: null,
  frames: [], // base64 PNG per predicted frame (t = index + 1)
  rewards: [],
  actions: [],
  queue: [], // [{actions, resolve}]: inputs waiting for the step in flight
  busy: false,
  dropped: 0,
  stepSeconds: 0,
};

// errors: the API's status, code, field and message, newest first
function showError(err) {
  const e = err instanceof ApiError ? err : new ApiError({ code: "page_error", message: String(err?.message ?? err) });
  const box = document.createElement("div");
  box.className = "error";
  box.dataset.code = e.code;
  if (e.field) box.dataset.field = e.field;
  box.innerHTML = '<span class="what"></span><span class="text"></span><button type="button" aria-label="dismiss">×</button>';
  box.querySelector(".what").textContent = e.status ? `${e.status} ${e.code}` : e.code;
  const text = box.querySelector(".text");
  if (e.field) {
    const field = document.createElement("code");
    field.textContent = e.field;
    text.append(field, ": ");
  }
  text.append(e.message + (e.retryAfter ? ` (retry after ${e.retryAfter} s)` : ""));
  box.querySelector("button").onclick = () => box.remove();
  $("errors").prepend(box);
  while ($("errors").children.length > 4) $("errors").lastChild.remove();
  if (e.status === 401) {
    $("key-form").hidden = false;
    $("api-key").focus();
  }
}

const guarded = (fn) => async (...args) => {
  try {
    return await fn(...args);
  } catch (err) {
    showError(err);
    return undefined;
  }
};

// start-up: the model, its bounds and limits, the sample episodes, whether the API can plan
async function init() {
  state.model = (await api.models()).models[0];
  const m = state.model;
  $("model-info").textContent = `${m.name} · ${m.image_size}×${m.image_size} frames · ${m.context_frames} context · `
    + `${m.action_dim}-d actions · ${m.reward_head ? "rewards" : "no reward head"}`;
  state.controls = new Controls($("sliders"), actionBounds(m));
  $("upload-count").textContent = m.context_frames;
  $("imagine-k").max = m.max_imagine_sequences;
  $("imagine-h").max = m.max_horizon;
  await Promise.all([guarded(loadEpisodes)(), guarded(detectPlan)()]);
  if (demoMode) await demo();
}

async function loadEpisodes() {
  let episodes;
  try {
    episodes = (await api.sampleEpisodes()).episodes;
  } catch (err) {
    if (err.status !== 404) throw err;
    $("sample-picker").hidden = true;
    $("context-source").textContent = "No held-out frames on this gateway: upload your own.";
    return;
  }
  $("episode").replaceChildren(...episodes.map((e) => {
    const option = new Option(`${e.episode}: ${e.task ?? e.source}${e.policy ? ` (${e.policy})` : ""}`, e.episode);
    option.dataset.frames = e.frames;
    return option;
  }));
  const limitStart = () => {
    const frames = Number($("episode").selectedOptions[0]?.dataset.frames ?? 0);
    $("start").max = Math.max(0, frames - state.model.context_frames);
  };
  $("episode").onchange = limitStart;
  limitStart();
}

async function detectPlan() {
  // the plan operation comes with a later API version: the button shows only when the API describes it
  $("plan").hidden = !(await api.offers("post", "/v1/sessions/{session_id}/plan"));
}

// contexts and sessions
async function useSample(episode = $("episode").value || 0, start = $("start").value || 0) {
  const ctx = await api.sampleContext(episode, start);
  const last = ctx.start + ctx.frames.length - 1;
  await openSession({ frames: ctx.frames, source: `${ctx.source}, frames ${ctx.start}–${last}` });
}

function base64Of(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(String(reader.result).split(",", 2)[1] ?? "");
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

async function useUpload(files) {
  const frames = await Promise.all([...files].map(base64Of)); // as they are: the API checks them
  await openSession({ frames, source: `uploaded: ${[...files].map((f) => f.name).join(", ")}` });
}

function sampling() {
  return { seed: Number($("seed").value), temperature: Number($("temperature").value), greedy: $("greedy").checked };
}

async function openSession(context) {
  const info = await api.createSession(context.frames, sampling()); // on an error nothing here changes
  await closeSession();
  Object.assign(state, { context, frames: [], rewards: [], actions: [], stepSeconds: 0, dropped: 0 });
  state.session = { id: info.session_id, stepIndex: info.step_index, sampling: info.sampling };
  state.stream = api.stream(info.session_id);
  $("context-frames").replaceChildren(...context.frames.map((f, i) => thumb(f, `context ${i + 1}`)));
  $("context-source").textContent = context.source;
  $("filmstrip").replaceChildren();
  $("futures").replaceChildren();
  for (const id of ["latency", "first-frame", "fps", "reward"]) $(id).textContent = "–";
  $("frame").src = png(context.frames.at(-1));
  $("frame-index").textContent = `context ${context.frames.length}/${context.frames.length}`;
  drawRewards($("reward-plot"), state.rewards);
  refresh();
}

async function closeSession() {
  const session = state.session;
  if (!session) return;
  state.session = null;
  state.stream?.close();
  state.stream = null;
  state.queue.splice(0).forEach((item) => item.resolve(false));
  try {
    await api.deleteSession(session.id);
  } catch (err) {
    if (err.status !== 404) showError(err); // 404: it expired already
  }
}

function refresh() {
  const s = state.session;
  for (const id of ["reset", "step", "imagine", "plan", "download-gif"]) $(id).disabled = !s;
  $("download-csv").disabled = !state.actions.length;
  $("session-info").dataset.sessionId = s?.id ?? "";
  $("session-info").textContent = s
    ? `session ${s.id.slice(0, 8)}… · step_index ${s.stepIndex} · seed ${s.sampling.seed} · `
      + (s.sampling.greedy ? "greedy" : `temperature ${s.sampling.temperature}`)
    : "no session";
  document.body.dataset.busy = state.busy; // a step in flight (for tests and screenshots)
  const waiting = state.queue.reduce((n, item) => n + item.actions.length, 0);
  $("queue").textContent = (waiting ? `${waiting} queued` : "") + (state.dropped ? ` · ${state.dropped} inputs dropped (faster than the model)` : "");
}

// stepping: inputs queue up while a step runs, then go as one request (up to max_horizon actions)
function drive(actions) {
  if (!state.session) {
    showError(new ApiError({ code: "no_session", message: "pick a context first: there is no session to step" }));
    return Promise.resolve(false);
  }
  return new Promise((resolve) => {
    state.queue.push({ actions, resolve });
    refresh();
    pump();
  });
}

function driveInput(action) {
  const waiting = state.queue.reduce((n, item) => n + item.actions.length, 0);
  if (state.session && waiting >= state.model.max_horizon) {
    state.dropped += 1;
    refresh();
    return;
  }
  state.controls.set(action);
  drive([action]);
}

async function pump() {
  if (state.busy || !state.queue.length || !state.session) return;
  state.busy = true;
  const batch = [state.queue.shift()];
  let n = batch[0].actions.length;
  while (state.queue.length && n + state.queue[0].actions.length <= state.model.max_horizon) {
    n += state.queue[0].actions.length;
    batch.push(state.queue.shift());
  }
  refresh();
  let ok = false;
  try {
    await step(batch.flatMap((item) => item.actions));
    ok = true;
  } catch (err) {
    showError(err);
  } finally {
    state.busy = false;
    batch.forEach((item) => item.resolve(ok));
    refresh();
    pump();
  }
}

function ensureStream() {
  if (!state.stream || state.stream.closed) state.stream = api.stream(state.session.id);
  return state.stream;
}

async function step(actions) {
  const session = state.session;
  const first = session.stepIndex;
  const t0 = performance.now();
  let firstFrameMs = null;
  const onFrame = (msg) => {
    if (state.session !== session) return;
    firstFrameMs ??= performance.now() - t0;
    addFrame(msg.step_index, msg.frame, msg.reward, actions[msg.step_index - first]);
  };
  let done;
  try {
    done = await ensureStream().step(actions, first, onFrame);
  } catch (err) {
    if (!err.code?.startsWith("websocket") || state.session !== session) throw err;
    // the socket dropped: the gateway recorded the step all the same, and the same step_index returns it
    state.stream = null;
    done = await ensureStream().step(actions, first, onFrame);
  }
  if (state.session !== session) return;
  session.stepIndex = done.step_index;
  const seconds = (performance.now() - t0) / 1000;
  state.stepSeconds += seconds;
  $("latency").textContent = `${Math.round(seconds * 1000)} ms`;
  $("first-frame").textContent = firstFrameMs === null ? "–" : `${Math.round(firstFrameMs)} ms`;
  $("fps").textContent = `${(actions.length / seconds).toFixed(1)}`;
  $("fps").title = `session average: ${(state.frames.length / state.stepSeconds).toFixed(1)} frames/s`;
}

const png = (b64) => `data:image/png;base64,${b64}`;

function thumb(b64, title) {
  const img = new Image();
  img.src = png(b64);
  img.title = img.alt = title;
  return img;
}

function addFrame(index, frame, reward, action) {
  if (index < state.frames.length) return; // a retried step's frame that is already here
  state.frames.push(frame);
  state.rewards.push(reward ?? null);
  state.actions.push(action);
  const img = thumb(frame, `t=${index + 1}`);
  img.dataset.t = index + 1;
  img.onclick = () => showFrame(index);
  $("filmstrip").append(img);
  img.scrollIntoView({ block: "nearest", inline: "end" });
  showFrame(index);
  $("reward").textContent = reward == null ? "–" : reward.toFixed(3);
  drawRewards($("reward-plot"), state.rewards);
}

function showFrame(index) {
  $("frame").src = png(state.frames[index]);
  $("frame").dataset.t = index + 1;
  $("frame-index").textContent = `t = ${index + 1} / ${state.frames.length}`;
  $("filmstrip").querySelector(".current")?.classList.remove("current");
  $("filmstrip").children[index]?.classList.add("current");
}

// downloads
function save(blob, name) {
  const link = document.createElement("a");
  link.href = URL.createObjectURL(blob);
  link.download = name;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 60_000);
}

async function downloadGif() {
  const blob = await api.renderGif({
    frames: [...state.context.frames, ...state.frames],
    context_frames: state.context.frames.length,
    rewards: state.model.reward_head ? state.rewards : null,
    fps: 4,
    scale: 4,
  });
  save(blob, "rollout.gif");
}

function downloadCsv() {
  // one action per row, no header: what `ivideogpt rollout --actions actions.csv` reads
  save(new Blob([state.actions.map((a) => a.join(",")).join("\n") + "\n"], { type: "text/csv" }), "actions.csv");
}

// imagine: K action sequences around the sliders' action, scored by the model; the session is unchanged
function normalSampler(seed) {
  let a = seed >>> 0;
  const uniform = () => { // mulberry32
    a = (a + 0x6d2b79f5) >>> 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  return () => Math.sqrt(-2 * Math.log(1 - uniform())) * Math.cos(2 * Math.PI * uniform());
}

async function imagineFutures() {
  const k = Number($("imagine-k").value), h = Number($("imagine-h").value), noise = Number($("imagine-noise").value);
  const { low, high } = state.controls;
  const base = state.controls.values();
  const normal = normalSampler(state.session.sampling.seed * 1000003 + state.session.stepIndex);
  const jitter = (v, i) => Math.min(high[i], Math.max(low[i], v + (noise * (high[i] - low[i]) * normal()) / 2));
  const sequences = Array.from({ length: Math.max(k, 0) }, (_, j) =>
    Array.from({ length: Math.max(h, 0) }, () => base.map((v, i) => (j === 0 ? v : Number(jitter(v, i).toFixed(4))))));
  const withFrames = $("imagine-frames").checked;
  const session = state.session;
  const t0 = performance.now();
  const out = await api.imagine(session.id, sequences, withFrames);
  if (state.session !== session) return;
  const ms = Math.round(performance.now() - t0);
  const returns = sequences.map((_, j) => (out.rewards ? out.rewards[j].reduce((s, r) => s + r, 0) : null));
  const order = sequences.map((_, j) => j).sort((a, b) => (returns[b] ?? 0) - (returns[a] ?? 0));
  $("futures").replaceChildren(...order.map((j, rank) => {
    const card = document.createElement("article");
    card.className = "future";
    card.dataset.rank = rank + 1;
    if (returns[j] !== null) card.dataset.return = returns[j];
    card.innerHTML = `<header><span>#${rank + 1} · ${j === 0 ? "as set" : `variant ${j}`}</span>`
      + `<span class="return" title="predicted return over ${h} frames">${returns[j] === null ? "–" : returns[j].toFixed(3)}</span></header>`
      + `<div class="thumbs"></div><button type="button">Step these ${h} actions</button>`;
    if (out.frames) card.querySelector(".thumbs").append(...out.frames[j].map((f, t) => thumb(f, `t=+${t + 1}`)));
    card.querySelector("button").onclick = guarded(() => drive(sequences[j]));
    return card;
  }));
  $("futures").dataset.ms = ms;
}

async function plan() {
  const out = await api.plan(state.session.id, { horizon: Number($("imagine-h").value), seed: state.session.sampling.seed });
  if (!Array.isArray(out?.actions) || !out.actions.length) {
    throw new ApiError({ code: "page_error", message: "the plan answer has no actions" });
  }
  state.controls.set(out.actions[0]);
  await drive(out.actions);
}

// /?demo=1: open a session on the first held-out context and play the script, one step at a time
async function demo() {
  document.body.dataset.demo = "running";
  try {
    await useSample(0, 0);
    for (const move of DEMO) {
      const action = move === "grip" ? state.controls.fromKey({ key: " " }) : state.controls.motion(move[0], move[1]);
      state.controls.set(action);
      if (!(await drive([action]))) break;
    }
  } finally {
    document.body.dataset.demo = state.frames.length === DEMO.length ? "done" : "failed";
  }
}

// inputs
function onKey(event) {
  if (event.ctrlKey || event.metaKey || event.altKey || !state.controls) return;
  const t = event.target;
  if (t instanceof HTMLInputElement || t instanceof HTMLSelectElement || t instanceof HTMLTextAreaElement) return;
  const action = state.controls.fromKey(event);
  if (!action) return;
  event.preventDefault(); // no scrolling
  if (t instanceof HTMLButtonElement) t.blur(); // space would press the button on keyup
  driveInput(action);
}

function pollGamepad() {
  if (state.controls) {
    const { name, action } = state.controls.fromGamepad();
    $("gamepad").textContent = name ? `gamepad: ${name}` : "no gamepad";
    if (action && state.session && !state.busy && !state.queue.length) driveInput(action);
  }
  requestAnimationFrame(pollGamepad);
}

function wire() {
  document.addEventListener("keydown", onKey);
  $("load-sample").onclick = guarded(() => useSample());
  $("upload").onchange = guarded(async (event) => {
    const files = event.target.files;
    if (files.length) await useUpload(files);
    event.target.value = ""; // the same files again count as a new choice
  });
  $("reset").onclick = guarded(() => openSession(state.context));
  $("step").onclick = () => drive([state.controls.values()]);
  $("sliders").addEventListener("change", (event) => {
    event.target.blur(); // the arrow keys drive again instead of moving the slider
    drive([state.controls.values()]);
  });
  $("imagine").onclick = guarded(imagineFutures);
  $("plan").onclick = guarded(plan);
  $("download-gif").onclick = guarded(downloadGif);
  $("download-csv").onclick = downloadCsv;
  $("key-form").onsubmit = guarded(async (event) => {
    event.preventDefault();
    api.setKey($("api-key").value.trim());
    $("errors").replaceChildren();
    await init();
  });
  $("key-form").hidden = !api.key;
  $("api-key").value = api.key;
  new ResizeObserver(() => drawRewards($("reward-plot"), state.rewards)).observe($("reward-plot"));
  window.addEventListener("pagehide", () => {
    if (state.session) api.deleteSession(state.session.id, true).catch(() => {}); // the page is gone: nobody to tell
  });
  requestAnimationFrame(pollGamepad);
}

wire();
guarded(init)();
