// Drives the web console in headless Chromium as people would, and checks every page with
// axe-core. Run by tests/api/console_browser.rs, which checks what reached the receiver.
//
//   node tests/browser/console.cjs BASE LINK READER_LINK RECEIVER_URL API_KEY SCREENSHOT_DIR
//
// LINK signs in with scope `*`, READER_LINK with `webhooks:read`. Prints `webhook-secret …`
// and `replayed N` for the Rust side. playwright-core and axe-core come through NODE_PATH;
// Chromium is /usr/bin/chromium or $CHROMIUM.
const { chromium } = require("playwright-core");
const { execFileSync } = require("child_process");
const fs = require("fs");
const http = require("http");
const path = require("path");

const [base, link, readerLink, receiver, apiKey, shots] = process.argv.slice(2);
const axeSource = fs.readFileSync(require.resolve("axe-core/axe.min.js"), "utf8");
fs.mkdirSync(shots, { recursive: true });

const problems = [];
function check(ok, what) {
  if (!ok) throw new Error(what);
}

// Every request a page makes stays on our origin, and the CSP never has to block anything.
function watch(page) {
  page.on("request", (r) => {
    if (!r.url().startsWith(base) && !r.url().startsWith("data:")) problems.push(`external request: ${r.url()}`);
  });
  page.on("console", (m) => {
    if (/Content Security Policy|Refused to/.test(m.text())) problems.push(`CSP: ${m.text()}`);
  });
  page.on("pageerror", (e) => problems.push(`script error: ${e.message}`));
}

// axe-core, evaluated through the DevTools protocol (the page's CSP allows no injected
// script): no serious or critical violation.
async function axe(page, name) {
  await page.evaluate(axeSource);
  const result = await page.evaluate(async () => {
    const r = await window.axe.run(document, { resultTypes: ["violations"] });
    return r.violations.map((v) => ({ id: v.id, impact: v.impact, nodes: v.nodes.map((n) => n.target.join(" ")).slice(0, 3) }));
  });
  const bad = result.filter((v) => v.impact === "serious" || v.impact === "critical");
  check(bad.length === 0, `axe on ${name}: ${JSON.stringify(bad)}`);
  console.log(`axe ${name}: ${result.length} minor, 0 serious`);
}

async function shot(page, name) {
  await page.screenshot({ path: path.join(shots, `${name}.png`), fullPage: true });
}

// Presses Tab until the focused element matches `selector` (keyboard only, like a person).
async function tabTo(page, selector, limit = 80) {
  for (let i = 0; i < limit; i++) {
    await page.keyboard.press("Tab");
    if (await page.evaluate((s) => document.activeElement && document.activeElement.matches(s), selector)) return;
  }
  throw new Error(`Tab never reached ${selector}`);
}

function curl(args) {
  return execFileSync("curl", ["-s", "-w", "\n%{http_code}", ...args], { encoding: "utf8" });
}

async function goto(page, url) {
  const response = await page.goto(url);
  return response.status();
}

(async () => {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
      "--disable-component-update", "--disable-sync"],
  });
  try {
    const desktop = await browser.newContext({ viewport: { width: 1280, height: 800 } });
    const page = await desktop.newPage();
    page.setDefaultTimeout(15000);
    watch(page);

    // Sign in with the link: it lands on the overview.
    await goto(page, link);
    check(new URL(page.url()).pathname === "/console", `after the link: ${page.url()}`);
    check((await page.locator("h1").innerText()) === "Overview", "the overview");
    check(/read: \d+/.test(await page.locator("#calls-cap").innerText()), "the calls chart, in words too");
    await axe(page, "overview");
    await shot(page, "overview");

    // Keys: create one with the keyboard alone.
    await goto(page, `${base}/console/keys`);
    await axe(page, "keys");
    await shot(page, "keys");
    await tabTo(page, "a.button[href='/console/keys/new']");
    await Promise.all([page.waitForURL("**/console/keys/new"), page.keyboard.press("Enter")]);
    await axe(page, "new key");
    await tabTo(page, "#label");
    await page.keyboard.type("made in the browser");
    await tabTo(page, "input[value='users:read']");
    await page.keyboard.press("Space");
    await tabTo(page, "button[type=submit]");
    await Promise.all([page.waitForNavigation(), page.keyboard.press("Enter")]);
    check((await page.locator("#secret").count()) === 1, `the key was created: ${await page.locator("main").innerText()}`);
    const secret = await page.locator("#secret").inputValue();
    check(/^sk_[0-9a-f]{48}$/.test(secret), `a secret is shown: ${secret}`);
    check((await page.getByText("will not be shown again").count()) === 1, "the warning");
    await axe(page, "key created");
    await shot(page, "key-created");

    // The secret works, with real curl.
    let out = curl(["-H", `Authorization: Bearer ${secret}`, `${base}/v1/ping`]);
    check(out.trim().endsWith("200"), `ping with the new key: ${out}`);

    // Revoke it, confirming; then it fails with KEY_REVOKED.
    const prefix = secret.slice(3, 11);
    await goto(page, `${base}/console/keys`);
    check(!(await page.content()).includes(secret), "the secret is not in the page after navigating away");
    await page.getByRole("link", { name: `Revoke key sk_${prefix}` }).click();
    await axe(page, "revoke");
    await Promise.all([page.waitForURL("**/console/keys"), page.getByRole("button", { name: "Yes, revoke" }).click()]);
    check((await page.locator("tr", { hasText: `sk_${prefix}` }).innerText()).includes("revoked"), "listed as revoked");
    // Every server refuses a revoked key within a second (keys are cached that long).
    for (let i = 0; i < 30; i++) {
      out = curl(["-H", `Authorization: Bearer ${secret}`, `${base}/v1/ping`]);
      if (!out.trim().endsWith("200")) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    check(out.includes("KEY_REVOKED") && out.trim().endsWith("401"), `ping after revoking: ${out}`);

    // Webhooks: an endpoint to the receiver.
    await goto(page, `${base}/console/webhooks/new`);
    await axe(page, "new webhook");
    await page.getByLabel("URL").fill(receiver);
    await page.getByLabel("Description").fill("the test receiver");
    await page.getByLabel("user.created", { exact: true }).check();
    await page.getByLabel("webhook.test", { exact: true }).check();
    await page.getByLabel("Custom headers").fill("X-Partner: acme-123");
    await page.getByRole("button", { name: "Add endpoint" }).click();
    await page.locator("#secret").waitFor();
    const whsec = await page.locator("#secret").inputValue();
    check(whsec.startsWith("whsec_"), `a signing secret: ${whsec}`);
    console.log(`webhook-secret ${whsec}`);
    await shot(page, "webhook-created");
    await page.getByRole("link", { name: "Done — to the endpoint" }).click();
    const endpointUrl = page.url();
    await axe(page, "webhook");
    check(!(await page.content()).includes("acme-123"), "header values are write-only");

    // A test event: its attempt appears on the delivery's page.
    await page.getByRole("button", { name: "Send a test event" }).click();
    await page.waitForURL("**/console/deliveries/dlv_*");
    for (let i = 0; i < 50; i++) {
      if ((await page.locator("table tbody tr", { hasText: "204" }).count()) > 0) break;
      await page.waitForTimeout(200);
      await page.reload();
    }
    check((await page.locator("table tbody tr", { hasText: "204" }).count()) === 1, "the attempt, answered 204");
    await axe(page, "delivery");
    await shot(page, "delivery");

    // A change made through the API appears in Deliveries without reloading.
    await goto(page, `${base}/console/deliveries`);
    await axe(page, "deliveries");
    const created = await fetch(`${base}/v1/users`, {
      method: "POST",
      headers: { authorization: `Bearer ${apiKey}`, "content-type": "application/json" },
      body: JSON.stringify({ email: "grace@example.com", first_name: "Grace" }),
    });
    check(created.ok, `CreateUser: ${created.status}`);
    await page.locator("tbody tr", { hasText: "user.created" }).first().waitFor({ timeout: 15000 });
    await page.locator("tbody tr", { hasText: "user.created" }).filter({ hasText: "succeeded" }).first().waitFor({ timeout: 15000 });
    await shot(page, "deliveries");

    // Replay the endpoint's events of the last hour: the event is posted again.
    await goto(page, endpointUrl);
    const hourAgo = new Date(Date.now() - 3600_000).toISOString().slice(0, 16);
    await page.getByLabel("Replay events since (UTC)").fill(hourAgo);
    await page.getByRole("button", { name: "Replay" }).click();
    const flash = await page.locator(".flash.done").innerText();
    const replayed = /(\d+) events will be delivered again/.exec(flash);
    check(replayed && Number(replayed[1]) >= 1, `replay: ${flash}`);
    console.log(`replayed ${replayed[1]}`);

    await goto(page, `${base}/console/events`);
    await axe(page, "event catalogue");
    await shot(page, "events");

    // The activity log names who did each of the above.
    await goto(page, `${base}/console/activity`);
    await axe(page, "activity");
    check((await page.locator("tr", { hasText: "api_key.revoked" }).innerText()).includes("in the console"), "who revoked the key");
    check((await page.locator("tr", { hasText: "webhook.created" }).count()) === 1, "the endpoint's creation");
    await shot(page, "activity");

    // A phone-sized screen: nothing wider than the screen, same checks.
    const phone = await browser.newContext({ viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true });
    await phone.addCookies(await desktop.cookies());
    const small = await phone.newPage();
    watch(small);
    for (const [name, p] of [["overview", "/console"], ["keys", "/console/keys"], ["webhooks", "/console/webhooks"], ["deliveries", "/console/deliveries"]]) {
      await goto(small, `${base}${p}`);
      const width = await small.evaluate(() => document.documentElement.scrollWidth);
      check(width <= 391, `${name} on a phone is ${width}px wide`);
      await axe(small, `${name} (phone)`);
      await shot(small, `phone-${name}`);
    }

    // A session for webhooks:read: no keys page, and the server refuses the key form.
    const readerContext = await browser.newContext();
    const reader = await readerContext.newPage();
    watch(reader);
    await goto(reader, readerLink);
    check((await reader.getByRole("link", { name: "API keys" }).count()) === 0, "no keys link");
    check((await goto(reader, `${base}/console/keys`)) === 403, "the keys page is 403");
    await axe(reader, "403");
    await goto(reader, `${base}/console/webhooks`);
    check((await reader.getByRole("link", { name: "Add an endpoint" }).count()) === 0, "no add button");
    const csrf = await reader.locator("input[name=csrf]").first().inputValue();
    const forged = await readerContext.request.post(`${base}/console/keys`, {
      form: { csrf, label: "escalated", scopes: "*" },
      headers: { origin: base },
      maxRedirects: 0,
    });
    check(forged.status() === 403, `forged key creation: ${forged.status()}`);

    // Another site's page posting a form to the console: the browser withholds the strict
    // cookie, and nothing is created.
    const evil = http.createServer((req, res) => {
      res.setHeader("content-type", "text/html");
      res.end(`<form id=f method=post action="${base}/console/keys"><input name=label value=evil><input name=scopes value="*"></form><script>document.getElementById('f').submit()</script>`);
    });
    await new Promise((r) => evil.listen(0, "localhost", r));
    const attacker = await desktop.newPage();
    const landed = attacker.waitForResponse((r) => r.url().startsWith(`${base}/console/keys`) && r.request().method() === "POST");
    await attacker.goto(`http://localhost:${evil.address().port}/`);
    const response = await landed;
    check(response.status() === 401 || response.status() === 403, `cross-site post answered ${response.status()}`);
    evil.close();
    const keys = JSON.parse(curl(["-H", `Authorization: Bearer ${apiKey}`, `${base}/v1/apiKeys`]).trim().split("\n").slice(0, -1).join("\n"));
    check(!keys.api_keys.some((k) => k.label === "evil"), "no key was created from the other site");

    // Signing out ends the session.
    await goto(page, `${base}/console`);
    await page.getByRole("button", { name: "Sign out" }).click();
    await page.waitForURL("**/console/signin**");
    await axe(page, "sign-in");
    await shot(page, "signin");
    await goto(page, `${base}/console/keys`);
    check(page.url().includes("/console/signin"), "signed out");

    check(problems.length === 0, problems.join("\n"));
    console.log("console ok");
  } finally {
    await browser.close();
  }
})().catch((e) => {
  console.error(e);
  process.exit(1);
});
