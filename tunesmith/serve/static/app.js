// tunesmith's web page: plain JS over the HTTP API (/v1), nothing loaded from elsewhere.
//
//   GET  /v1/models                  -> the model select, and which settings and uploads to show
//   POST /v1/generations             -> JSON, or multipart/form-data when audio files go with it
//   EventSource(job.urls.stream)     -> queued / progress / done: the progress bar and status line
//   DELETE job.urls.cancel           -> the cancel button
//   GET  job.urls.audio[?format=]    -> the player, the pictures (decoded by WebAudio) and downloads
//
// With an API key, requests send "Authorization: Bearer KEY"; what the browser fetches by URL
// (the event stream, <audio>, download links) carries ?api_key=KEY instead.
"use strict";

(() => {
  const KEY_STORE = "tunesmith.apiKey";
  const RECENT_STORE = "tunesmith.recent";
  const RECENT_MAX = 30;
  const SETTINGS = ["steps", "cfg", "sampler", "temperature", "top_k", "top_p",
                    "intensity", "structure", "loop", "clap", "control_iterations", "unconditional"];
  // sent as typed; a checkbox as true or not at all; the rest are numbers (or a select)
  const TEXT = new Set(["intensity", "structure", "clap"]);
  const INTEGER = new Set(["steps", "top_k", "seed", "control_iterations"]);
  // audio inputs: the request's field -> the file input's id
  const UPLOADS = { init_audio: "init_audio", melody: "melody", prompt_audio: "prompt_audio",
                    intensity: "intensity_file" };
  const FORMATS = ["wav", "flac", "mp3", "ogg"];
  // CLI flags of `tunesmith generate` for the controls it takes (mask: one --inpaint START:END per region)
  const CLI_FLAGS = { steps: "--steps", cfg: "--cfg", temperature: "--temperature", top_k: "--top-k",
                      strength: "--strength", intensity: "--intensity", structure: "--structure", loop: "--loop",
                      clap: "--clap", control_iterations: "--control-iterations" };
  // the CLI's flags for uploaded inputs, with a stand-in for the file the person uploaded
  const CLI_FILES = { init_audio: "--init-audio INIT_AUDIO.wav", melody: "--melody MELODY.wav",
                      intensity: "--intensity INTENSITY.wav" };

  const $ = (id) => document.getElementById(id);
  const el = {
    form: $("form"), prompt: $("prompt"), duration: $("duration"), durationHint: $("duration-hint"),
    seed: $("seed"), seedRandom: $("seed-random"), model: $("model"), modelHint: $("model-hint"),
    format: $("format"), advanced: $("advanced"), noAdvanced: $("no-advanced"), uploads: $("uploads"),
    mask: $("mask"), strength: $("strength"), keyField: $("key-field"), key: $("api-key"),
    generate: $("generate"), cancel: $("cancel"), error: $("error"), progress: $("progress"),
    status: $("status"), output: $("output"), summary: $("summary"), player: $("player"),
    waveform: $("waveform"), spectrogram: $("spectrogram"), specRange: $("spec-range"),
    downloadAudio: $("download-audio"), downloadSidecar: $("download-sidecar"), downloadOther: $("download-other"),
    cli: $("cli-line"), copyCli: $("copy-cli"), cliNote: $("cli-note"),
    recentList: $("recent-list"), recentEmpty: $("recent-empty"), clearRecent: $("clear-recent"),
  };

  let models = [];          // GET /v1/models "data"
  let current = null;       // the job on show: {id, urls, ...}
  let stream = null;        // its EventSource while it runs
  let blobUrls = [];        // object URLs of the job on show (freed when another is shown)
  let drawn = null;         // the decoded audio, for redrawing on resize

  // -- small helpers ----------------------------------------------------------------------------

  function storage(name, fallback) {
    try {
      const raw = localStorage.getItem(name);
      return raw === null ? fallback : JSON.parse(raw);
    } catch (_) {
      return fallback;
    }
  }

  function store(name, value) {
    try {
      localStorage.setItem(name, JSON.stringify(value));
    } catch (_) { /* private mode or full: the page still works, it just forgets */ }
  }

  function apiKey() {
    return el.key.value.trim();
  }

  function headers(extra) {
    const h = Object.assign({}, extra || {});
    if (apiKey()) h.Authorization = "Bearer " + apiKey();
    return h;
  }

  // A GET URL the browser fetches by itself (EventSource, <audio>, links): the key rides along.
  function keyed(url, params) {
    const u = new URL(url, location.href);
    for (const [k, v] of Object.entries(params || {})) u.searchParams.set(k, v);
    if (apiKey()) u.searchParams.set("api_key", apiKey());
    return u.pathname + u.search;
  }

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  async function api(method, url, body) {
    const init = { method, headers: headers() };
    if (body instanceof FormData) {
      init.body = body;
    } else if (body !== undefined) {
      init.body = JSON.stringify(body);
      init.headers["Content-Type"] = "application/json";
    }
    let response;
    try {
      response = await fetch(url, init);
    } catch (_) {
      throw new ApiError(0, "cannot reach the server (is `tunesmith serve` still running?)");
    }
    if (response.ok) return response;
    let message = `${response.status} ${response.statusText}`;
    try {
      const data = await response.json();
      if (data && data.error) message = data.error;
    } catch (_) { /* not JSON: keep the status line */ }
    if (response.status === 401) {
      showKeyField();
      message = apiKey() ? "wrong API key: check the API key field" : "this server needs an API key: enter it in the API key field";
    }
    throw new ApiError(response.status, message);
  }

  function showError(message) {
    el.error.textContent = String(message).split("\n")[0];
    el.error.hidden = false;
  }

  function clearError() {
    el.error.textContent = "";
    el.error.hidden = true;
  }

  function setStatus(text) {
    el.status.textContent = text;
  }

  function setProgress(step, total) {
    if (step === null) {
      el.progress.removeAttribute("value");  // indeterminate: queued, or starting
      return;
    }
    el.progress.max = Math.max(1, total);
    el.progress.value = Math.min(step, Math.max(1, total));
  }

  function fmtSeconds(s) {
    return `${Number(s.toFixed(2))} s`;
  }

  function slug(text) {
    const words = text.toLowerCase().replace(/[^a-z0-9]+/g, "-").replace(/^-+|-+$/g, "");
    if (words.length <= 40) return words || "tunesmith";
    const cut = words.slice(0, 41);  // whole words only, when there is more than one
    return (cut.includes("-") ? cut.slice(0, cut.lastIndexOf("-")) : cut.slice(0, 40)) || "tunesmith";
  }

  function shellQuote(text) {
    return /^[A-Za-z0-9_./:=+-]+$/.test(text) ? text : "'" + text.replace(/'/g, "'\\''") + "'";
  }

  function ago(iso) {
    const seconds = (Date.now() - Date.parse(iso)) / 1000;
    if (!isFinite(seconds)) return "";
    if (seconds < 60) return "just now";
    if (seconds < 3600) return `${Math.round(seconds / 60)} min ago`;
    if (seconds < 86400) return `${Math.round(seconds / 3600)} h ago`;
    return new Date(iso).toLocaleDateString();
  }

  // -- API key ----------------------------------------------------------------------------------

  function showKeyField() {
    if (el.keyField.hidden) {
      el.keyField.hidden = false;
      el.key.focus();
    }
  }

  el.key.value = storage(KEY_STORE, "") || "";
  if (el.key.value) el.keyField.hidden = false;
  el.key.addEventListener("change", () => {
    store(KEY_STORE, apiKey());
    if (!models.length) loadModels();
  });

  // -- models and the settings they take --------------------------------------------------------

  async function loadModels() {
    try {
      const body = await (await api("GET", "/v1/models")).json();
      models = body.data;
      el.model.replaceChildren(...models.map((m) => {
        const option = new Option(m.id, m.id);
        option.selected = m.id === body.default;
        return option;
      }));
      clearError();
      onModelChange();
    } catch (err) {
      el.model.replaceChildren(new Option("(no models: see the error above)", ""));
      showError(err.message);
    }
  }

  function selectedModel() {
    return models.find((m) => m.id === el.model.value) || models[0];
  }

  function onModelChange() {
    const model = selectedModel();
    if (!model) return;
    const controls = model.controls || {};
    let shown = 0;
    for (const field of el.advanced.querySelectorAll("[data-control]")) {
      const name = field.dataset.control;
      const control = controls[name];
      field.hidden = !control;
      const input = field.querySelector("input, select");
      input.disabled = !control;
      if (control) {
        shown++;
        if (input.type === "number") {
          if (control.low !== null) input.min = control.low;
          if (control.high !== null) input.max = control.high;
        }
      }
    }
    el.noAdvanced.hidden = shown > 0;
    el.advanced.querySelector("#cfg").placeholder = `default ${model.default_cfg}`;
    const inputs = model.audio_inputs || [];
    el.uploads.hidden = inputs.length === 0;
    for (const field of el.uploads.querySelectorAll("[data-control]")) {
      const on = inputs.includes(field.dataset.control);
      field.hidden = !on;
      for (const input of field.querySelectorAll("input")) input.disabled = !on;
    }
    el.duration.max = model.max_duration;
    if (Number(el.duration.value) > model.max_duration) el.duration.value = model.max_duration;
    el.durationHint.textContent = `Up to ${model.max_duration} s for this model.`;
    el.modelHint.textContent = `${model.type} · ${model.sample_rate / 1000} kHz`;
  }

  el.model.addEventListener("change", onModelChange);
  el.seedRandom.addEventListener("click", () => {
    el.seed.value = "";
    el.seed.focus();
  });

  // -- the request --------------------------------------------------------------------------------

  // "1-2.5, 4-5" (or JSON [[1, 2.5], [4, 5]]) -> [[1, 2.5], [4, 5]]
  function parseMask(text) {
    text = text.trim();
    if (!text) return null;
    if (text.startsWith("[")) {
      try {
        return JSON.parse(text);
      } catch (_) {
        throw new Error("regions: not valid JSON");
      }
    }
    return text.split(/[,;]\s*/).filter(Boolean).map((part) => {
      const m = part.trim().match(/^(\d+(?:\.\d+)?)\s*(?:-|–|to)\s*(\d+(?:\.\d+)?)$/);
      if (!m) throw new Error(`regions: cannot read '${part.trim()}' (write start-end in seconds, e.g. 1-2.5)`);
      return [Number(m[1]), Number(m[2])];
    });
  }

  function numberField(input, name) {
    const raw = input.value.trim();
    if (raw === "") return undefined;
    const value = Number(raw);
    if (!isFinite(value) || (INTEGER.has(name) && !Number.isInteger(value))) {
      throw new Error(`${input.labels[0].textContent}: '${raw}' is not ${INTEGER.has(name) ? "a whole number" : "a number"}`);
    }
    return value;
  }

  function buildRequest() {
    const model = selectedModel();
    const prompt = el.prompt.value.trim();
    if (!prompt) throw new Error("write a prompt first");
    const body = { prompt, model: model ? model.id : undefined, format: el.format.value };
    body.duration = numberField(el.duration, "duration");
    if (body.duration === undefined) throw new Error("give a duration in seconds");
    body.seed = numberField(el.seed, "seed");
    const controls = (model && model.controls) || {};
    for (const name of SETTINGS) {
      if (!controls[name]) continue;
      const input = $(name);
      if (input.tagName === "SELECT") body[name] = input.value || undefined;
      else if (input.type === "checkbox") body[name] = input.checked || undefined;
      else if (TEXT.has(name)) body[name] = input.value.trim() || undefined;
      else body[name] = numberField(input, name);
    }
    const files = {};
    for (const [name, id] of Object.entries(UPLOADS)) {
      const input = $(id);
      if (!input.disabled && input.files.length) files[name] = input.files[0];
    }
    if (files.intensity && body.intensity !== undefined) {
      throw new Error("intensity: give a curve or a recording to follow, not both");
    }
    if (files.init_audio) {
      body.strength = numberField(el.strength, "strength");
      const mask = parseMask(el.mask.value);
      if (mask) body.mask = mask;
    } else if (el.mask.value.trim() && !el.mask.disabled) {
      throw new Error("regions to regenerate need a start-from audio file");
    }
    for (const k of Object.keys(body)) if (body[k] === undefined) delete body[k];
    if (!Object.keys(files).length) return body;
    const form = new FormData();  // with files: multipart, the mask as JSON text
    for (const [k, v] of Object.entries(body)) form.append(k, k === "mask" ? JSON.stringify(v) : String(v));
    for (const [k, file] of Object.entries(files)) form.append(k, file, file.name);
    return form;
  }

  el.form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearError();
    let request;
    try {
      request = buildRequest();
    } catch (err) {
      showError(err.message);
      return;
    }
    el.generate.disabled = true;
    setStatus("Sending…");
    setProgress(null);
    try {
      const job = await (await api("POST", "/v1/generations", request)).json();
      remember(job);
      show(job);
    } catch (err) {
      showError(err.message);
      setStatus("Ready.");
      setProgress(0, 1);
      el.generate.disabled = false;
    }
  });

  el.prompt.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      el.form.requestSubmit();
    }
  });

  el.cancel.addEventListener("click", async () => {
    if (!current) return;
    el.cancel.disabled = true;
    try {
      await api("DELETE", current.urls.cancel);
      setStatus("Canceling…");
    } catch (err) {
      showError(err.message);
    }
  });

  // -- following a job ------------------------------------------------------------------------------

  function closeStream() {
    if (stream) stream.close();
    stream = null;
  }

  function running(job) {
    return job.status === "queued" || job.status === "running";
  }

  // Show a job: follow it while it runs, then its result.
  function show(job) {
    closeStream();
    current = job;
    if (location.hash !== "#" + job.id) history.replaceState(null, "", "#" + job.id);
    markCurrent();
    el.output.hidden = true;
    if (running(job)) {
      el.generate.disabled = true;
      el.cancel.disabled = false;
      onQueued(job);
      follow(job);
    } else {
      finish(job);
    }
  }

  function onQueued(data) {
    setProgress(null);
    setStatus(data.position > 0 ? `Queued (place ${data.position}) · seed ${data.seed}` : `Starting · seed ${data.seed}`);
  }

  function follow(job) {
    const source = new EventSource(keyed(job.urls.stream));
    stream = source;
    source.addEventListener("queued", (e) => onQueued(JSON.parse(e.data)));
    source.addEventListener("progress", (e) => {
      const data = JSON.parse(e.data);
      if (data.total > 0) {
        setProgress(data.step, data.total);
        setStatus(`Generating · step ${data.step} of ${data.total} · seed ${data.seed}`);
      } else {
        setProgress(null);
        setStatus(`Generating · seed ${data.seed}`);
      }
    });
    source.addEventListener("done", (e) => {
      source.close();
      if (stream === source) stream = null;
      finish(JSON.parse(e.data));
    });
    source.addEventListener("error", (e) => {
      if (stream !== source) return;
      if (e.data) {  // the server's own "error" event: the job is gone
        source.close();
        stream = null;
        showError(JSON.parse(e.data).error);
        idle("Ready.");
        return;
      }
      if (source.readyState === EventSource.CLOSED) {  // refused (401, 404): ask what happened
        stream = null;
        refresh(job.id);
      } else {
        setStatus("Connection lost; reconnecting…");
      }
    });
  }

  async function refresh(id) {
    try {
      const job = await (await api("GET", `/v1/generations/${id}`)).json();
      remember(job);
      if (running(job)) {
        setTimeout(() => { if (current && current.id === id) follow(job); }, 1000);
      } else {
        finish(job);
      }
    } catch (err) {
      showError(err.message);
      idle("Ready.");
    }
  }

  function idle(text) {
    el.generate.disabled = false;
    el.cancel.disabled = true;
    setStatus(text);
  }

  async function finish(job) {
    current = job;
    remember(job);
    el.generate.disabled = false;
    el.cancel.disabled = true;
    if (job.status === "succeeded") {
      setProgress(1, 1);
      const took = job.generation_seconds ? ` in ${job.generation_seconds.toFixed(1)} s` : "";
      setStatus(`Done${took} · seed ${job.seed}`);
      await showResult(job);
    } else if (job.status === "canceled") {
      setProgress(0, 1);
      setStatus("Canceled.");
    } else {
      setProgress(0, 1);
      setStatus("Failed.");
      showError(job.error || "the generation failed");
    }
  }

  // -- the result -------------------------------------------------------------------------------------

  async function showResult(job) {
    for (const url of blobUrls) URL.revokeObjectURL(url);
    blobUrls = [];
    const name = `${slug(job.prompt)}-${job.seed}`;
    let bytes;
    try {
      const response = await api("GET", job.urls.audio);
      bytes = await response.arrayBuffer();
    } catch (err) {
      showError(err.message);
      return;
    }
    if (!current || current.id !== job.id) return;  // another job was opened meanwhile
    const audioUrl = URL.createObjectURL(new Blob([bytes], { type: `audio/${job.format === "mp3" ? "mpeg" : job.format}` }));
    const sidecarUrl = URL.createObjectURL(new Blob([JSON.stringify(sidecar(job), null, 2) + "\n"],
                                                    { type: "application/json" }));
    blobUrls.push(audioUrl, sidecarUrl);
    el.player.src = audioUrl;
    el.summary.replaceChildren();
    const quote = document.createElement("q");
    quote.textContent = job.prompt;
    const meta = document.createElement("span");
    meta.className = "meta";
    meta.textContent = `${job.model} · ${fmtSeconds(job.duration)} · seed ${job.seed}` +
      (job.sample_rate ? ` · ${job.sample_rate / 1000} kHz` : "") + ` · ${job.format.toUpperCase()}`;
    el.summary.append(quote, meta);
    const adherence = reportLine((job.info || {}).control_report);
    if (adherence) {
      const report = document.createElement("span");
      report.className = "meta report";
      report.textContent = adherence;
      el.summary.append(report);
    }

    el.downloadAudio.href = keyed(job.urls.audio);
    el.downloadAudio.download = `${name}.${job.format}`;
    el.downloadAudio.textContent = `Download ${job.format.toUpperCase()}`;
    el.downloadSidecar.href = sidecarUrl;
    el.downloadSidecar.download = `${name}.${job.format}.json`;
    el.downloadOther.replaceChildren(...FORMATS.filter((f) => f !== job.format).flatMap((f, i) => {
      const a = document.createElement("a");
      a.href = keyed(job.urls.audio, { format: f });
      a.download = `${name}.${f}`;
      a.textContent = f.toUpperCase();
      return i ? [document.createTextNode(" · "), a] : [a];
    }));
    const [line, note] = cliLine(job, name);
    el.cli.replaceChildren(...line.flatMap((part, i) => {  // only the prompt may break across lines
      const span = document.createElement("span");
      span.textContent = part;
      if (i !== 1) span.className = "word";  // all but the prompt
      return i ? [document.createTextNode(" "), span] : [span];
    }));
    el.cliNote.textContent = note;
    el.output.hidden = false;
    try {
      drawn = await decode(bytes, job.sample_rate);
      draw();
    } catch (err) {
      drawn = null;
      showError(`cannot draw the audio: ${err.message || err}`);
    }
  }

  // How closely the result follows each noise-optimisation control ("intensity correlation 0.62 · ...").
  function reportLine(report) {
    const MEASURES = { correlation: "correlation", accuracy: "pitch accuracy", seam_ratio: "seam ratio" };
    const parts = [];
    for (const [control, values] of Object.entries(report || {})) {
      for (const [key, words] of Object.entries(MEASURES)) {
        if (values && typeof values[key] === "number") parts.push(`${control} ${words} ${values[key].toFixed(2)}`);
      }
    }
    return parts.length ? `Controls: ${parts.join(" · ")}` : "";
  }

  // What reproduces the job (the CLI's sidecar fields and the generator's report, plus the job's id and inputs).
  function sidecar(job) {
    return Object.assign({
      prompt: job.prompt, seed: job.seed, model: job.model, duration: job.duration, sample_rate: job.sample_rate,
      format: job.format, controls: job.controls, inputs: job.inputs, generation_seconds: job.generation_seconds,
      id: job.id, created_at: job.created_at, finished_at: job.finished_at,
    }, job.info || {});
  }

  function cliLine(job, name) {
    // each flag with its value, so that a wrapped line never splits them
    const parts = ["tunesmith generate", shellQuote(job.prompt), `--model ${shellQuote(job.model)}`,
                   `--seed ${job.seed}`, `--duration ${job.duration}`];
    const missing = [];
    for (const [control, value] of Object.entries(job.controls || {})) {
      if (control === "mask") for (const [start, end] of value) parts.push(`--inpaint ${start}:${end}`);
      else if (control === "unconditional") { if (value) parts.push("--unconditional"); }
      else if (CLI_FLAGS[control]) parts.push(`${CLI_FLAGS[control]} ${shellQuote(String(value))}`);
      else missing.push(`${control}=${JSON.stringify(value)}`);
    }
    const files = [];
    for (const input of job.inputs || []) {  // the job's inputs: a list of their names
      if (CLI_FILES[input]) {
        parts.push(CLI_FILES[input]);
        files.push(CLI_FILES[input].split(" ")[1]);
      } else {
        missing.push(`${input} (an upload)`);
      }
    }
    parts.push(`-o ${shellQuote(`${name}.${job.format}`)}`);
    const notes = [];
    if (files.length) notes.push(`${files.join(", ")}: the ${files.length > 1 ? "files" : "file"} you uploaded.`);
    if (missing.length) {
      notes.push(`The CLI has no flag for ${missing.join(", ")}: the sidecar JSON keeps ${missing.length > 1 ? "them" : "it"}.`);
    }
    const note = notes.length ? notes.join(" ") : "Same model, seed and settings: the same audio.";
    return [parts, note];
  }

  el.copyCli.addEventListener("click", async () => {
    const range = document.createRange();
    range.selectNodeContents(el.cli);
    getSelection().removeAllRanges();
    getSelection().addRange(range);
    try {
      await navigator.clipboard.writeText(el.cli.textContent);
      el.copyCli.textContent = "Copied";
    } catch (_) {  // no clipboard access (plain http on another host): the line is selected
      el.copyCli.textContent = "Selected: press Ctrl+C";
    }
    setTimeout(() => { el.copyCli.textContent = "Copy"; }, 1500);
  });

  // -- pictures: waveform and spectrogram from the decoded audio ---------------------------------------

  async function decode(bytes, sampleRate) {
    const Offline = window.OfflineAudioContext || window.webkitOfflineAudioContext;
    const context = new Offline(1, 1, sampleRate || 44100);
    const buffer = await context.decodeAudioData(bytes.slice(0));
    const mono = new Float32Array(buffer.length);
    for (let c = 0; c < buffer.numberOfChannels; c++) {
      const data = buffer.getChannelData(c);
      for (let i = 0; i < data.length; i++) mono[i] += data[i] / buffer.numberOfChannels;
    }
    return { samples: mono, rate: buffer.sampleRate };
  }

  function sizeCanvas(canvas) {
    const ratio = window.devicePixelRatio || 1;
    const width = Math.max(1, Math.round(canvas.clientWidth * ratio));
    const height = Math.max(1, Math.round(canvas.clientHeight * ratio));
    if (canvas.width !== width || canvas.height !== height) {
      canvas.width = width;
      canvas.height = height;
    }
    return [width, height];
  }

  function cssVar(name) {
    return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  }

  function draw() {
    if (!drawn) return;
    drawWaveform(el.waveform, drawn.samples);
    drawSpectrogram(el.spectrogram, drawn.samples, drawn.rate);
  }

  function drawWaveform(canvas, samples) {
    const [w, h] = sizeCanvas(canvas);
    const ctx = canvas.getContext("2d");
    ctx.fillStyle = cssVar("--wave-bg");
    ctx.fillRect(0, 0, w, h);
    ctx.fillStyle = cssVar("--line");
    ctx.fillRect(0, Math.floor(h / 2), w, 1);
    let peak = 1e-9;
    for (let i = 0; i < samples.length; i++) peak = Math.max(peak, Math.abs(samples[i]));
    const scale = (h / 2 - 2) / Math.max(peak, 0.05);
    const per = samples.length / w;
    ctx.fillStyle = cssVar("--accent");
    for (let x = 0; x < w; x++) {
      const start = Math.floor(x * per);
      const end = Math.max(start + 1, Math.floor((x + 1) * per));
      let lo = 0;
      let hi = 0;
      for (let i = start; i < end && i < samples.length; i++) {
        if (samples[i] < lo) lo = samples[i];
        if (samples[i] > hi) hi = samples[i];
      }
      const top = h / 2 - hi * scale;
      ctx.fillRect(x, top, 1, Math.max(1, (hi - lo) * scale));
    }
  }

  // In-place radix-2 FFT of (re, im), length a power of two.
  function fft(re, im) {
    const n = re.length;
    for (let i = 1, j = 0; i < n; i++) {
      let bit = n >> 1;
      for (; j & bit; bit >>= 1) j ^= bit;
      j ^= bit;
      if (i < j) {
        [re[i], re[j]] = [re[j], re[i]];
        [im[i], im[j]] = [im[j], im[i]];
      }
    }
    for (let len = 2; len <= n; len <<= 1) {
      const angle = -2 * Math.PI / len;
      const wr = Math.cos(angle);
      const wi = Math.sin(angle);
      for (let i = 0; i < n; i += len) {
        let cr = 1;
        let ci = 0;
        for (let k = 0; k < len / 2; k++) {
          const a = i + k;
          const b = a + len / 2;
          const tr = re[b] * cr - im[b] * ci;
          const ti = re[b] * ci + im[b] * cr;
          re[b] = re[a] - tr;
          im[b] = im[a] - ti;
          re[a] += tr;
          im[a] += ti;
          const next = cr * wr - ci * wi;
          ci = cr * wi + ci * wr;
          cr = next;
        }
      }
    }
  }

  // magma-like colours from quiet (dark) to loud (light)
  const STOPS = [[0, 0, 4], [40, 11, 84], [101, 21, 110], [159, 42, 99], [212, 72, 66], [245, 125, 21],
                 [250, 193, 39], [252, 253, 191]];

  function colour(t) {
    const x = Math.min(1, Math.max(0, t)) * (STOPS.length - 1);
    const i = Math.min(STOPS.length - 2, Math.floor(x));
    const f = x - i;
    return STOPS[i].map((v, k) => v + (STOPS[i + 1][k] - v) * f);
  }

  function drawSpectrogram(canvas, samples, rate) {
    const [w, h] = sizeCanvas(canvas);
    const ctx = canvas.getContext("2d");
    const size = 1024;
    const bins = size / 2;
    const columns = w;
    const hop = Math.max(1, (samples.length - size) / Math.max(1, columns - 1));
    const hann = new Float32Array(size).map((_, i) => 0.5 - 0.5 * Math.cos(2 * Math.PI * i / size));
    const re = new Float32Array(size);
    const im = new Float32Array(size);
    const db = new Float32Array(columns * bins);
    let top = -Infinity;
    for (let c = 0; c < columns; c++) {
      const start = Math.round(c * hop);
      for (let i = 0; i < size; i++) {
        const s = samples[start + i];
        re[i] = (s === undefined ? 0 : s) * hann[i];
        im[i] = 0;
      }
      fft(re, im);
      for (let b = 0; b < bins; b++) {
        const v = 10 * Math.log10(re[b] * re[b] + im[b] * im[b] + 1e-12);
        db[c * bins + b] = v;
        if (v > top) top = v;
      }
    }
    // rows on a mel scale, low frequencies at the bottom
    const mel = (f) => 2595 * Math.log10(1 + f / 700);
    const hz = (m) => 700 * (Math.pow(10, m / 2595) - 1);
    const nyquist = rate / 2;
    const lowMel = mel(20);
    const highMel = mel(nyquist);
    const rowBin = new Int32Array(h);
    for (let y = 0; y < h; y++) {
      const f = hz(lowMel + (highMel - lowMel) * (1 - y / Math.max(1, h - 1)));
      rowBin[y] = Math.min(bins - 1, Math.max(0, Math.round(f / nyquist * bins)));
    }
    // colours from the quietest 2 % (or 80 dB below the loudest, if that is higher) to the loudest
    const sorted = Float32Array.from(db).sort();
    const floor = Math.max(top - 80, sorted[Math.floor(sorted.length * 0.02)]);
    const range = Math.max(1e-6, top - floor);
    const image = ctx.createImageData(w, h);
    for (let y = 0; y < h; y++) {
      for (let x = 0; x < w; x++) {
        const [r, g, b] = colour(1 + (db[x * bins + rowBin[y]] - top) / range);
        const o = (y * w + x) * 4;
        image.data[o] = r;
        image.data[o + 1] = g;
        image.data[o + 2] = b;
        image.data[o + 3] = 255;
      }
    }
    ctx.putImageData(image, 0, 0);
    el.specRange.textContent = `20 Hz – ${Math.round(nyquist / 100) / 10} kHz, mel scale, ${Math.round(range)} dB range`;
  }

  let resizeTimer = 0;
  window.addEventListener("resize", () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(draw, 150);
  });

  // -- this browser's recent generations ------------------------------------------------------------

  function remember(job) {
    const list = storage(RECENT_STORE, []).filter((item) => item && item.id);
    const entry = {
      id: job.id, prompt: job.prompt, model: job.model, duration: job.duration, seed: job.seed,
      format: job.format, status: job.status, created_at: job.created_at,
    };
    const index = list.findIndex((item) => item.id === job.id);
    if (index >= 0) list[index] = entry;  // an update keeps its place
    else list.unshift(entry);
    store(RECENT_STORE, list.slice(0, RECENT_MAX));
    renderRecent();
  }

  function renderRecent() {
    const list = storage(RECENT_STORE, []).filter((item) => item && item.id);
    el.recentEmpty.hidden = list.length > 0;
    el.clearRecent.hidden = list.length === 0;
    el.recentList.replaceChildren(...list.map((item) => {
      const li = document.createElement("li");
      const button = document.createElement("button");
      button.type = "button";
      button.className = "recent-item";
      button.dataset.id = item.id;
      const title = document.createElement("span");
      title.className = "recent-prompt";
      title.textContent = item.prompt;
      const meta = document.createElement("span");
      meta.className = "meta";
      meta.textContent = `${item.model} · ${fmtSeconds(item.duration)} · seed ${item.seed} · ${ago(item.created_at)}`;
      const badge = document.createElement("span");
      badge.className = `badge ${item.status}`;
      badge.textContent = item.status;
      button.append(title, badge, meta);
      button.setAttribute("aria-label", `Open "${item.prompt}", ${item.status}, seed ${item.seed}`);
      button.addEventListener("click", () => open(item.id));
      li.append(button);
      return li;
    }));
    markCurrent();
  }

  function markCurrent() {
    for (const button of el.recentList.querySelectorAll(".recent-item")) {
      if (current && button.dataset.id === current.id) button.setAttribute("aria-current", "true");
      else button.removeAttribute("aria-current");
    }
  }

  // Re-open a job: its settings back in the form, and its result (or its progress).
  async function open(id) {
    clearError();
    setStatus("Loading…");
    try {
      const job = await (await api("GET", `/v1/generations/${id}`)).json();
      fill(job);
      remember(job);
      show(job);
    } catch (err) {
      if (err.status === 404) {
        const list = storage(RECENT_STORE, []).map((item) => (item.id === id ? Object.assign(item, { status: "expired" }) : item));
        store(RECENT_STORE, list);
        renderRecent();
      }
      showError(err.message);
      setStatus("Ready.");
    }
  }

  function fill(job) {
    el.prompt.value = job.prompt;
    el.duration.value = job.duration;
    el.seed.value = job.seed;
    if (models.some((m) => m.id === job.model)) {
      el.model.value = job.model;
      onModelChange();
    }
    el.format.value = job.format;
    for (const name of SETTINGS) $(name).value = job.controls[name] !== undefined ? job.controls[name] : "";
    el.strength.value = job.controls.strength !== undefined ? job.controls.strength : "";
    el.mask.value = (job.controls.mask || []).map(([a, b]) => `${a}-${b}`).join(", ");
    if (SETTINGS.some((name) => job.controls[name] !== undefined)) el.advanced.open = true;
  }

  el.clearRecent.addEventListener("click", () => {
    store(RECENT_STORE, []);
    renderRecent();
  });

  // -- start --------------------------------------------------------------------------------------------

  renderRecent();
  loadModels().then(() => {
    const id = location.hash.slice(1);
    if (/^[0-9a-f]{32}$/.test(id)) open(id);
  });
})();
