// Browser tests of Glimpse's web page in Debian's headless Chromium, driven by playwright-core.
// glimpse/tests/web.rs starts two `glimpse serve` processes with the small test checkpoint and
// runs this file with:
//   GLIMPSE_URL        a server whose library (fixture images in albums Trips and Home) is indexed
//   GLIMPSE_TOKEN      its write token
//   GLIMPSE_PHOTOS     how many photos its library holds
//   GLIMPSE_EMPTY_URL  a server with no photos at all, taking uploads up to 1 MB
//   GLIMPSE_EMPTY_TOKEN  its write token
//   GLIMPSE_PRIVATE_URL, GLIMPSE_PRIVATE_TOKEN  a server of the same library with --protect-reads
//   UPLOAD_GOOD        a photo that is in neither library
//   UPLOAD_BAD         a text file
//   UPLOAD_DUPLICATE   a photo that is already in the first library
//   SCREENSHOTS        where to save a screenshot of each main state
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { readFileSync, mkdirSync } from "node:fs";
import { basename, join } from "node:path";
import { launchChromium } from "./chromium.mjs";

const env = (name) => {
  const value = process.env[name];
  assert.ok(value, `${name} must be set (glimpse/tests/web.rs sets it)`);
  return value;
};
const base = env("GLIMPSE_URL");
const emptyBase = env("GLIMPSE_EMPTY_URL");
const token = env("GLIMPSE_TOKEN");
const libraryPhotos = Number(env("GLIMPSE_PHOTOS"));
const screenshots = env("SCREENSHOTS");
mkdirSync(screenshots, { recursive: true });

const TIMEOUT = 20_000;
let browser;
let context;
let page;
const consoleErrors = [];

async function api(path, options = {}) {
  const response = await fetch(base + path, options);
  return { status: response.status, body: await response.json() };
}

async function shot(name) {
  await page.screenshot({ path: join(screenshots, `${name}.png`), fullPage: false });
}

const tiles = () => page.locator("#grid .tile");

async function waitForTiles(count) {
  await page.waitForFunction(
    (n) => document.querySelectorAll("#grid .tile").length === n,
    count,
    { timeout: TIMEOUT },
  );
}

async function everyThumbnailLoaded() {
  await page.waitForFunction(
    () => Array.from(document.querySelectorAll("#grid .tile img")).every((i) => i.complete && i.naturalWidth > 0),
    null,
    { timeout: TIMEOUT },
  );
}

/** Runs `action` and returns the JSON of the first search response it causes. */
async function searchResponseOf(action) {
  const [response] = await Promise.all([
    page.waitForResponse((r) => r.url().includes("/api/search?"), { timeout: TIMEOUT }),
    action(),
  ]);
  assert.equal(response.status(), 200, await response.text());
  return response.json();
}

describe("the web page", () => {
  before(async () => {
    browser = await launchChromium();
    context = await browser.newContext({ viewport: { width: 1280, height: 860 } });
    page = await context.newPage();
    page.on("console", (message) => {
      if (message.type() === "error") consoleErrors.push(message.text());
    });
    page.on("request", (request) => {
      const url = new URL(request.url());
      if (!["127.0.0.1", "localhost"].includes(url.hostname) && url.protocol !== "blob:" && url.protocol !== "data:") {
        consoleErrors.push(`request to another origin: ${request.url()}`);
      }
    });
  });

  after(async () => {
    await browser?.close();
  });

  it("shows the whole library, newest first, with indexing status", async () => {
    await page.goto(base);
    await waitForTiles(libraryPhotos);
    await everyThumbnailLoaded();
    const summary = await page.locator("#summary").textContent();
    assert.match(summary, new RegExp(`${libraryPhotos} photos, newest first`));
    const first = await tiles().first().locator("img").getAttribute("alt");
    assert.match(first, /^Photo, album (Trips|Home), /, "tiles have alt text");
    await shot("browse");
  });

  it("explains the query language, and its examples run", async () => {
    await page.click("#help-toggle");
    await page.locator("#help").waitFor({ state: "visible" });
    assert.equal(await page.getAttribute("#help-toggle", "aria-expanded"), "true");
    await shot("help");
    const response = await searchResponseOf(() => page.click("#help button.example >> nth=1"));
    assert.equal(response.query, 'beach -people -"tour bus"');
    assert.equal(await page.inputValue("#query"), 'beach -people -"tour bus"');
    await page.click("#help-toggle");
    await page.locator("#help").waitFor({ state: "hidden" });
  });

  it("searches, shows scored results, and records a click in the search log", async () => {
    await page.fill("#query", "a red sled");
    const response = await searchResponseOf(() => page.press("#query", "Enter"));
    const shown = Math.min(libraryPhotos, 40);
    await waitForTiles(Math.min(response.results.length, shown));
    assert.ok(response.results.length > 0);
    await everyThumbnailLoaded();
    assert.match(await page.locator("#summary").textContent(), /results for “a red sled”/);
    assert.equal(new URL(page.url()).searchParams.get("q"), "a red sled");
    const badge = await tiles().first().locator(".badge").textContent();
    assert.equal(badge, response.results[0].score.toFixed(2), "the score is shown");
    await shot("search");

    // Choose the second result.
    await tiles().nth(1).click();
    await page.locator("#viewer").waitFor({ state: "visible", timeout: TIMEOUT });
    const facts = await page.locator("#viewer-facts").textContent();
    assert.match(facts, /Rank2 \(score/);
    assert.match(facts, new RegExp(`Id${response.results[1].photo.id}`));
    await page.waitForFunction(() => {
      const img = document.getElementById("viewer-img");
      return img.complete && img.naturalWidth > 0;
    }, null, { timeout: TIMEOUT });
    await shot("viewer");

    // The click reached the API with this search's id and the rank.
    let logged;
    for (let i = 0; i < 100; i++) {
      logged = (await api(`/api/search/${response.query_id}`)).body;
      if (logged.results[1].clicked) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    assert.equal(logged.text, "a red sled");
    assert.deepEqual(logged.results.map((r) => r.clicked).slice(0, 3), [false, true, false]);
    assert.equal(logged.results[1].photo_id, response.results[1].photo.id);
  });

  it("walks through results with the keyboard in the large view", async () => {
    const before = await page.locator("#viewer-facts").textContent();
    await page.keyboard.press("ArrowRight");
    await page.waitForFunction((text) => document.getElementById("viewer-facts").textContent !== text, before);
    assert.match(await page.locator("#viewer-facts").textContent(), /Rank3 \(score/);
    await page.keyboard.press("Escape");
    await page.locator("#viewer").waitFor({ state: "hidden" });
    // Focus returns to the grid, where arrows move between tiles.
    const focused = () => page.evaluate(() => document.activeElement.dataset.index);
    await page.waitForFunction(() => document.activeElement.dataset.index === "2", null, { timeout: TIMEOUT });
    await page.keyboard.press("ArrowLeft");
    assert.equal(await focused(), "1");
    await page.keyboard.press("/");
    assert.equal(await page.evaluate(() => document.activeElement.id), "query");
  });

  it("finds similar photos from the large view", async () => {
    await page.fill("#query", "a red sled");
    const search = await searchResponseOf(() => page.press("#query", "Enter"));
    const target = search.results[0].photo.id;
    await tiles().first().click();
    await page.locator("#viewer").waitFor({ state: "visible" });
    const response = await searchResponseOf(() => page.click("#viewer-similar"));
    assert.equal(response.query, `like:${target}`);
    assert.equal(await page.inputValue("#query"), `like:${target}`);
    const similar = (await api(`/api/photos/${target}/similar?top_k=40`)).body;
    assert.ok(similar.results.length > 0);
    await waitForTiles(similar.results.length);
    assert.match(await page.locator("#summary").textContent(), new RegExp(`photos most like photo ${target}`));
    assert.deepEqual(
      response.results.map((r) => r.photo.id),
      similar.results.map((r) => r.photo.id),
      "the page shows what /similar returns",
    );
    assert.ok(!response.results.some((r) => r.photo.id === target), "the example itself is left out");
    await everyThumbnailLoaded();
    await shot("similar");
  });

  it("filters by album, and lists an album newest first without a search", async () => {
    const albums = (await api("/api/albums")).body.albums;
    const trips = albums.find((a) => a.name === "Trips");
    assert.ok(trips, JSON.stringify(albums));
    await page.fill("#query", "");
    await page.selectOption("#album-filter", "Trips");
    await waitForTiles(trips.photos);
    assert.equal(new URL(page.url()).searchParams.get("album"), "Trips");
    assert.match(await page.locator("#summary").textContent(), /matching album:Trips, newest first/);
    await page.click("#filters-clear");
    await waitForTiles(libraryPhotos);
  });

  it("uploads a good, a bad and a duplicate file, asking for the token once", async () => {
    const files = [env("UPLOAD_GOOD"), env("UPLOAD_BAD"), env("UPLOAD_DUPLICATE")];
    const [chooser] = await Promise.all([page.waitForEvent("filechooser"), page.click("#upload-open")]);
    assert.ok(chooser.isMultiple(), "many files at once");
    await chooser.setFiles(files);
    await page.locator("#uploads").waitFor({ state: "visible" });
    // No token is saved yet: the server's 401 opens the token dialog.
    await page.locator("#token-dialog").waitFor({ state: "visible", timeout: TIMEOUT });
    assert.match(await page.locator("#token-reason").textContent(), /needs `Authorization: Bearer <token>`/);
    await page.fill("#token-input", token);
    await page.click("#token-form button[type=submit]");
    const outcomes = page.locator("#upload-list li");
    await page.waitForFunction(
      () => Array.from(document.querySelectorAll("#upload-list .outcome"))
        .every((o) => /ok|duplicate|error/.test(o.className)),
      null,
      { timeout: TIMEOUT },
    );
    const rows = {};
    for (const row of await outcomes.all()) {
      rows[await row.locator(".name").textContent()] = {
        text: await row.locator(".outcome").textContent(),
        kind: await row.locator(".outcome").getAttribute("class"),
      };
    }
    const [good, bad, duplicate] = files.map((f) => rows[basename(f)]);
    assert.deepEqual(good, { text: "added — indexing", kind: "outcome ok" });
    assert.deepEqual(duplicate, { text: "already in your library (duplicate)", kind: "outcome duplicate" });
    // The bad file shows the server's own message.
    const direct = await api("/api/photos", {
      method: "POST",
      headers: { Authorization: `Bearer ${token}` },
      body: readFileSync(env("UPLOAD_BAD")),
    });
    assert.equal(direct.status, 415);
    assert.deepEqual(bad, { text: direct.body.error.message, kind: "outcome error" });
    assert.match(await page.locator("#upload-summary").textContent(), /1 photo added, 1 duplicate, 1 refused/);
    await shot("upload");

    // The new photo is in the library and the grid once it is indexed.
    await waitForTiles(libraryPhotos + 1);
    for (let i = 0; i < 200; i++) {
      const status = (await api("/api/status")).body.photos;
      if (status.pending === 0) {
        assert.equal(status.photos, libraryPhotos + 1);
        break;
      }
      await new Promise((r) => setTimeout(r, 100));
    }
  });

  it("shows an empty library's invitation, and takes photos dropped on the page", async () => {
    const fresh = await context.newPage();
    page = fresh;
    await page.goto(emptyBase);
    await page.locator("#empty").waitFor({ state: "visible", timeout: TIMEOUT });
    assert.match(await page.locator("#empty").textContent(), /No photos yet — add a folder or drop files here/);
    await shot("empty");

    await page.evaluate((saved) => localStorage.setItem("glimpse.token", saved), token);
    const dropped = [env("UPLOAD_GOOD"), env("UPLOAD_BAD")].map((path) => ({
      name: basename(path),
      bytes: Array.from(readFileSync(path)),
      type: path.endsWith(".png") ? "image/png" : "text/plain",
    }));
    // Over this server's 1 MB (--max-upload-mb 1): refused on the page, never sent.
    const panorama = { name: "panorama.jpg", size: 1.5 * 1024 * 1024, type: "image/jpeg" };
    const transfer = await page.evaluateHandle(([files, large]) => {
      const data = new DataTransfer();
      for (const f of files) data.items.add(new File([new Uint8Array(f.bytes)], f.name, { type: f.type }));
      const jpeg = new Uint8Array(large.size);
      jpeg.set([0xff, 0xd8, 0xff, 0xe0]);
      data.items.add(new File([jpeg], large.name, { type: large.type }));
      return data;
    }, [dropped, panorama]);
    // The photo's refusal comes back late, after the person has answered the prompt the text
    // file raised (a slow link, a larger file): it goes again with the new token, unasked.
    let answered;
    const promptAnswered = new Promise((resolve) => { answered = resolve; });
    const photoName = basename(env("UPLOAD_GOOD"));
    const sent = [];
    await page.route("**/api/photos", async (route) => {
      const response = await route.fetch();
      const body = route.request().postDataBuffer() || Buffer.alloc(0);
      sent.push(body);
      if (response.status() === 401 && body.includes(photoName)) await promptAnswered;
      await route.fulfill({ response });
    });
    await page.dispatchEvent("body", "dragenter", { dataTransfer: transfer });
    await page.locator("#drop-overlay").waitFor({ state: "visible" });
    await shot("dragging");
    await page.dispatchEvent("body", "drop", { dataTransfer: transfer });
    await page.locator("#drop-overlay").waitFor({ state: "hidden" });
    // The empty server's token differs: the drop asks for it, and the saved one is refused.
    await page.locator("#token-dialog").waitFor({ state: "visible", timeout: TIMEOUT });
    assert.match(await page.locator("#token-reason").textContent(), /bearer token is wrong/);
    await page.fill("#token-input", env("GLIMPSE_EMPTY_TOKEN"));
    await page.click("#token-form button[type=submit]");
    answered();
    await waitForTiles(1);
    await page.waitForFunction(
      () => document.querySelectorAll("#upload-list .outcome.ok, #upload-list .outcome.error").length === 3,
      null,
      { timeout: TIMEOUT },
    );
    assert.equal(await page.locator("#token-dialog").isVisible(), false, "asked for the token twice");
    const refusal = page.locator("#upload-list li", { hasText: panorama.name }).locator(".outcome");
    assert.equal(
      await refusal.textContent(),
      "too large: 1.5 MB, and this Glimpse takes originals up to 1.0 MB (its operator can raise the limit)",
    );
    assert.ok(!sent.some((body) => body.includes(panorama.name)), "the refused file was sent");
    assert.match(await page.locator("#upload-summary").textContent(), /^1 photo added, 0 duplicates, 2 refused$/);
    await everyThumbnailLoaded();
    await shot("dropped");
  });

  it("asks for the token when reads are private, then shows the photos", async () => {
    page = await context.newPage();
    await page.goto(env("GLIMPSE_PRIVATE_URL"));
    await page.locator("#token-dialog").waitFor({ state: "visible", timeout: TIMEOUT });
    assert.match(await page.locator("#token-reason").textContent(), /keeps its photos private/);
    assert.equal(await tiles().count(), 0, "nothing is shown without the token");
    await shot("private");
    await page.fill("#token-input", env("GLIMPSE_PRIVATE_TOKEN"));
    await page.click("#token-form button[type=submit]");
    await waitForTiles(libraryPhotos);
    await everyThumbnailLoaded();
    const sources = await page.evaluate(() =>
      Array.from(document.querySelectorAll("#grid .tile img")).map((i) => i.src));
    assert.ok(sources.every((s) => s.startsWith("blob:")), "thumbnails are fetched with the token");
    await tiles().first().click();
    await page.waitForFunction(() => {
      const img = document.getElementById("viewer-img");
      return img.src.startsWith("blob:") && img.complete && img.naturalWidth > 0;
    }, null, { timeout: TIMEOUT });
    await page.keyboard.press("Escape");
    // A search works too, with its click.
    await page.fill("#query", "a red sled");
    const response = await searchResponseOf(() => page.press("#query", "Enter"));
    assert.ok(response.results.length > 0);
  });

  it("spoke to no other origin and logged no script errors", () => {
    const unexpected = consoleErrors.filter((e) => !/status of 4\d\d/.test(e));
    assert.deepEqual(unexpected, []);
  });
});
