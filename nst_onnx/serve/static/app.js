// nst serve's page: plain JS, no build step. It uses only the documented JSON API.
"use strict";
const $ = (id) => document.getElementById(id);
const FIELDS = ["size", "style_weight", "content_weight", "preserve_colors", "init", "seed",
                "tv_weight", "optimizer", "style_scale"];
const NUMBERS = new Set(["size", "style_weight", "content_weight", "seed", "tv_weight",
                         "style_scale", "iterations"]);
const PREVIEWS_PER_SECOND = 3;
let examples = [], current = null, stream = null, lastPreview = 0, previewBusy = false;

async function api(path, options) {
  const r = await fetch(path, options);
  const body = r.headers.get("content-type")?.includes("json") ? await r.json() : null;
  if (!r.ok) throw new Error(body?.error || `${r.status} ${r.statusText}`);
  return body;
}

function styleCount() {
  return $("style").files.length +
    document.querySelectorAll("#style_examples input:checked").length;
}

function drawBlend() {
  const n = styleCount(), box = $("blend");
  box.innerHTML = "";
  if (n < 2) return;
  for (let i = 0; i < n; i++) {
    box.insertAdjacentHTML("beforeend", `<label class="blend">style ${i + 1}
      <input type="range" min="0" max="1" step="0.05" value="${(1 / n).toFixed(2)}"
      data-blend></label>`);
  }
}

function settings() {
  const s = {};
  for (const f of FIELDS) {
    const v = $(f).value;
    if (v !== "") s[f] = NUMBERS.has(f) ? Number(v) : v;
  }
  if (!$("until_finished").checked) s.iterations = Number($("iterations").value);
  const blend = [...document.querySelectorAll("[data-blend]")].map((e) => Number(e.value));
  if (blend.length > 1) s.style_blend = blend;
  return s;
}

async function start(event) {
  event.preventDefault();
  $("error").textContent = "";
  const form = new FormData();
  if ($("content").files[0]) form.append("content", $("content").files[0]);
  else if ($("content_example").value) form.append("content_example", $("content_example").value);
  for (const f of $("style").files) form.append("style", f);
  for (const e of document.querySelectorAll("#style_examples input:checked"))
    form.append("style_example", e.value);
  form.append("settings", JSON.stringify(settings()));
  form.append("format", $("format").value);
  try {
    follow(await api("/api/jobs", { method: "POST", body: form }));
  } catch (e) {
    $("error").textContent = e.message;
  }
}

function show(job) {
  current = job;
  $("current").hidden = false;
  $("job_id").textContent = job.id;
  $("state").textContent = job.state;
  const it = job.iteration || 0, total = job.iterations;
  // without a fixed count the stop rule ends the job, often well before its budget
  const atMost = job.settings && job.settings.iterations === undefined && job.state !== "done";
  const parts = [`iteration ${it}${total ? (atMost ? " / at most " : " / ") + total : ""}`];
  if (job.loss != null) parts.push(`loss ${job.loss.toPrecision(4)}`);
  if (job.seconds_per_iteration) parts.push(`${job.seconds_per_iteration.toFixed(2)} s/iteration`);
  if (job.eta_seconds != null) parts.push(`ETA ${atMost ? "≤ " : ""}${Math.round(job.eta_seconds)} s`);
  if (job.reason) parts.push(job.reason);
  $("progress").textContent = parts.join(" · ");
  $("bar").value = total ? it / total : 0;
  const done = job.state === "done";
  $("cancel").hidden = ["done", "failed", "cancelled"].includes(job.state);
  $("download").hidden = !done;
  $("again").hidden = !["done", "failed", "cancelled"].includes(job.state);
  if (done) {
    $("download").href = job.links.result;
    $("bar").value = 1;
  }
}

function refreshPreview(force) {
  const now = Date.now();
  if (!current || previewBusy || (!force && now - lastPreview < 1000 / PREVIEWS_PER_SECOND)) return;
  previewBusy = true;
  lastPreview = now;
  const img = new Image();
  img.onload = () => { $("preview").src = img.src; previewBusy = false; };
  img.onerror = () => { previewBusy = false; };
  img.src = `${current.links.preview}?t=${now}`;
}

function follow(job) {
  if (stream) stream.close();
  show(job);
  stream = new EventSource(job.links.events);
  stream.onmessage = (m) => {
    const e = JSON.parse(m.data);
    if (e.event === "state") {
      show({ ...current, ...e });
      if (["done", "failed", "cancelled"].includes(e.state)) {
        stream.close();
        refreshPreview(true);
        gallery();
      }
    } else if (e.event === "iteration") {
      show({ ...current, iteration: e.iteration, iterations: e.iterations, loss: e.loss,
             seconds_per_iteration: current.started ?
               (Date.now() / 1000 - current.started) / e.iteration : null,
             eta_seconds: current.started && e.iterations ?
               (Date.now() / 1000 - current.started) / e.iteration * (e.iterations - e.iteration) : null });
      refreshPreview(false);
    }
  };
}

function again() {
  const s = current.settings || {};
  for (const f of FIELDS) if (s[f] !== undefined) $(f).value = s[f];
  $("until_finished").checked = s.iterations === undefined;
  $("iterations").disabled = $("until_finished").checked;
  if (s.iterations !== undefined) $("iterations").value = s.iterations;
  window.scrollTo(0, 0);
}

async function gallery() {
  const { jobs } = await api("/api/jobs");
  const box = $("gallery");
  box.innerHTML = "";
  for (const j of jobs.filter((j) => j.state === "done")) {
    const fig = document.createElement("figure");
    const s = j.settings, r = j.result || {};
    fig.innerHTML = `<a href="${j.links.result}"><img loading="lazy" alt="result ${j.id}"
      src="${j.links.preview}"></a><figcaption></figcaption>`;
    fig.querySelector("figcaption").textContent =
      `${j.names.content.join(", ")} × ${j.names.styles.join(" + ")} — size ${s.size ?? 512}, ` +
      `style ${s.style_weight ?? 100}, ${r.iterations ?? "?"} iterations, ` +
      `${r.seconds ? r.seconds.toFixed(1) + " s" : ""}`;
    fig.addEventListener("click", (ev) => { if (ev.target.tagName !== "IMG") follow(j); });
    box.append(fig);
  }
}

async function init() {
  examples = (await api("/api/examples")).examples;
  for (const name of examples) {
    $("content_example").insertAdjacentHTML("beforeend", `<option>${name}</option>`);
    $("style_examples").insertAdjacentHTML("beforeend",
      `<label><input type="checkbox" value="${name}"><img class="thumb" alt=""
        src="/api/examples/${name}"> ${name}</label>`);
  }
  if (examples.includes("tubingen.jpg")) $("content_example").value = "tubingen.jpg";
  const thumb = () => {
    const name = $("content_example").value;
    $("content_thumb").hidden = !name;
    if (name) $("content_thumb").src = `/api/examples/${name}`;
  };
  $("content_example").addEventListener("change", thumb);
  thumb();
  $("job").addEventListener("submit", start);
  $("style").addEventListener("change", drawBlend);
  $("style_examples").addEventListener("change", drawBlend);
  $("until_finished").addEventListener("change",
    () => { $("iterations").disabled = $("until_finished").checked; });
  $("cancel").addEventListener("click", async () => {
    try { show(await api(current.links.self, { method: "DELETE" })); }
    catch (e) { $("error").textContent = e.message; }
  });
  $("again").addEventListener("click", again);
  await gallery();
  const running = (await api("/api/jobs")).jobs.find((j) => ["running", "queued"].includes(j.state));
  if (running) follow(running);
}
init().catch((e) => { $("error").textContent = e.message; });
