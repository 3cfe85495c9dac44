// Browser tests of the web page at the edge: the Spin components in the test host, the worker
// pool asleep. tests/edge.rs starts them and runs this file with:
//   GLIMPSE_URL     the test host (the page component and the API components, by spin.toml)
//   GLIMPSE_TOKEN   the deployment's api_token
//   STORAGE_ORIGIN  where originals are redirected to (the S3 server's origin)
//   UPLOAD_GOOD     a photo to upload through the page
//   UPLOAD_LARGE    a photo larger than the edge takes in a request (max_upload_mb)
//   SCREENSHOTS     where to save a screenshot of each main state
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync, statSync } from "node:fs";
import { basename, join } from "node:path";
import { launchChromium } from "./chromium.mjs";

const env = (name) => {
  const value = process.env[name];
  assert.ok(value, `${name} must be set (tests/edge.rs sets it)`);
  return value;
};
const base = env("GLIMPSE_URL");
const storage = env("STORAGE_ORIGIN");
const screenshots = env("SCREENSHOTS");
mkdirSync(screenshots, { recursive: true });

const TIMEOUT = 20_000;
let browser;
let page;
const consoleErrors = [];

async function shot(name) {
  await page.screenshot({ path: join(screenshots, `${name}.png`), fullPage: false });
}

describe("the web page at the edge, the worker pool asleep", () => {
  before(async () => {
    browser = await launchChromium();
    const context = await browser.newContext({ viewport: { width: 1280, height: 860 } });
    page = await context.newPage();
    page.on("console", (message) => {
      if (message.type() === "error") consoleErrors.push(message.text());
    });
    page.on("pageerror", (error) => consoleErrors.push(`script error: ${error.message}`));
    page.on("request", (request) => {
      const url = new URL(request.url());
      if (url.origin !== new URL(base).origin && url.origin !== storage && !["blob:", "data:"].includes(url.protocol)) {
        consoleErrors.push(`request to another origin: ${request.url()}`);
      }
    });
  });

  after(async () => {
    await browser?.close();
  });

  it("serves the page and its files, revalidated by ETag, with a policy naming the storage", async () => {
    for (const path of ["/", "/assets/app.js", "/assets/app.css", "/assets/icon.svg"]) {
      const response = await fetch(base + path);
      assert.equal(response.status, 200, path);
      assert.equal(response.headers.get("cache-control"), "no-cache", path);
      const etag = response.headers.get("etag");
      assert.match(etag, /^"[0-9a-f]{16}"$/, path);
      const policy = response.headers.get("content-security-policy");
      assert.match(policy, new RegExp(`img-src 'self' blob: ${storage};`), policy);
      assert.match(policy, /script-src 'self';/, policy);
      const again = await fetch(base + path, { headers: { "If-None-Match": etag } });
      assert.equal(again.status, 304, path);
    }
    const html = await (await fetch(base + "/")).text();
    assert.match(html, /<title>Glimpse<\/title>/);
    const missing = await fetch(base + "/assets/nothing.js");
    assert.equal(missing.status, 404);
    assert.match((await missing.json()).error.message, /the web page has no file \/assets\/nothing\.js/);
    const post = await fetch(base + "/", { method: "POST" });
    assert.equal(post.status, 405);
    assert.equal(post.headers.get("allow"), "GET, HEAD");
  });

  it("invites the first photos into an empty library", async () => {
    await page.goto(base);
    await page.locator("#empty").waitFor({ state: "visible", timeout: TIMEOUT });
    assert.match(await page.locator("#empty").textContent(), /No photos yet/);
    await shot("edge-empty");
  });

  it("takes an upload, which waits for the pool with its tile saying so", async () => {
    const file = env("UPLOAD_GOOD");
    const [chooser] = await Promise.all([page.waitForEvent("filechooser"), page.click("#upload-open")]);
    await chooser.setFiles([file]);
    await page.locator("#token-dialog").waitFor({ state: "visible", timeout: TIMEOUT });
    await page.fill("#token-input", env("GLIMPSE_TOKEN"));
    await page.click("#token-form button[type=submit]");
    await page.waitForFunction(
      () => Array.from(document.querySelectorAll("#upload-list .outcome")).every((o) => /ok|error/.test(o.className)),
      null,
      { timeout: TIMEOUT },
    );
    const row = page.locator("#upload-list li", { hasText: basename(file) });
    assert.equal(await row.locator(".outcome").textContent(), "added — indexing");

    // The library shows it at once, waiting: no thumbnail until the pool indexes it.
    await page.waitForFunction(() => document.querySelectorAll("#grid .tile").length === 1, null, { timeout: TIMEOUT });
    const tile = page.locator("#grid .tile").first();
    assert.equal(await tile.locator(".badge").textContent(), "indexing");
    assert.match(await tile.locator("img").getAttribute("alt"), /waiting to be indexed/);
    await page.waitForFunction(
      () => document.querySelector("#grid .tile img").classList.contains("unavailable"),
      null,
      { timeout: TIMEOUT },
    );
    await page.locator("#indexing").waitFor({ state: "visible", timeout: TIMEOUT });
    assert.match(await page.locator("#indexing-text").textContent(), /Indexing: 0 of 1 photo done/);
    await shot("edge-waiting");
  });

  it("sends an original too large for a request straight to storage, and completes it", async () => {
    const file = env("UPLOAD_LARGE");
    const status = await (await fetch(base + "/api/status")).json();
    assert.ok(statSync(file).size > status.uploads.max_bytes, "the test photo is over the limit");
    assert.ok(statSync(file).size <= status.uploads.staged_max_bytes);
    const [chooser] = await Promise.all([page.waitForEvent("filechooser"), page.click("#upload-open")]);
    const put = page.waitForRequest(
      (r) => r.method() === "PUT" && r.url().startsWith(storage),
      { timeout: TIMEOUT },
    );
    await chooser.setFiles([file]);
    assert.match((await put).url(), /X-Amz-Signature=/);
    const row = page.locator("#upload-list li", { hasText: basename(file) });
    await row.locator(".outcome.ok, .outcome.error").waitFor({ timeout: TIMEOUT });
    assert.equal(await row.locator(".outcome").textContent(), "added — indexing");
    assert.equal(await row.locator("progress").evaluate((p) => p.value), 1);
    await page.waitForFunction(() => document.querySelectorAll("#grid .tile").length === 2, null, { timeout: TIMEOUT });
    await shot("edge-staged-upload");
  });

  it("says why a new search cannot run while the pool sleeps, and when to try again", async () => {
    await page.fill("#query", "kids on a red sled");
    const [response] = await Promise.all([
      page.waitForResponse((r) => r.url().includes("/api/search?"), { timeout: TIMEOUT }),
      page.press("#query", "Enter"),
    ]);
    assert.equal(response.status(), 503);
    await page.locator("#message").waitFor({ state: "visible", timeout: TIMEOUT });
    const message = await page.locator("#message").textContent();
    assert.match(message, /worker pool/, message);
    assert.match(message, /Try again in \d+ s\.$/, message);
    await shot("edge-asleep-search");
  });

  it("loaded everything it asked for but the answers above, without a script error", () => {
    // The expected answers: the upload's 401 before the token, the missing thumbnail's 404, the
    // search's 503.
    const unexpected = consoleErrors.filter((e) => !/status of (401|404|503)/.test(e));
    assert.deepEqual(unexpected, []);
  });
});
