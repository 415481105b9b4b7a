// The demo page: a client of the gateway's own API (GET /info, POST /explain), nothing else;
// URLs are relative, so the page also works behind a proxy that serves the gateway under a path.
// Each image is explained by its own request, so one bad file shows its error beside the others.
// Two methods: attention rollout (class-agnostic) and class attribution, whose class is picked per
// image from its top-k list (the top-1 until one is picked).
"use strict";

const MAX_PARALLEL = 3; // requests in flight from this page
const OVERLAY_SIDE = 768; // max_side asked for the overlay (enough for a card on any screen)
const HEATMAP_WIDTH = 256; // canvas width of the heatmap panel (height follows the crop box)
const DEBOUNCE_MS = 200;
const STAGES = ["decode", "preprocess", "triton", "postprocess", "render", "total"];

const $ = (id) => document.getElementById(id);
const state = { info: null, items: [], queue: [], running: 0, timer: null };

function hexToLut(hex) {
  const lut = new Uint8ClampedArray(hex.length / 2);
  for (let i = 0; i < lut.length; i++) lut[i] = parseInt(hex.substr(2 * i, 2), 16);
  return lut;
}

function option(select, value, text) {
  const el = document.createElement("option");
  el.value = value;
  el.textContent = text;
  select.append(el);
}

function showServiceError(message) {
  const el = $("service-error");
  el.textContent = message;
  el.hidden = !message;
}

async function loadInfo() {
  let response;
  try {
    response = await fetch("info", { headers: { Accept: "application/json" } });
  } catch (err) {
    showServiceError(`The gateway did not answer: ${err.message}`);
    return;
  }
  if (!response.ok) {
    showServiceError(await errorText(response));
    return;
  }
  const info = await response.json();
  state.info = info;
  state.luts = Object.fromEntries(
    Object.entries(info.colormaps).map(([name, hex]) => [name, hexToLut(hex)]),
  );
  $("model-line").textContent =
    `${info.architecture}: ${info.labels} classes, ${info.input_size[1]}×${info.input_size[0]} input`;
  const precision = $("precision");
  precision.replaceChildren();
  if (info.explain.length === 0) option(precision, "", `default (${info.default_precision})`);
  for (const model of info.explain) option(precision, model.precision, model.precision);
  precision.value = info.explain.some((m) => m.precision === info.default_precision)
    ? info.default_precision
    : precision.options[0].value;
  for (const fusion of info.head_fusions) option($("head_fusion"), fusion, fusion);
  for (const name of Object.keys(info.colormaps)) option($("colormap"), name, name);
  $("colormap").value = info.default_colormap;
  $("top_k").max = String(info.labels);
  if (info.triton_error) {
    showServiceError(`Triton: ${info.triton_error}. Reload the page when it is up.`);
  }
  updateControls();
}

function currentPrecision() {
  return $("precision").value || (state.info && state.info.default_precision);
}

function attributionServed() {
  return Boolean(state.info && state.info.attribution.includes(currentPrecision()));
}

function attribution() {
  return $("method").value === "attribution";
}

// Controls follow what is served: attribution only where its model is, rollout's own controls
// only with rollout (the API refuses them with attribution).
function updateControls() {
  const method = $("method");
  const served = attributionServed();
  method.querySelector('option[value="attribution"]').disabled = !served;
  if (!served && attribution()) method.value = "rollout";
  $("method-hint").textContent = attribution()
    ? "what speaks for one class: pick it in an image's top-k list (default: its top-1)"
    : served
      ? "where the model looked, the same map for every class"
      : `where the model looked; no attribution model is served for ${currentPrecision()}`;
  $("head_fusion").disabled = attribution();
  updateDiscardControl();
}

function selectedModel() {
  const info = state.info;
  if (!info) return null;
  return info.explain.find((m) => m.precision === $("precision").value) || null;
}

function updateDiscardControl() {
  const model = selectedModel();
  const slider = $("discard_ratio");
  const supported = !model || model.discard_ratio;
  slider.disabled = !supported || attribution();
  if (!supported) {
    slider.value = "0";
    $("discard_ratio-value").textContent = "0";
  }
  $("discard-hint").textContent = !supported
    ? `${model.name} was built without discard_ratio (rebuild the repository to use it)`
    : attribution()
      ? "a rollout setting (attribution takes none)"
      : "lowest share of attention dropped per layer (0 = plain rollout)";
}

function params(item) {
  const p = new URLSearchParams({
    output: "json",
    include_png: "true",
    max_side: String(OVERLAY_SIDE),
    colormap: $("colormap").value,
    alpha: $("alpha").value,
    top_k: $("top_k").value || "5",
  });
  if ($("precision").value) p.set("precision", $("precision").value);
  if (attribution()) {
    p.set("method", "attribution");
    if (item.target !== null) p.set("target_class", String(item.target));
  } else {
    p.set("head_fusion", $("head_fusion").value);
    if (!$("discard_ratio").disabled) p.set("discard_ratio", $("discard_ratio").value);
  }
  return p;
}

// The API's error, as it is: status, code and message ({"error": {"code", "message"}}).
async function errorText(response) {
  const text = await response.text();
  const retry = response.headers.get("Retry-After");
  const after = retry ? ` (Retry-After: ${retry} s)` : "";
  try {
    const body = JSON.parse(text);
    if (body && body.error) {
      return `${response.status} ${body.error.code}: ${body.error.message}${after}`;
    }
  } catch (_) {
    /* not JSON: show the start of whatever came back */
  }
  return `${response.status} ${response.statusText}: ${text.slice(0, 300)}${after}`;
}

function addFiles(files) {
  for (const file of files) {
    const card = $("card-template").content.firstElementChild.cloneNode(true);
    card.querySelector(".name").textContent = file.name || "pasted image";
    const original = card.querySelector(".original");
    original.onerror = () => original.closest("figure").remove(); // the browser cannot show it
    original.src = URL.createObjectURL(file);
    $("results").prepend(card);
    // target: the class index picked in this card's top-k (null: the top-1)
    const item = { file, card, generation: 0, result: null, pending: false, target: null };
    state.items.push(item);
    enqueue(item);
  }
  $("empty").hidden = state.items.length > 0;
}

function enqueue(item) {
  if (item.pending) {
    item.again = true; // settings changed while it ran: run once more with the new ones
    return;
  }
  item.pending = true;
  item.card.dataset.state = "loading";
  item.card.querySelector(".status").textContent = "Explaining…";
  state.queue.push(item);
  pump();
}

function pump() {
  while (state.running < MAX_PARALLEL && state.queue.length) {
    const item = state.queue.shift();
    state.running++;
    explain(item)
      .catch((err) => showError(item, `the page failed: ${err.message}`))
      .finally(() => {
        state.running--;
        item.pending = false;
        if (item.again) {
          item.again = false;
          enqueue(item);
        }
        pump();
      });
  }
}

async function explain(item) {
  const body = new FormData();
  body.append("file", item.file, item.file.name || "pasted-image");
  const query = params(item);
  const started = performance.now();
  let response;
  try {
    response = await fetch(`explain?${query}`, {
      method: "POST",
      body,
      headers: { Accept: "application/json" },
    });
  } catch (err) {
    return showError(item, `network error: ${err.message}`);
  }
  if (!response.ok) return showError(item, await errorText(response));
  const data = await response.json();
  const roundTrip = performance.now() - started;
  await showResult(item, data.results[0], data, roundTrip, query);
}

function showError(item, message) {
  const card = item.card;
  card.querySelector(".error").textContent = message;
  card.querySelector(".error").hidden = false;
  card.querySelector(".status").textContent = "Failed.";
  card.querySelector(".topk").replaceChildren();
  card.querySelector(".explained").textContent = "";
  card.querySelector(".timings").replaceChildren();
  card.classList.add("failed");
  finish(item, "error");
}

async function showResult(item, result, data, roundTrip, query) {
  const card = item.card;
  card.classList.remove("failed");
  card.querySelector(".error").hidden = true;
  card.querySelector(".size").textContent = `${result.width}×${result.height}`;
  const heatmap = result.heatmap;
  const explained = heatmap.explained_class;
  const list = card.querySelector(".topk");
  list.replaceChildren();
  for (const p of result.predictions) {
    const li = document.createElement("li");
    const label = document.createElement("button");
    label.type = "button";
    label.className = "pick";
    label.dataset.classIndex = String(p.class_index);
    const chosen = Boolean(explained) && explained.class_index === p.class_index;
    label.setAttribute("aria-pressed", String(chosen));
    label.disabled = !attributionServed();
    label.title = label.disabled
      ? `no attribution model is served for ${currentPrecision()}`
      : `show what speaks for class ${p.class_index} (${p.label})`;
    label.addEventListener("click", () => pickClass(item, p.class_index));
    const text = document.createElement("span");
    text.className = "label";
    text.textContent = p.label;
    label.append(text);
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.setAttribute("aria-hidden", "true");
    const fill = document.createElement("span");
    fill.style.width = `${(100 * p.probability).toFixed(2)}%`;
    bar.append(fill);
    const value = document.createElement("span");
    value.className = "probability";
    value.textContent = `${(100 * p.probability).toFixed(1)}%`;
    li.append(label, bar, value);
    list.append(li);
  }
  drawHeatmap(card.querySelector(".heatmap"), heatmap, query.get("colormap"));
  const patches = `${heatmap.shape[0]}×${heatmap.shape[1]} patches`;
  card.querySelector(".heatmap-caption").textContent = explained
    ? `Attribution of ${explained.label} (${patches})`
    : `Heatmap (${heatmap.head_fusion}` +
      (heatmap.discard_ratio > 0 ? `, discard ${heatmap.discard_ratio}` : "") +
      `, ${patches})`;
  card.querySelector(".explained").textContent = explained
    ? `Explaining class ${explained.class_index} “${explained.label}” ` +
      `(${(100 * explained.probability).toFixed(1)}%)` +
      (query.has("target_class") ? "" : ", the top-1")
    : "Attention rollout: where the model looked (the same for every class)";
  const overlay = card.querySelector(".overlay");
  const loaded = new Promise((resolve) => {
    overlay.onload = overlay.onerror = resolve;
  });
  overlay.src = `data:image/png;base64,${heatmap.png_base64}`;
  await loaded;
  const timings = card.querySelector(".timings");
  timings.replaceChildren();
  const entries = STAGES.filter((s) => s in data.timings_ms).map((s) => [s, data.timings_ms[s]]);
  entries.push(["round trip", roundTrip]);
  for (const [stage, ms] of entries) {
    const dt = document.createElement("dt");
    dt.textContent = stage;
    const dd = document.createElement("dd");
    dd.textContent = `${ms.toFixed(1)} ms`;
    timings.append(dt, dd);
  }
  const top = result.predictions[0];
  card.querySelector(".status").textContent =
    `${top.label} (${(100 * top.probability).toFixed(1)}%) by ${data.model.name}`;
  item.result = result;
  finish(item, "done");
}

// A class picked in a card's top-k: that card explains it with attribution (switching the page
// to attribution re-explains the other cards too, each with its own class or its top-1).
function pickClass(item, classIndex) {
  item.target = classIndex;
  if (attribution()) {
    enqueue(item);
    return;
  }
  $("method").value = "attribution";
  updateControls();
  rerunAll();
}

function finish(item, outcome) {
  item.generation++;
  item.card.dataset.generation = String(item.generation);
  item.card.dataset.state = outcome;
}

// The 0-1 grid, upsampled bilinearly to the crop box's shape and coloured with the server's
// own table for the colormap: the same picture the overlay shows, without the image.
function drawHeatmap(canvas, heatmap, colormap) {
  const [rows, cols] = heatmap.shape;
  const [left, top, right, bottom] = heatmap.crop_box;
  const width = HEATMAP_WIDTH;
  const height = Math.max(1, Math.round((width * (bottom - top)) / (right - left)));
  canvas.width = width;
  canvas.height = height;
  const lut = state.luts && state.luts[colormap];
  if (!lut) return; // /info did not load: the overlay still shows the heat
  const grid = heatmap.grid;
  const image = new ImageData(width, height);
  for (let y = 0; y < height; y++) {
    const sy = Math.min(Math.max(((y + 0.5) * rows) / height - 0.5, 0), rows - 1);
    const y0 = Math.floor(sy);
    const y1 = Math.min(y0 + 1, rows - 1);
    const fy = sy - y0;
    for (let x = 0; x < width; x++) {
      const sx = Math.min(Math.max(((x + 0.5) * cols) / width - 0.5, 0), cols - 1);
      const x0 = Math.floor(sx);
      const x1 = Math.min(x0 + 1, cols - 1);
      const fx = sx - x0;
      const v =
        (grid[y0][x0] * (1 - fx) + grid[y0][x1] * fx) * (1 - fy) +
        (grid[y1][x0] * (1 - fx) + grid[y1][x1] * fx) * fy;
      const index = Math.min(255, Math.max(0, Math.round(v * 255))) * 3;
      const o = (y * width + x) * 4;
      image.data[o] = lut[index];
      image.data[o + 1] = lut[index + 1];
      image.data[o + 2] = lut[index + 2];
      image.data[o + 3] = 255;
    }
  }
  canvas.getContext("2d").putImageData(image, 0, 0);
  const what = heatmap.explained_class
    ? `attribution heatmap of class ${heatmap.explained_class.label}`
    : `attention heatmap, ${heatmap.head_fusion} fusion`;
  canvas.setAttribute("aria-label", `${what}, ${colormap} colormap`);
}

function rerunAll() {
  clearTimeout(state.timer);
  state.timer = setTimeout(() => state.items.forEach(enqueue), DEBOUNCE_MS);
}

function wire() {
  $("file").addEventListener("change", (event) => {
    addFiles([...event.target.files]);
    event.target.value = ""; // choosing the same file again is a new upload
  });
  const drop = $("drop");
  for (const type of ["dragenter", "dragover"]) {
    drop.addEventListener(type, (event) => {
      event.preventDefault();
      drop.classList.add("over");
    });
  }
  for (const type of ["dragleave", "drop"]) {
    drop.addEventListener(type, () => drop.classList.remove("over"));
  }
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    addFiles([...event.dataTransfer.files]);
  });
  document.addEventListener("paste", (event) => {
    const files = [...(event.clipboardData?.files || [])];
    if (files.length) addFiles(files);
  });
  for (const id of ["alpha", "discard_ratio"]) {
    $(id).addEventListener("input", () => {
      $(`${id}-value`).textContent = $(id).value;
    });
  }
  $("precision").addEventListener("change", updateControls);
  $("method").addEventListener("change", updateControls);
  $("controls").addEventListener("change", rerunAll);
  $("controls").addEventListener("submit", (event) => {
    event.preventDefault(); // Enter in the top-k field: run again, never navigate
    rerunAll();
  });
}

wire();
loadInfo();
