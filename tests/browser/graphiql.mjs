// Drives the development GraphiQL page in Debian's Chromium (playwright-core, no browser download)
// the way a developer uses it: sign in with the Login operation, paste the token into the headers
// editor, run a query, start a robotStatus subscription and see a live event. Every request to a
// host other than 127.0.0.1/localhost is aborted and reported.
//
// node graphiql.mjs <http://127.0.0.1:PORT/graphql> <screenshot.png>
// Prints one JSON object (the story's observations) on stdout; exits 1 with a message on failure.
import { chromium } from "playwright-core";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const [url, screenshot] = process.argv.slice(2);
const LOCAL = new Set(["127.0.0.1", "localhost", "[::1]"]);
const STEP_MS = 30_000;

const observed = {
  blocked: [],
  requests: [],
  cspViolations: [],
  consoleErrors: [],
  initialHeaders: null,
  docs: null,
  history: null,
  token: null,
  fleets: null,
  event: null,
  connectionInit: null,
  assets: [],
  screenshot,
};

const profile = mkdtempSync(join(tmpdir(), "sepulki-chromium-"));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: "/usr/bin/chromium",
  headless: true,
  args: [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
  ],
  viewport: { width: 1400, height: 900 },
});

function step(name) {
  observed.step = name;
}

try {
  await context.route("**/*", (route) => {
    const target = new URL(route.request().url());
    if (["http:", "https:", "ws:", "wss:"].includes(target.protocol) && !LOCAL.has(target.hostname)) {
      observed.blocked.push(target.href);
      return route.abort("blockedbyclient");
    }
    return route.continue();
  });
  const page = context.pages()[0] ?? (await context.newPage());
  page.setDefaultTimeout(STEP_MS);
  await page.addInitScript(() => {
    window.__csp = [];
    document.addEventListener("securitypolicyviolation", (e) =>
      window.__csp.push(`${e.violatedDirective} ${e.blockedURI}`),
    );
  });
  page.on("request", (request) => {
    const target = new URL(request.url());
    observed.requests.push(`${request.method()} ${target.protocol}//${target.host}${target.pathname}`);
    if (target.pathname.startsWith("/graphiql/assets/")) observed.assets.push(target.pathname);
  });
  page.on("console", (message) => {
    if (message.type() === "error") observed.consoleErrors.push(message.text());
  });
  page.on("websocket", (socket) => {
    const target = new URL(socket.url());
    observed.requests.push(`WS ${target.protocol}//${target.host}${target.pathname}`);
    if (!LOCAL.has(target.hostname)) observed.blocked.push(socket.url());
    socket.on("framesent", (frame) => {
      try {
        const message = JSON.parse(frame.payload);
        if (message.type === "connection_init") observed.connectionInit = message.payload ?? null;
      } catch {}
    });
  });

  step("open the page");
  await page.goto(url, { waitUntil: "load" });
  await page.locator(".graphiql-container").waitFor();
  await page.locator(".graphiql-query-editor .CodeMirror").waitFor();

  // The CodeMirror 5 editors GraphiQL renders: the query editor, the headers editor, the result.
  const editor = (selector) => page.locator(selector).first();
  const valueOf = (selector) => editor(selector).evaluate((node) => node.CodeMirror.getValue());
  const headersEditor = ".graphiql-editor-tool .CodeMirror:visible";
  const resultPane = ".result-window .CodeMirror";

  async function run(operation, predicate) {
    await page.locator(".graphiql-execute-button").click();
    await page.getByRole("menuitem", { name: operation, exact: true }).click();
    const deadline = Date.now() + STEP_MS;
    for (;;) {
      const text = await valueOf(resultPane);
      try {
        const parsed = JSON.parse(text);
        if (predicate(parsed)) return parsed;
      } catch {}
      if (Date.now() > deadline) throw new Error(`${operation}: no expected result; the pane shows: ${text}`);
      await page.waitForTimeout(200);
    }
  }

  step("read the headers editor");
  await editor(headersEditor).waitFor();
  observed.initialHeaders = await valueOf(headersEditor);

  step("sign in with the Login operation");
  const login = await run("Login", (r) => r?.data?.login);
  observed.token = login.data.login.session?.token ?? null;
  if (!observed.token) throw new Error(`Login returned no token: ${JSON.stringify(login)}`);

  step("paste the token into the headers editor");
  await editor(headersEditor).click();
  await page.keyboard.press("ControlOrMeta+A");
  await page.keyboard.insertText(JSON.stringify({ Authorization: `Bearer ${observed.token}` }));

  step("run the Fleets query");
  const fleets = await run("Fleets", (r) => r?.data?.fleets || r?.errors);
  if (!fleets.data?.fleets) throw new Error(`Fleets failed: ${JSON.stringify(fleets)}`);
  observed.fleets = fleets.data.fleets.map((fleet) => fleet.name);

  step("start the robotStatus subscription");
  const event = await run("RobotStatus", (r) => r?.data?.robotStatus || r?.errors);
  if (!event.data?.robotStatus) throw new Error(`robotStatus failed: ${JSON.stringify(event)}`);
  observed.event = event.data.robotStatus;

  step("open the documentation explorer");
  await page.getByRole("button", { name: "Show Documentation Explorer" }).click();
  const docs = page.locator(".graphiql-doc-explorer");
  await docs.getByText("Query", { exact: true }).first().waitFor();
  observed.docs = (await docs.innerText()).slice(0, 400);

  step("open the history");
  await page.getByRole("button", { name: "Show History" }).click();
  const history = page.locator(".graphiql-history");
  await history.getByText("Fleets").first().waitFor();
  observed.history = (await history.innerText()).split("\n").filter(Boolean);
  await page.getByRole("button", { name: "Show History" }).click().catch(() => {});

  step("screenshot");
  await page.screenshot({ path: screenshot, fullPage: true });
  observed.cspViolations = await page.evaluate(() => window.__csp);
  step("done");
  process.stdout.write(JSON.stringify(observed));
} catch (error) {
  try {
    const page = context.pages()[0];
    if (page) await page.screenshot({ path: screenshot, fullPage: true });
  } catch {}
  process.stderr.write(`failed at "${observed.step}": ${error.stack ?? error}\n`);
  process.stdout.write(JSON.stringify(observed));
  process.exitCode = 1;
} finally {
  await context.close();
  rmSync(profile, { recursive: true, force: true });
}
