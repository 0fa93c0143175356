// The admin console (docs/admin-api.md#console): sign in with an admin token, then accounts, keys, live sessions and
// usage charts, all through the admin API. No framework: each view is a function that fetches and redraws its part.

import { ApiError, call, token } from "./api.js";
import { barChart, bucketSessions, buckets, legend, MEASURES } from "./chart.js";
import { el, shortId, time, usd } from "./format.js";
import { bodyOf, fieldsOf, inputsFor } from "./schema-form.js";

const ACCOUNTS_PAGE = 25;
const SESSIONS_PAGE = 50;
const SESSIONS_REFRESH_MS = 2000;

const $ = (id) => document.getElementById(id);

const state = {
  accountCursors: [null], // the cursor of each page seen so far; the last is the page shown
  externalId: "", // the accounts list's filter, when not empty
  accountNames: new Map(), // id -> name, for the sessions table
  sessionsCursor: null,
  account: null, // the account shown in detail
  keys: [],
  keyFields: [], // the options of a new key, from the API's OpenAPI document
  sessionsTimer: null,
};

// -- errors ------------------------------------------------------------------------------------------------------

// The API's own words and code, or the browser's.
function describe(exc) {
  return exc instanceof ApiError ? `${exc.message} (${exc.code})` : String(exc.message ?? exc);
}

function showError(exc) {
  if (exc instanceof ApiError && (exc.status === 401 || exc.code === "admin_token_revoked")) {
    // The token stopped working (revoked, or another database): back to the sign-in form, with the API's reason.
    // Only the first refusal says why: the other calls in flight, or made since without a token, would overwrite
    // "admin_token_revoked" with "missing_admin_token".
    if (document.body.dataset.view !== "sign-in") signOut(describe(exc));
    return;
  }
  const box = $("error");
  box.textContent = describe(exc);
  box.hidden = false;
}

function clearError() {
  $("error").hidden = true;
  $("error").textContent = "";
}

// Run a user action; show its failure instead of throwing.
function action(run) {
  return async (event) => {
    event?.preventDefault();
    clearError();
    try {
      await run(event);
    } catch (exc) {
      showError(exc);
    }
  };
}

// -- sign in -----------------------------------------------------------------------------------------------------

async function signIn(event) {
  event.preventDefault();
  const secret = $("token").value.trim();
  const failure = $("sign-in-error");
  failure.hidden = true;
  try {
    // Any authenticated call checks the token; this one is needed anyway.
    await call("GET", "/accounts", { query: { limit: 1 }, secret });
  } catch (exc) {
    failure.textContent = describe(exc);
    failure.hidden = false;
    return;
  }
  token.set(secret);
  $("token").value = "";
  await showConsole();
}

function signOut(reason) {
  token.clear();
  clearInterval(state.sessionsTimer);
  state.sessionsTimer = null;
  // Nothing of the signed-in view stays in the page, least of all a new key's secret.
  closeAccount();
  for (const id of ["sessions", "accounts"]) $(id).tBodies[0].replaceChildren();
  state.accountNames.clear();
  state.externalId = "";
  $("find-account").elements.external_id.value = "";
  clearError();
  $("console-view").hidden = true;
  $("sign-out").hidden = true;
  $("sign-in-view").hidden = false;
  const failure = $("sign-in-error");
  failure.textContent = reason ?? "";
  failure.hidden = !reason;
  document.body.dataset.view = "sign-in";
}

async function showConsole() {
  $("sign-in-view").hidden = true;
  $("console-view").hidden = false;
  $("sign-out").hidden = false;
  document.body.dataset.view = "console";
  state.accountCursors = [null];
  await Promise.all([loadAccounts(), loadSessions(), loadKeyFields()].map((load) => load.catch(showError)));
  if (token.get() === null) return; // the token was refused meanwhile: signed out
  clearInterval(state.sessionsTimer);
  state.sessionsTimer = setInterval(() => loadSessions().catch(showError), SESSIONS_REFRESH_MS);
}

// -- accounts ----------------------------------------------------------------------------------------------------

async function loadAccounts() {
  const cursor = state.accountCursors.at(-1);
  const query = { limit: ACCOUNTS_PAGE, cursor, external_id: state.externalId };
  const page = await call("GET", "/accounts", { query });
  const rows = page.data.map((account) => {
    state.accountNames.set(account.id, account.name);
    const open = el("button", { type: "button", class: "link", dataset: { accountId: account.id } }, account.name);
    open.addEventListener("click", action(() => showAccount(account.id)));
    return el(
      "tr",
      { dataset: { accountId: account.id } },
      el("td", {}, open),
      el("td", {}, account.external_id ?? "—"),
      el("td", { class: "num" }, account.balance_usd === null ? "postpaid" : usd(account.balance_usd)),
      el("td", { class: "num" }, usd(account.monthly_budget_usd)),
      el("td", { class: "num" }, usd(account.low_balance_usd)),
      el("td", { class: "num" }, account.max_streams),
      el("td", {}, account.streaming_enabled ? "yes" : "no"),
      el("td", {}, time(account.created_at)),
    );
  });
  $("accounts").tBodies[0].replaceChildren(...rows);
  const pageNumber = state.accountCursors.length;
  const filter = state.externalId ? ` of the accounts with external id “${state.externalId}”` : "";
  $("accounts-page").textContent = `page ${pageNumber}${filter}`;
  $("accounts-first").disabled = pageNumber === 1;
  $("accounts-previous").disabled = pageNumber === 1;
  $("accounts-next").disabled = page.next_cursor === null;
  $("accounts-next").dataset.cursor = page.next_cursor ?? "";
}

function optionalText(value) {
  const text = value.trim();
  return text === "" ? undefined : text;
}

async function createAccount(event) {
  const form = event.target;
  const fields = new FormData(form);
  const body = { name: fields.get("name").trim() };
  const maxStreams = fields.get("max_streams").trim();
  if (maxStreams !== "") body.max_streams = Number(maxStreams);
  for (const name of ["balance_usd", "monthly_budget_usd", "low_balance_usd", "external_id"]) {
    const value = optionalText(fields.get(name));
    if (value !== undefined) body[name] = value;
  }
  const account = await call("POST", "/accounts", { body });
  form.reset();
  $("create-account-box").open = false;
  await loadAccounts();
  await showAccount(account.id);
}

// -- one account: its fields, keys and usage ----------------------------------------------------------------------

async function showAccount(id) {
  const account = await call("GET", `/accounts/${encodeURIComponent(id)}`);
  state.account = account;
  state.accountNames.set(account.id, account.name);
  $("account-name").textContent = account.name;
  const fields = [
    ["id", account.id],
    ["balance USD", account.balance_usd === null ? "postpaid" : usd(account.balance_usd)],
    ["monthly budget USD", usd(account.monthly_budget_usd)],
    ["low balance USD", usd(account.low_balance_usd)],
    ["max streams", account.max_streams],
    ["streaming", account.streaming_enabled ? "enabled" : "disabled"],
    ["external id", account.external_id ?? "—"],
    ["webhook URL", account.webhook_url ?? "—"],
  ];
  $("account-fields").replaceChildren(...fields.flatMap(([name, value]) => [el("dt", {}, name), el("dd", {}, value)]));
  $("account-section").hidden = false;
  $("account-section").dataset.accountId = account.id;
  forgetNewKey();
  await loadKeys();
  await loadUsage();
  $("account-section").scrollIntoView({ block: "start" });
}

// A key's own limits, where the API has them: its providers and its stream limit.
function keyLimits(key) {
  const limits = [];
  if (Array.isArray(key.providers)) limits.push(key.providers.join(", "));
  if (typeof key.max_streams === "number") limits.push(`${key.max_streams} streams`);
  return limits.length ? limits.join(" · ") : "—";
}

function forgetNewKey() {
  $("new-key").hidden = true;
  $("new-key-secret").textContent = "";
}

function closeAccount() {
  state.account = null;
  forgetNewKey();
  $("account-section").hidden = true;
  delete $("account-section").dataset.accountId;
  $("keys").tBodies[0].replaceChildren();
  for (const plot of document.querySelectorAll(".chart .plot")) plot.replaceChildren();
}

async function loadKeys() {
  const keys = await call("GET", `/accounts/${encodeURIComponent(state.account.id)}/keys`);
  state.keys = keys;
  const rows = keys.map((key) => {
    // Two clicks: the first arms the button ("Confirm revoke"), the second revokes (no modal dialog).
    const revoked = key.revoked_at !== null;
    const revoke = el("button", { type: "button", class: "danger revoke", disabled: revoked }, "Revoke");
    revoke.addEventListener(
      "click",
      action(async () => {
        if (revoke.dataset.armed !== "true") {
          revoke.dataset.armed = "true";
          revoke.textContent = "Confirm revoke";
          return;
        }
        revoke.disabled = true;
        await call("DELETE", `/keys/${encodeURIComponent(key.id)}`);
        await loadKeys();
      }),
    );
    return el(
      "tr",
      { dataset: { keyId: key.id }, class: key.revoked_at ? "revoked" : null },
      el("td", {}, el("code", {}, `${key.prefix}…`)),
      el("td", {}, key.name ?? "—"),
      el("td", {}, time(key.created_at)),
      el("td", {}, time(key.last_used_at)),
      el("td", {}, time(key.expires_at)),
      el("td", {}, keyLimits(key)),
      el("td", {}, time(key.revoked_at)),
      el("td", {}, revoke),
    );
  });
  $("keys").tBodies[0].replaceChildren(...rows);
}

// The new-key form asks for the options createKey's request body documents (none, on an API without any).
async function loadKeyFields() {
  const openapi = await call("GET", "/openapi.json");
  const operation = Object.values(openapi.paths)
    .flatMap((path) => Object.values(path))
    .find((op) => op.operationId === "createKey");
  const ref = operation?.requestBody?.content?.["application/json"]?.schema?.$ref ?? "";
  state.keyFields = fieldsOf(openapi.components?.schemas?.[ref.split("/").at(-1)]);
  $("create-key-form").replaceChildren(...inputsFor(state.keyFields), $("create-key"));
}

async function createKey(event) {
  const form = event.target;
  const body = bodyOf(form, state.keyFields);
  const created = await call("POST", `/accounts/${encodeURIComponent(state.account.id)}/keys`, { body });
  form.reset();
  $("new-key-secret").textContent = created.key;
  $("new-key").dataset.keyId = created.id;
  $("new-key").hidden = false;
  await loadKeys();
}

function keyLabel(id) {
  if (id === null) return "(no key)";
  const key = state.keys.find((k) => k.id === id);
  if (!key) return shortId(id);
  return key.name ? `${key.name} (${key.prefix}…)` : `${key.prefix}…`;
}

async function loadUsage() {
  const account = state.account;
  const span = buckets($("usage-window").value);
  const measure = MEASURES[$("usage-measure").value];
  const usage = await call("GET", `/accounts/${encodeURIComponent(account.id)}/usage`, {
    query: { since: span.start.toISOString(), until: span.end.toISOString() },
  });
  if (state.account !== account) return; // another account was opened meanwhile
  const charts = [
    ["chart-provider", (s) => s.provider],
    ["chart-key", (s) => keyLabel(s.api_key_id)],
  ];
  for (const [id, seriesOf] of charts) {
    const data = bucketSessions(usage.sessions, span, seriesOf, measure);
    const plot = $(id).querySelector(".plot");
    plot.replaceChildren(barChart(data, span, measure), legend(data, measure));
  }
  const cost = Object.values(usage.totals).reduce((sum, t) => sum + Number(t.cost_usd), 0);
  const count = usage.sessions.length;
  const balance = usage.balance_usd === null ? "postpaid" : `${usd(usage.balance_usd)} USD`;
  $("usage-summary").textContent =
    `${count} session${count === 1 ? "" : "s"} from ${time(span.start.toISOString())} to ` +
    `${time(span.end.toISOString())} UTC, about ${Number(cost.toPrecision(6))} USD; balance ${balance}.`;
  $("usage-summary").dataset.sessions = String(usage.sessions.length);
}

// -- live sessions -----------------------------------------------------------------------------------------------

// The names of accounts not seen yet (not on the accounts page shown), fetched once each in the background; the
// next refresh of the list shows them.
function learnAccountNames(ids) {
  for (const id of new Set(ids)) {
    if (state.accountNames.has(id)) continue;
    state.accountNames.set(id, null);
    call("GET", `/accounts/${encodeURIComponent(id)}`)
      .then((account) => state.accountNames.set(id, account.name))
      .catch(() => state.accountNames.delete(id));
  }
}

function accountName(id) {
  return state.accountNames.get(id) ?? shortId(id);
}

async function loadSessions() {
  const query = { live: "true", limit: SESSIONS_PAGE, cursor: state.sessionsCursor };
  const page = await call("GET", "/sessions", { query });
  const rows = page.data.map((session) => {
    const closing = session.close_requested_at !== null;
    const close = el("button", { type: "button", class: "danger close", disabled: closing });
    close.textContent = closing ? "Closing…" : "Close";
    close.addEventListener(
      "click",
      action(async () => {
        close.disabled = true;
        close.textContent = "Closing…";
        await call("POST", `/sessions/${encodeURIComponent(session.id)}/close`);
        await loadSessions();
      }),
    );
    return el(
      "tr",
      { dataset: { sessionId: session.id } },
      el("td", { title: session.id }, el("code", {}, shortId(session.id))),
      el("td", { title: session.account_id }, accountName(session.account_id)),
      el("td", {}, session.provider),
      el("td", {}, session.gateway_id ?? "—"),
      el("td", {}, time(session.started_at)),
      el("td", { class: "num" }, session.audio_seconds.toFixed(1)),
      el("td", { class: "num" }, usd(session.cost_usd)),
      el("td", {}, close),
    );
  });
  $("sessions").tBodies[0].replaceChildren(...rows);
  learnAccountNames(page.data.map((session) => session.account_id));
  $("sessions-empty").hidden = rows.length > 0;
  $("sessions-first").disabled = state.sessionsCursor === null;
  $("sessions-next").disabled = page.next_cursor === null;
  $("sessions-next").dataset.cursor = page.next_cursor ?? "";
}

// -- wiring ------------------------------------------------------------------------------------------------------

function wire() {
  $("sign-in").addEventListener("submit", signIn);
  $("sign-out").addEventListener("click", () => signOut());
  $("accounts-refresh").addEventListener("click", action(loadAccounts));
  $("accounts-next").addEventListener(
    "click",
    action(async () => {
      state.accountCursors.push($("accounts-next").dataset.cursor);
      await loadAccounts();
    }),
  );
  $("accounts-previous").addEventListener(
    "click",
    action(async () => {
      if (state.accountCursors.length > 1) state.accountCursors.pop();
      await loadAccounts();
    }),
  );
  $("accounts-first").addEventListener(
    "click",
    action(async () => {
      state.accountCursors = [null];
      await loadAccounts();
    }),
  );
  $("create-account").addEventListener("submit", action(createAccount));
  $("find-account").addEventListener(
    "submit",
    action(async (event) => {
      state.externalId = event.target.elements.external_id.value.trim();
      state.accountCursors = [null];
      await loadAccounts();
    }),
  );
  $("accounts-all").addEventListener(
    "click",
    action(async () => {
      $("find-account").elements.external_id.value = "";
      state.externalId = "";
      state.accountCursors = [null];
      await loadAccounts();
    }),
  );
  $("account-close").addEventListener("click", closeAccount);
  $("create-key-form").addEventListener("submit", action(createKey));
  $("new-key-done").addEventListener("click", forgetNewKey);
  for (const id of ["usage-window", "usage-measure"]) $(id).addEventListener("change", action(loadUsage));
  // The keys too: the chart by key names them.
  $("usage-refresh").addEventListener(
    "click",
    action(async () => {
      await loadKeys();
      await loadUsage();
    }),
  );
  $("sessions-refresh").addEventListener("click", action(loadSessions));
  $("sessions-next").addEventListener(
    "click",
    action(async () => {
      state.sessionsCursor = $("sessions-next").dataset.cursor;
      await loadSessions();
    }),
  );
  $("sessions-first").addEventListener(
    "click",
    action(async () => {
      state.sessionsCursor = null;
      await loadSessions();
    }),
  );
}

wire();
if (token.get()) {
  showConsole();
} else {
  signOut();
}
