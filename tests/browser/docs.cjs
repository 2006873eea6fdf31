// Opens the API reference (`/docs`) in headless Chromium as a person would: authorizes with
// an API key as the Basic-auth user name (password blank), opens Ping, presses "Try it out"
// and "Execute", and prints the HTTP status the page shows. Run by tests/api/http_json.rs.
//
//   node tests/browser/docs.cjs http://127.0.0.1:PORT sk_...
// (playwright-core found through NODE_PATH; Chromium at /usr/bin/chromium or $CHROMIUM.)
const fs = require("fs");
const { chromium } = require("playwright-core");
const axeSource = fs.readFileSync(require.resolve("axe-core/axe.min.js"), "utf8");

const [base, key] = process.argv.slice(2);

(async () => {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    // This machine's network is closed: no background connections, no sandbox as root.
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
      "--disable-component-update", "--disable-sync"],
  });
  try {
    const page = await browser.newPage();
    page.setDefaultTimeout(15000);
    await page.goto(`${base}/docs`);

    await page.locator("button.authorize").first().click();
    const basic = page.locator(".auth-container", { hasText: "basicAuth" });
    await basic.locator("input[type=text]").fill(key);
    await basic.locator("button.authorize").click(); // "Authorize" (aria-label "Apply credentials")
    await basic.locator("button", { hasText: "Logout" }).waitFor(); // the scheme shows as authorized
    await page.locator(".modal-ux button.btn-done").first().click(); // "Close"

    await page.locator("#operations-tag-AccountService").click(); // tags start collapsed
    const ping = page.locator("#operations-AccountService-Ping");
    await ping.locator(".opblock-summary").first().click();
    await ping.getByRole("button", { name: "Try it out" }).click();
    await ping.getByRole("button", { name: "Execute" }).click();
    const status = ping.locator(".live-responses-table .response .response-col_status").first();
    await status.waitFor();
    console.log(`status ${(await status.innerText()).trim()}`);
    // What the page sent: the curl line Swagger UI shows for the call.
    console.log(`curl ${(await ping.locator(".curl-command").first().innerText()).replace(/\s+/g, " ")}`);

    // The error reference every error's Help link leads to: the reason's row, and no serious
    // accessibility violation (axe-core, evaluated through the DevTools protocol).
    await page.goto(`${base}/docs/errors#NOT_FOUND`);
    console.log(`errors row ${(await page.locator("tr#NOT_FOUND td").nth(2).innerText()).trim()}`);
    await page.evaluate(axeSource);
    const violations = await page.evaluate(async () => {
      const r = await window.axe.run(document, { resultTypes: ["violations"] });
      return r.violations.filter((v) => v.impact === "serious" || v.impact === "critical").map((v) => v.id);
    });
    console.log(`errors axe serious ${violations.length} ${violations.join(",")}`);
  } finally {
    await browser.close();
  }
})().catch((e) => {
  console.error(e);
  process.exit(1);
});
