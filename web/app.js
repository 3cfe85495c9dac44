// Glimpse's web page: search, browse, upload and feedback over the public HTTP API. Plain
// JavaScript with no dependencies and nothing fetched from another origin.
"use strict";

const PAGE_SIZE = 40;
const MAX_DEPTH = 1000; // offset + top_k limit of /api/search
const UPLOADS_AT_ONCE = 2;
const TOKEN_KEY = "glimpse.token";

const $ = (id) => document.getElementById(id);

/** Everything the page shows, in one place. */
const state = {
  mode: "browse", // "browse" (date order, filters only) or "search" (ranked)
  query: "", // the query as sent, filters included
  items: [], // {photo, rank?, score?, queryId?}
  seen: new Set(), // photo ids on the page, so a page boundary never shows one twice
  cursor: null, // browse: next page cursor
  offset: 0, // search: next page offset
  exhausted: false,
  loading: false,
  generation: 0, // bumps on every new query, so late answers of an old one are dropped
  readsProtected: false,
  status: null,
  started: false, // start() made the first load: the scroll observer loads only later pages
  viewerIndex: -1,
};

// ---------------------------------------------------------------------------------------------
// The API

/** An error with the server's words, or ours when the server could not be reached. */
class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

function token() {
  return localStorage.getItem(TOKEN_KEY) || "";
}

function authHeaders() {
  const saved = token();
  return saved ? { Authorization: `Bearer ${saved}` } : {};
}

async function errorFrom(response) {
  let code = "http_" + response.status;
  let message = `The server answered ${response.status} ${response.statusText}.`;
  try {
    const body = await response.json();
    if (body && body.error) {
      code = body.error.code || code;
      message = body.error.message || message;
    }
  } catch (_) {
    // not JSON: keep the status line
  }
  const retryAfter = Number(response.headers.get("Retry-After"));
  if (response.status === 503 && retryAfter > 0) {
    message += ` Try again in ${retryAfter} s.`;
  }
  return new ApiError(response.status, code, message);
}

async function api(path, options = {}) {
  let response;
  try {
    response = await fetch(path, {
      ...options,
      headers: { ...authHeaders(), ...(options.headers || {}) },
    });
  } catch (_) {
    throw new ApiError(0, "unreachable",
      "Glimpse cannot be reached. Is `glimpse serve` still running?");
  }
  if (!response.ok) {
    throw await errorFrom(response);
  }
  if (response.status === 204) {
    return null;
  }
  return response.json();
}

/** Sets an <img> source, through an authorised fetch when reads need the token. */
function setImage(img, url) {
  // A photo without a thumbnail yet (the edge's pool still asleep, say) keeps a plain tile.
  img.classList.remove("unavailable");
  img.onerror = () => img.classList.add("unavailable");
  if (!state.readsProtected) {
    img.src = url;
    return;
  }
  fetch(url, { headers: authHeaders() })
    .then((r) => (r.ok ? r.blob() : Promise.reject(r)))
    .then((blob) => {
      if (img.dataset.url === url) {
        img.src = URL.createObjectURL(blob);
      }
    })
    .catch(() => {
      img.alt += " (could not be loaded)";
      img.classList.add("unavailable");
    });
  img.dataset.url = url;
}

// ---------------------------------------------------------------------------------------------
// Words

const dateFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeZone: "UTC" });
const dateTimeFormat = new Intl.DateTimeFormat(undefined, {
  dateStyle: "medium", timeStyle: "short", timeZone: "UTC",
});

function formatDate(seconds, withTime) {
  return (withTime ? dateTimeFormat : dateFormat).format(new Date(seconds * 1000));
}

function formatBytes(bytes) {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(0)} KB`;
  return `${(bytes / 1024 / 1024).toFixed(1)} MB`;
}

function plural(n, one, many) {
  return `${n.toLocaleString()} ${n === 1 ? one : many}`;
}

/** Short words describing a photo, for alt text and labels. */
function describe(item) {
  const photo = item.photo;
  const parts = [];
  if (item.rank) parts.push(`Result ${item.rank}, score ${item.score.toFixed(2)}`);
  else parts.push("Photo");
  if (photo.album) parts.push(`album ${photo.album}`);
  parts.push(formatDate(photo.dated_at, false));
  if (photo.status === "failed") parts.push("could not be indexed");
  if (photo.status === "pending") parts.push("waiting to be indexed");
  return parts.join(", ");
}

// ---------------------------------------------------------------------------------------------
// The query: the box plus the filter controls

/** Whether a query ranks by anything, or is filters only (then it is browsed in date order). */
function ranks(text) {
  const rest = text.replace(/(^|\s)-?(album|camera|after|before):("[^"]*"?|\S*)/g, " ");
  return rest.trim() !== "";
}

function quoteValue(value) {
  return /[\s"]/.test(value) ? `"${value.replace(/"/g, "")}"` : value;
}

function nextDay(isoDay) {
  const day = new Date(isoDay + "T00:00:00Z");
  day.setUTCDate(day.getUTCDate() + 1);
  return day.toISOString().slice(0, 10);
}

/** The query to send: what was typed, then the filter controls in the query language. */
function composedQuery() {
  const parts = [$("query").value.trim()];
  const album = $("album-filter").value;
  if (album) parts.push(`album:${quoteValue(album)}`);
  const from = $("from-filter").value;
  if (from) parts.push(`after:${from}`);
  const to = $("to-filter").value;
  if (to) parts.push(`before:${nextDay(to)}`); // "to" includes its day
  return parts.filter(Boolean).join(" ");
}

/** Puts the page's query in the address, so back, forward and links work. */
function rememberInAddress(push) {
  const params = new URLSearchParams();
  const typed = $("query").value.trim();
  if (typed) params.set("q", typed);
  if ($("album-filter").value) params.set("album", $("album-filter").value);
  if ($("from-filter").value) params.set("from", $("from-filter").value);
  if ($("to-filter").value) params.set("to", $("to-filter").value);
  const address = params.toString() ? `?${params}` : location.pathname;
  if (push) history.pushState(null, "", address);
  else history.replaceState(null, "", address);
}

function restoreFromAddress() {
  const params = new URLSearchParams(location.search);
  $("query").value = params.get("q") || "";
  ensureAlbumOption(params.get("album") || "");
  $("album-filter").value = params.get("album") || "";
  $("from-filter").value = params.get("from") || "";
  $("to-filter").value = params.get("to") || "";
}

// ---------------------------------------------------------------------------------------------
// Results

function showMessage(text) {
  const box = $("message");
  box.textContent = text;
  box.hidden = !text;
}

function resetResults() {
  state.generation += 1;
  state.items = [];
  state.seen = new Set();
  state.cursor = null;
  state.offset = 0;
  state.exhausted = false;
  state.loading = false;
  $("grid").replaceChildren();
  $("empty").hidden = true;
  $("summary").textContent = "";
  showMessage("");
}

async function run(push) {
  state.started = true;
  rememberInAddress(push);
  resetResults();
  state.query = composedQuery();
  state.mode = ranks(state.query) ? "search" : "browse";
  await loadMore();
}

async function loadMore() {
  if (state.loading || state.exhausted) return;
  state.loading = true;
  const generation = state.generation;
  $("summary").textContent = state.items.length ? $("summary").textContent : "Loading…";
  try {
    const fresh = state.mode === "search" ? await searchPage() : await browsePage();
    if (generation !== state.generation) return;
    appendItems(fresh);
    summarise();
  } catch (error) {
    if (generation !== state.generation) return;
    state.exhausted = true;
    $("summary").textContent = "";
    showMessage(error.message);
    if (error.status === 401) askForToken(error.message);
  } finally {
    if (generation === state.generation) {
      state.loading = false;
      $("more-button").hidden = state.exhausted;
    }
  }
}

async function searchPage() {
  const topK = Math.min(PAGE_SIZE, MAX_DEPTH - state.offset);
  const params = new URLSearchParams({ q: state.query, top_k: topK, offset: state.offset });
  const response = await api(`/api/search?${params}`);
  state.offset += topK;
  state.exhausted = response.results.length < topK || state.offset >= MAX_DEPTH;
  state.lastTimings = response.timings;
  return response.results.map((r) => ({
    photo: r.photo, rank: r.rank, score: r.score, queryId: response.query_id,
  }));
}

async function browsePage() {
  const params = new URLSearchParams({ limit: PAGE_SIZE });
  if (state.query) params.set("q", state.query);
  if (state.cursor) params.set("cursor", state.cursor);
  const page = await api(`/api/photos?${params}`);
  state.cursor = page.next_cursor;
  state.exhausted = !page.next_cursor;
  return page.photos.map((photo) => ({ photo }));
}

function appendItems(fresh) {
  const grid = $("grid");
  for (const item of fresh) {
    if (state.seen.has(item.photo.id)) continue;
    state.seen.add(item.photo.id);
    const index = state.items.push(item) - 1;
    grid.append(tile(item, index));
  }
}

/** What a photo's tile shows while it is not searchable (an indexed one shows nothing). */
const STATUS_BADGES = {
  failed: { text: "not indexed", kind: "badge failed" },
  pending: { text: "indexing", kind: "badge" },
};

function tile(item, index) {
  const li = document.createElement("li");
  const button = document.createElement("button");
  button.type = "button";
  button.className = "tile";
  button.dataset.index = String(index);
  const img = document.createElement("img");
  img.loading = "lazy";
  img.decoding = "async";
  img.alt = describe(item);
  img.width = 320;
  img.height = 320;
  setImage(img, `/api/photos/${item.photo.id}/thumbnail`);
  button.append(img);
  // The score of a result, or why a photo is not searchable yet (the alt text says it in words).
  const badge = item.rank
    ? { text: item.score.toFixed(2), kind: "badge" }
    : STATUS_BADGES[item.photo.status];
  if (badge) {
    const span = document.createElement("span");
    span.className = badge.kind;
    span.textContent = badge.text;
    span.setAttribute("aria-hidden", "true");
    button.append(span);
  }
  button.addEventListener("click", () => activate(index));
  li.append(button);
  return li;
}

function summarise() {
  const count = state.items.length;
  const status = state.status && state.status.photos;
  const empty = $("empty");
  if (count === 0) {
    $("summary").textContent = "";
    empty.replaceChildren();
    if (status && status.photos === 0) {
      empty.append(
        paragraph("No photos yet — add a folder or drop files here."),
        paragraph("Start Glimpse with glimpse serve --library ~/Pictures, or drop photos on this page (or press Upload)."),
      );
    } else if (state.mode === "search") {
      empty.append(paragraph(`Nothing matched “${state.query}”.`));
      if (status && status.pending > 0) {
        empty.append(paragraph(`${plural(status.pending, "photo is", "photos are")} still being indexed; search again in a moment.`));
      } else {
        empty.append(paragraph("Try other words, fewer minus terms, or clear the filters."));
      }
    } else {
      empty.append(paragraph("No photo passes these filters. Clear them to see everything."));
    }
    empty.hidden = false;
    return;
  }
  empty.hidden = true;
  const more = state.exhausted ? "" : "+";
  if (state.mode === "search") {
    const ms = state.lastTimings ? ` in ${Math.round(state.lastTimings.total_ms)} ms` : "";
    const example = /^like:([0-9a-f]{16})$/.exec(state.query);
    $("summary").textContent = example
      ? `${count}${more} photos most like photo ${example[1]}${ms}`
      : `${count}${more} results for “${state.query}”${ms}`;
  } else {
    const what = state.query ? ` matching ${state.query}` : "";
    $("summary").textContent = `${plural(count, "photo", "photos")}${more}${what}, newest first`;
  }
}

function paragraph(text) {
  const p = document.createElement("p");
  p.textContent = text;
  return p;
}

/** A result was chosen: record the click (search results only), then show the photo. */
function activate(index) {
  const item = state.items[index];
  if (item.queryId) {
    fetch(`/api/search/${item.queryId}/clicks`, {
      method: "POST",
      keepalive: true,
      headers: { "Content-Type": "application/json", ...authHeaders() },
      body: JSON.stringify({ rank: item.rank }),
    }).catch(() => {}); // feedback is best effort: the person still sees the photo
  }
  openViewer(index);
}

// ---------------------------------------------------------------------------------------------
// Keyboard: arrows move between tiles, / focuses the search box

function tileButtons() {
  return Array.from($("grid").querySelectorAll(".tile"));
}

function columns(buttons) {
  if (buttons.length === 0) return 1;
  const top = buttons[0].getBoundingClientRect().top;
  const sameRow = buttons.findIndex((b) => b.getBoundingClientRect().top !== top);
  return sameRow === -1 ? buttons.length : sameRow;
}

$("grid").addEventListener("keydown", (event) => {
  const buttons = tileButtons();
  const at = buttons.indexOf(document.activeElement);
  if (at === -1) return;
  const step = { ArrowRight: 1, ArrowLeft: -1, ArrowDown: columns(buttons), ArrowUp: -columns(buttons) }[event.key];
  let target;
  if (step !== undefined) target = at + step;
  else if (event.key === "Home") target = 0;
  else if (event.key === "End") target = buttons.length - 1;
  else return;
  event.preventDefault();
  target = Math.max(0, Math.min(buttons.length - 1, target));
  buttons[target].focus();
  if (target >= buttons.length - columns(buttons)) loadMore();
});

document.addEventListener("keydown", (event) => {
  const typing = ["INPUT", "SELECT", "TEXTAREA"].includes(document.activeElement.tagName);
  if (event.key === "/" && !typing && !$("viewer").open && !$("token-dialog").open) {
    event.preventDefault();
    $("query").focus();
    $("query").select();
  }
});

// ---------------------------------------------------------------------------------------------
// The large view

const viewable = new Set(["jpeg", "png", "webp", "gif", "bmp"]);

function fact(list, term, value) {
  if (value === null || value === undefined || value === "") return;
  const dt = document.createElement("dt");
  dt.textContent = term;
  const dd = document.createElement("dd");
  dd.textContent = value;
  list.append(dt, dd);
}

function openViewer(index) {
  const item = state.items[index];
  if (!item) return;
  state.viewerIndex = index;
  const photo = item.photo;
  const img = $("viewer-img");
  img.removeAttribute("src");
  img.alt = describe(item);
  const original = `/api/photos/${photo.id}/original`;
  setImage(img, viewable.has(photo.format) ? original : `/api/photos/${photo.id}/thumbnail`);
  $("viewer-title").textContent = photo.album ? `${photo.album}` : "Photo";
  const facts = $("viewer-facts");
  facts.replaceChildren();
  if (item.rank) fact(facts, "Rank", `${item.rank} (score ${item.score.toFixed(2)})`);
  fact(facts, "Taken", photo.taken_at ? formatDate(photo.taken_at, true) : null);
  fact(facts, "Dated", photo.taken_at ? null : `${formatDate(photo.dated_at, true)} (file date)`);
  fact(facts, "Album", photo.album);
  fact(facts, "Camera", photo.camera);
  if (photo.location) {
    fact(facts, "Location", `${photo.location.latitude.toFixed(5)}, ${photo.location.longitude.toFixed(5)}`);
  }
  fact(facts, "Size", `${photo.width} × ${photo.height}, ${photo.format.toUpperCase()}, ${formatBytes(photo.bytes)}`);
  fact(facts, "File", photo.origin.kind === "library" ? photo.origin.key : "uploaded");
  fact(facts, "Added", formatDate(photo.added_at, true));
  fact(facts, "Status", { pending: "waiting to be indexed", indexed: "indexed", failed: "could not be indexed" }[photo.status]);
  fact(facts, "Why", photo.status === "failed" ? photo.last_error : null);
  fact(facts, "Id", photo.id);
  const link = $("viewer-original");
  link.href = original;
  link.hidden = state.readsProtected;
  $("viewer-similar").disabled = photo.status !== "indexed";
  $("viewer-similar").title = photo.status === "indexed" ? "" : "Only indexed photos can be compared";
  $("viewer-delete").hidden = photo.origin.kind !== "upload";
  $("viewer-retry").hidden = photo.status !== "failed";
  $("viewer-prev").disabled = index === 0;
  $("viewer-next").disabled = index === state.items.length - 1 && state.exhausted;
  $("viewer-error").hidden = true;
  if (!$("viewer").open) $("viewer").showModal();
}

async function step(delta) {
  const target = state.viewerIndex + delta;
  if (target >= state.items.length && !state.exhausted) await loadMore();
  if (target >= 0 && target < state.items.length) openViewer(target);
}

$("viewer-close").addEventListener("click", () => $("viewer").close());
$("viewer-prev").addEventListener("click", () => step(-1));
$("viewer-next").addEventListener("click", () => step(1));
$("viewer").addEventListener("keydown", (event) => {
  if (event.key === "ArrowLeft") { event.preventDefault(); step(-1); }
  if (event.key === "ArrowRight") { event.preventDefault(); step(1); }
});
$("viewer").addEventListener("close", () => {
  const button = tileButtons()[state.viewerIndex];
  if (button) button.focus();
});
$("viewer-similar").addEventListener("click", () => {
  const photo = state.items[state.viewerIndex].photo;
  $("viewer").close();
  $("query").value = `like:${photo.id}`;
  run(true);
});
$("viewer-retry").addEventListener("click", async () => {
  const index = state.viewerIndex;
  let photo;
  try {
    photo = await api(`/api/photos/${state.items[index].photo.id}/retry`, { method: "POST" });
  } catch (error) {
    $("viewer-error").textContent = error.message;
    $("viewer-error").hidden = false;
    if (error.status === 401) askForToken(error.message);
    return;
  }
  state.items[index].photo = photo;
  openViewer(index);
  refreshStatus();
});
$("viewer-delete").addEventListener("click", async () => {
  const index = state.viewerIndex;
  const photo = state.items[index].photo;
  if (!confirm("Delete this uploaded photo from Glimpse? This cannot be undone.")) return;
  try {
    await api(`/api/photos/${photo.id}`, { method: "DELETE" });
  } catch (error) {
    $("viewer-error").textContent = error.message;
    $("viewer-error").hidden = false;
    if (error.status === 401) askForToken(error.message);
    return;
  }
  $("viewer").close();
  state.items.splice(index, 1);
  state.seen.delete(photo.id);
  $("grid").replaceChildren(...state.items.map((item, i) => tile(item, i)));
  summarise();
  refreshStatus();
});

// ---------------------------------------------------------------------------------------------
// The token

let tokenWaiters = [];

/** Opens the token dialog; resolves with whether a token was saved. */
function askForToken(reason) {
  $("token-reason").textContent = reason ||
    "Uploads and deletions need the token `glimpse serve` printed on its first start (also in the data directory's `token` file). It is kept in this browser only.";
  $("token-input").value = "";
  if (!$("token-dialog").open) $("token-dialog").showModal();
  return new Promise((resolve) => tokenWaiters.push(resolve));
}

function closeTokenDialog(saved) {
  $("token-dialog").close();
  const waiters = tokenWaiters;
  tokenWaiters = [];
  waiters.forEach((resolve) => resolve(saved));
}

$("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const value = $("token-input").value.trim();
  if (!value) {
    $("token-reason").textContent = "Paste the token first (or Cancel).";
    return;
  }
  localStorage.setItem(TOKEN_KEY, value);
  closeTokenDialog(true);
  if (state.readsProtected) start();
});
$("token-forget").addEventListener("click", () => {
  localStorage.removeItem(TOKEN_KEY);
  closeTokenDialog(false);
});
$("token-cancel").addEventListener("click", () => closeTokenDialog(false));
$("token-dialog").addEventListener("cancel", () => closeTokenDialog(false));
$("token-open").addEventListener("click", () => askForToken());

// ---------------------------------------------------------------------------------------------
// Uploads

const uploadQueue = [];
let uploadsRunning = 0;
let uploadTally = { added: 0, duplicates: 0, refused: 0 };

function openUploads() {
  $("uploads").hidden = false;
}

function queueFiles(files) {
  if (files.length === 0) return;
  openUploads();
  for (const file of files) {
    const row = document.createElement("li");
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = file.name;
    name.title = file.name;
    const progress = document.createElement("progress");
    progress.max = 1;
    progress.value = 0;
    progress.setAttribute("aria-label", `Upload of ${file.name}`);
    const outcome = document.createElement("span");
    outcome.className = "outcome";
    outcome.textContent = "waiting";
    row.append(name, progress, outcome);
    $("upload-list").append(row);
    uploadQueue.push({ file, progress, outcome, album: $("upload-album").value.trim() });
  }
  pumpUploads();
}

function pumpUploads() {
  while (uploadsRunning < UPLOADS_AT_ONCE && uploadQueue.length > 0) {
    const job = uploadQueue.shift();
    uploadsRunning += 1;
    uploadOne(job).finally(() => {
      uploadsRunning -= 1;
      pumpUploads();
      if (uploadsRunning === 0 && uploadQueue.length === 0) uploadsFinished();
    });
  }
  const { added, duplicates, refused } = uploadTally;
  const waiting = uploadQueue.length + uploadsRunning;
  $("upload-summary").textContent =
    `${plural(added, "photo", "photos")} added, ${plural(duplicates, "duplicate", "duplicates")}, ${refused} refused` +
    (waiting ? ` — ${waiting} to go` : "");
}

/** Sends `body` with `method` to `url`, reporting upload progress on `progress`; the status and
 * the JSON answer (status 0 when nothing answered). */
function transfer(method, url, body, headers, progress) {
  return new Promise((resolve) => {
    const request = new XMLHttpRequest();
    request.open(method, url);
    for (const [name, value] of Object.entries(headers)) request.setRequestHeader(name, value);
    if (progress) {
      request.upload.onprogress = (event) => {
        if (event.lengthComputable) progress.value = event.loaded / event.total;
      };
    }
    request.onload = () => {
      let answer = null;
      try { answer = JSON.parse(request.responseText); } catch (_) { /* not JSON */ }
      resolve({ status: request.status, body: answer });
    };
    request.onerror = () => resolve({ status: 0, body: null });
    request.send(body);
  });
}

/** The media type of `file` by its first bytes, as the server will judge it (the browser's
 * guess goes by the name, and is empty for names it does not know). */
async function mediaType(file) {
  const head = new Uint8Array(await file.slice(0, 12).arrayBuffer());
  const bytes = (at, ...expected) => expected.every((b, i) => head[at + i] === b);
  const text = (at, expected) => bytes(at, ...Array.from(expected, (c) => c.charCodeAt(0)));
  if (bytes(0, 0xff, 0xd8, 0xff)) return "image/jpeg";
  if (bytes(0, 0x89, 0x50, 0x4e, 0x47)) return "image/png";
  if (text(0, "GIF8")) return "image/gif";
  if (text(0, "RIFF") && text(8, "WEBP")) return "image/webp";
  if (text(0, "BM")) return "image/bmp";
  if (bytes(0, 0x49, 0x49, 0x2a, 0x00) || bytes(0, 0x4d, 0x4d, 0x00, 0x2a)) return "image/tiff";
  return file.type;
}

/** How `file` goes to the server, by the limits /api/status gave: in the request ("direct"),
 * straight to storage ("staged", for an original too large for a request where the server
 * takes those), or not at all ("too large"). */
function uploadRoute(file) {
  const limits = state.status && state.status.uploads;
  if (!limits || file.size <= limits.max_bytes) return "direct";
  if (limits.staged_max_bytes !== null && file.size <= limits.staged_max_bytes) return "staged";
  return "too large";
}

/** Sends an original too large for a request straight to storage: declares its size and type,
 * PUTs it to the URL handed back, then completes the upload. */
async function sendStaged(job) {
  let started;
  try {
    started = await api("/api/uploads", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ bytes: job.file.size, content_type: await mediaType(job.file) }),
    });
  } catch (error) {
    return { status: error.status, body: { error: { code: error.code, message: error.message } } };
  }
  const put = await transfer("PUT", started.put_url, job.file, started.put_headers, job.progress);
  if (put.status < 200 || put.status >= 300) {
    const message = put.status === 0
      ? "not sent: the storage could not be reached"
      : `the storage refused the original (${put.status})`;
    return { status: put.status, body: { error: { message } } };
  }
  const album = job.album ? `?album=${encodeURIComponent(job.album)}` : "";
  return transfer("POST", started.complete_url + album, null, authHeaders(), null);
}

function send(job) {
  if (uploadRoute(job.file) === "staged") return sendStaged(job);
  const form = new FormData();
  form.append("file", job.file, job.file.name);
  if (job.album) form.append("album", job.album);
  return transfer("POST", "/api/photos", form, authHeaders(), job.progress);
}

/** Sends the upload until the server takes its token: on a 401 it sends again at once when the
 * saved token changed while the request was out (the person answered another upload's prompt
 * meanwhile), else asks for the token and sends again; the last answer when they cancel. */
async function sendWithToken(job) {
  for (;;) {
    const sentWith = token();
    const answer = await send(job);
    if (answer.status !== 401) return answer;
    if (token() !== sentWith) continue; // refused the old token: send the new one
    const reason = answer.body && answer.body.error ? answer.body.error.message : "";
    if (!await askForToken(reason)) return answer;
  }
}

async function uploadOne(job) {
  if (uploadRoute(job.file) === "too large") {
    const { staged_max_bytes: staged, max_bytes: direct } = state.status.uploads;
    uploadTally.refused += 1;
    job.outcome.className = "outcome error";
    job.outcome.textContent =
      `too large: ${formatBytes(job.file.size)}, and this Glimpse takes originals up to ` +
      `${formatBytes(staged === null ? direct : staged)} (its operator can raise the limit)`;
    return;
  }
  job.outcome.textContent = "uploading…";
  job.outcome.className = "outcome";
  const { status, body } = await sendWithToken(job);
  job.progress.value = 1;
  if (status === 202) {
    uploadTally.added += 1;
    job.outcome.className = "outcome ok";
    job.outcome.textContent = "added — indexing";
  } else if (status === 200) {
    uploadTally.duplicates += 1;
    job.outcome.className = "outcome duplicate";
    job.outcome.textContent = "already in your library (duplicate)";
  } else {
    uploadTally.refused += 1;
    job.outcome.className = "outcome error";
    job.outcome.textContent = status === 0
      ? "not sent: Glimpse cannot be reached"
      : (body && body.error && body.error.message) || `refused (${status})`;
  }
}

function uploadsFinished() {
  refreshStatus();
  if (state.mode === "browse") run(false);
}

$("upload-open").addEventListener("click", () => {
  openUploads();
  $("file-input").click();
});
$("uploads-close").addEventListener("click", () => { $("uploads").hidden = true; });
$("file-input").addEventListener("change", (event) => {
  queueFiles(Array.from(event.target.files));
  event.target.value = "";
});

let dragDepth = 0;
const carriesFiles = (event) => Array.from(event.dataTransfer.types).includes("Files");
window.addEventListener("dragenter", (event) => {
  if (!carriesFiles(event)) return;
  dragDepth += 1;
  $("drop-overlay").hidden = false;
});
window.addEventListener("dragleave", () => {
  dragDepth = Math.max(0, dragDepth - 1);
  if (dragDepth === 0) $("drop-overlay").hidden = true;
});
window.addEventListener("dragover", (event) => {
  if (carriesFiles(event)) event.preventDefault();
});
window.addEventListener("drop", (event) => {
  if (!carriesFiles(event)) return;
  event.preventDefault();
  dragDepth = 0;
  $("drop-overlay").hidden = true;
  queueFiles(Array.from(event.dataTransfer.files));
});

// ---------------------------------------------------------------------------------------------
// Library status and albums

let statusTimer = null;

async function refreshStatus() {
  clearTimeout(statusTimer);
  let status;
  try {
    status = await api("/api/status");
  } catch (error) {
    $("indexing").hidden = false;
    $("indexing-text").textContent = error.message;
    $("indexing-progress").hidden = true;
    statusTimer = setTimeout(refreshStatus, 10000);
    return;
  }
  const before = state.status;
  state.status = status;
  // The library folder cannot be read (a disk not mounted?): its photos are kept meanwhile.
  $("library-problem").hidden = status.library_available !== false;
  $("library-problem").textContent = status.library_available === false
    ? `Your library folder is unavailable: ${status.library_problem}`
    : "";
  const { photos, pending, indexed, failed } = status.photos;
  const box = $("indexing");
  $("indexing-progress").hidden = false;
  if (pending > 0) {
    box.hidden = false;
    $("indexing-text").textContent =
      `Indexing: ${indexed.toLocaleString()} of ${plural(photos, "photo", "photos")} done` +
      (failed ? `, ${failed} could not be read` : "") + ". Search finds photos as they are done.";
    $("indexing-progress").max = photos;
    $("indexing-progress").value = indexed + failed;
  } else {
    box.hidden = failed === 0;
    $("indexing-text").textContent = `${plural(photos, "photo", "photos")} indexed` +
      (failed ? `; ${failed} could not be read (see each photo for why)` : "") + ".";
    $("indexing-progress").hidden = true;
  }
  const grew = before && before.photos.photos !== photos;
  if (grew) loadAlbums();
  const browsingAll = state.mode === "browse" && !state.query && !state.cursor;
  if (grew && browsingAll && !$("viewer").open) {
    run(false); // an empty library is filling up: show it
  } else if (state.items.length === 0 && !state.loading) {
    summarise();
  }
  statusTimer = setTimeout(refreshStatus, pending > 0 ? 2000 : 15000);
}

function ensureAlbumOption(name) {
  if (!name) return;
  const select = $("album-filter");
  if (Array.from(select.options).some((o) => o.value === name)) return;
  const option = document.createElement("option");
  option.value = name;
  option.textContent = name;
  select.append(option);
}

async function loadAlbums() {
  let albums;
  try {
    albums = (await api("/api/albums")).albums;
  } catch (_) {
    return; // the filter keeps its current options
  }
  const select = $("album-filter");
  const chosen = select.value;
  select.replaceChildren(new Option("All albums", ""));
  for (const album of albums) {
    select.append(new Option(`${album.name} (${album.photos})`, album.name));
  }
  ensureAlbumOption(chosen);
  select.value = chosen;
}

// ---------------------------------------------------------------------------------------------
// Wiring

$("search-form").addEventListener("submit", (event) => {
  event.preventDefault();
  run(true);
});
for (const id of ["album-filter", "from-filter", "to-filter"]) {
  $(id).addEventListener("change", () => run(true));
}
$("filters-clear").addEventListener("click", () => {
  $("album-filter").value = "";
  $("from-filter").value = "";
  $("to-filter").value = "";
  run(true);
});
$("help-toggle").addEventListener("click", () => {
  const help = $("help");
  help.hidden = !help.hidden;
  $("help-toggle").setAttribute("aria-expanded", String(!help.hidden));
});
for (const example of document.querySelectorAll("button.example")) {
  example.addEventListener("click", () => {
    $("query").value = example.textContent;
    run(true);
  });
}
$("more-button").addEventListener("click", () => loadMore());
new IntersectionObserver((entries) => {
  // Only pages after the first: the first load is start()'s, once it knows what to show.
  if (state.started && entries.some((e) => e.isIntersecting)) loadMore();
}, { rootMargin: "600px" }).observe($("more"));
window.addEventListener("popstate", () => {
  restoreFromAddress();
  run(false);
});

/** First load: find out whether reads need the token, then show the library. */
async function start() {
  try {
    await fetch("/api/status", { headers: authHeaders() }).then(async (r) => {
      if (r.status === 401) throw await errorFrom(r);
    });
    state.readsProtected = !!token() && (await fetch("/api/status")).status === 401;
  } catch (error) {
    state.readsProtected = true;
    showMessage("This Glimpse keeps its photos private: paste the token to see them.");
    askForToken(error.message);
    return;
  }
  showMessage("");
  restoreFromAddress();
  await Promise.all([refreshStatus(), loadAlbums()]);
  await run(false);
}

start();
