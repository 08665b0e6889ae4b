// The stagegpt playground page: stream tokens from each chosen stage, show a token's
// alternatives, and draw one attention head as a heatmap. No libraries, no build step.
"use strict";

const $ = (id) => document.getElementById(id);
const VISIBLE = { " ": "␣", "\n": "↵", "\t": "⇥" };
const models = {};   // stage -> what /api/models says about it
const texts = {};    // stage -> the tokens on screen: [{id, text, prob, top}]
let current = null;  // the AbortController of the generation on screen

function visible(text) {
  return [...text].map((ch) => VISIBLE[ch] || ch).join("") || "∅";
}

async function loadModels() {
  const served = (await (await fetch("/api/models")).json()).models;
  for (const model of served) {
    models[model.stage] = model;
    const box = document.createElement("label");
    box.innerHTML = `<input type="checkbox" value="${model.stage}" checked> stage ${model.stage}`;
    $("stages").append(box);
    if (model.attention_layers) $("attn-stage").append(new Option(`stage ${model.stage}`, model.stage));
  }
  $("served").textContent = served.map(describe).join(" · ");
  if ($("attn-stage").options.length) $("attn-stage").selectedIndex = $("attn-stage").options.length - 1;
  else $("attn-note").textContent = "no stage served here has attention (stages 1-2 have none).";
  fillLayerAndHead();
}

function describe(model) {
  const loss = model.val_loss === null ? "" : `, val loss ${model.val_loss.toFixed(3)}`;
  return `stage ${model.stage} (${model.idea}${loss})`;
}

// The request's JSON text for one stage. A number typed the way JSON writes it is sent as
// typed: Number() would round a seed past 2**53 to another seed (2**64 - 1 out of range).
const JSON_NUMBER = /^-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?$/;

function requestBody(stage) {
  const parts = [`"stage": ${stage}`, `"prompt": ${JSON.stringify($("prompt").value)}`];
  const fields = { temperature: "temperature", top_k: "top-k", top_p: "top-p",
                   max_new_tokens: "max-new-tokens", seed: "seed" };
  for (const [name, id] of Object.entries(fields)) {
    const text = $(id).value.trim();
    if (text !== "") parts.push(`"${name}": ${JSON_NUMBER.test(text) ? text : JSON.stringify(Number(text))}`);
  }
  return `{${parts.join(", ")}}`;
}

async function generate() {
  const stages = [...document.querySelectorAll("#stages input:checked")].map((box) => Number(box.value));
  if (!stages.length) return setStatus("tick at least one stage to generate with.", true);
  current?.abort();  // a generation still streaming ends: its columns leave the screen
  const controller = current = new AbortController();
  for (const stage of Object.keys(texts)) delete texts[stage];
  $("outputs").replaceChildren();
  $("details").hidden = true;
  setStatus(`generating with ${stages.map((s) => "stage " + s).join(", ")}…`);
  const results = await Promise.all(stages.map((stage) => {
    const column = addColumn(stage);
    return streamStage(stage, requestBody(stage), column, controller.signal)
      .catch((err) => controller.signal.aborted
        || showError(column, `the stream broke off (${err.message}); generate again`));
  }));
  if (controller !== current) return;  // a newer generation is on screen now
  if (results.every(Boolean)) setStatus("done. Click a token to see what else the model considered.");
  drawAttention();
}

function addColumn(stage) {
  const column = document.createElement("div");
  column.className = "column";
  column.dataset.stage = stage;
  const model = models[stage];
  const loss = model.val_loss === null ? "" : ` · val loss ${model.val_loss.toFixed(3)}`;
  column.innerHTML = `<h2>stage ${stage}${loss} <small>${model.idea}</small></h2><div class="chips"></div>`;
  $("outputs").append(column);
  texts[stage] = [];
  return column;
}

// POST the request and read its server-sent events as they arrive; true when all went well.
async function streamStage(stage, body, column, signal) {
  const response = await fetch("/api/generate", { method: "POST", signal, body,
    headers: { "Content-Type": "application/json" } });
  if (!response.ok) return showError(column, (await response.json()).error);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (signal.aborted) return false;  // a read that finished just before the abort
    if (done) return true;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = parseEvent(buffer.slice(0, end));
      buffer = buffer.slice(end + 2);
      if (event.name === "error") return showError(column, event.data.message);
      if (event.name === "prompt") event.data.tokens.forEach((t) => addChip(stage, column, t, true));
      if (event.name === "token") addChip(stage, column, event.data, false);
    }
  }
}

function parseEvent(block) {
  const event = { name: "message", data: "" };
  for (const line of block.split("\n")) {
    if (line.startsWith("event: ")) event.name = line.slice(7);
    if (line.startsWith("data: ")) event.data += line.slice(6);
  }
  event.data = JSON.parse(event.data);
  return event;
}

function addChip(stage, column, token, isPrompt) {
  const chip = document.createElement("span");
  chip.className = isPrompt ? "chip prompt" : "chip new";
  chip.textContent = visible(token.text);
  if (!isPrompt) {
    chip.style.setProperty("--p", token.prob);
    chip.title = `p = ${token.prob.toFixed(3)}`;
    chip.addEventListener("click", () => showDetails(chip, token));
  }
  texts[stage].push(token);
  column.querySelector(".chips").append(chip);
}

function showDetails(chip, token) {
  document.querySelectorAll(".chip.selected").forEach((c) => c.classList.remove("selected"));
  chip.classList.add("selected");
  $("details").hidden = false;
  $("details-token").textContent = `“${visible(token.text)}” (id ${token.id})`;
  $("details-prob").textContent = `sampled with probability ${token.prob.toFixed(4)}; the five likeliest tokens at this step:`;
  $("alternatives").replaceChildren(...token.top.map((alt) => {
    const item = document.createElement("li");
    item.className = alt.id === token.id ? "picked" : "";
    item.innerHTML = `<span class="bar" style="width: ${Math.round(alt.prob * 200)}px"></span>`;
    item.append(`${visible(alt.text)}  ${alt.prob.toFixed(4)}`);
    return item;
  }));
}

function showError(column, message) {
  const line = document.createElement("p");
  line.className = "error";
  line.textContent = message;
  column.append(line);
  setStatus(message, true);
  return false;
}

function setStatus(message, isError = false) {
  $("status").textContent = message;
  $("status").className = isError ? "error" : "";
}

function fillLayerAndHead() {
  const model = models[$("attn-stage").value];
  if (!model) return;
  for (const [id, count] of [["attn-layer", model.attention_layers], ["attn-head", model.attention_heads]]) {
    const keep = Math.min(Number($(id).value) || 0, count - 1);
    $(id).replaceChildren(...Array.from({ length: count }, (_, i) => new Option(i, i)));
    $(id).value = keep;
  }
}

async function drawAttention() {
  const stage = Number($("attn-stage").value);
  const shown = texts[stage];
  const tokens = (shown || []).slice(-models[stage]?.block_size);
  if (!tokens.length) {  // nothing of this stage's on screen: no map of earlier text either
    $("heatmap").getContext("2d").clearRect(0, 0, $("heatmap").width, $("heatmap").height);
    delete $("heatmap").dataset.drawn;
    $("attn-note").textContent = `stage ${stage} has no text on screen: tick its box and generate.`;
    return;
  }
  const body = { stage, ids: tokens.map((t) => t.id),
                 layer: Number($("attn-layer").value), head: Number($("attn-head").value) };
  const response = await fetch("/api/attention", { method: "POST",
    headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
  const result = await response.json();
  if (texts[stage] !== shown) return;  // a new generation replaced that text meanwhile
  if (!response.ok) return setStatus(result.error, true);
  $("attn-note").textContent = `stage ${stage}, layer ${body.layer}, head ${body.head}: row i is how ` +
    "token i spreads its attention over tokens 0..i (each row scaled to its largest weight).";
  heatmap(result.weights, result.tokens.map((t) => visible(t.text)));
  $("heatmap").dataset.drawn = `${stage}/${body.layer}/${body.head}`;
}

// Query tokens down, key tokens across; each row scaled to its own largest weight.
function heatmap(weights, labels) {
  const canvas = $("heatmap"), ctx = canvas.getContext("2d");
  const T = weights.length, margin = T <= 48 ? 40 : 4;
  const cell = (canvas.width - margin) / T;
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  weights.forEach((row, i) => {
    const top = Math.max(...row) || 1;
    row.forEach((w, j) => {
      ctx.fillStyle = j > i ? "#fff" : `hsl(${250 - 190 * (w / top)}, 70%, ${20 + 50 * (w / top)}%)`;
      ctx.fillRect(margin + j * cell, margin + i * cell, Math.ceil(cell), Math.ceil(cell));
    });
  });
  if (margin < 10) return;
  ctx.fillStyle = "#333";
  ctx.font = `${Math.min(12, cell)}px monospace`;
  ctx.textAlign = "center";
  labels.forEach((label, i) => {
    ctx.fillText(label.slice(0, 2), margin + (i + 0.5) * cell, margin - 6);
    ctx.fillText(label.slice(0, 2), margin / 2, margin + (i + 0.7) * cell);
  });
}

$("generate").addEventListener("click", generate);
$("attn-stage").addEventListener("change", () => { fillLayerAndHead(); drawAttention(); });
$("attn-layer").addEventListener("change", drawAttention);
$("attn-head").addEventListener("change", drawAttention);
loadModels().catch((err) => setStatus(`cannot reach the server: ${err}`, true));
