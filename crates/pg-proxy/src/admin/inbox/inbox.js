// The approvals inbox: the admin API, in a page. No framework, no build step.
//
// Everything shown that a client or an approver wrote (statements,
// parameters, reasons, names) goes into the page as text, never as HTML.
// The token lives in this tab's sessionStorage and travels only in the
// Authorization header of requests to this same origin.
"use strict";

const TOKEN_KEY = "portcullis.token";
const $ = (selector, root = document) => root.querySelector(selector);

let tab = "pending";
let refreshing = null;
let stream = null;

function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

// The token's claims, for showing who is signed in (the gateway checks the
// token itself on every call).
function claims(jwt) {
  try {
    const part = jwt.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(part + "===".slice((part.length + 3) % 4)));
  } catch {
    return {};
  }
}

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function api(method, path, body) {
  const headers = { Authorization: `Bearer ${token()}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    cache: "no-store",
    credentials: "omit",
  });
  if (response.status === 204) return null;
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    const error = data.error || {};
    throw new ApiError(response.status, error.code || "error", error.message || `HTTP ${response.status}`);
  }
  return data;
}

function text(tag, content, className) {
  const el = document.createElement(tag);
  if (className) el.className = className;
  el.textContent = content;
  return el;
}

// How long from now, in words: "3 min ago", "in 14 min".
function relative(iso) {
  const seconds = Math.round((Date.parse(iso) - Date.now()) / 1000);
  const abs = Math.abs(seconds);
  // Clocks a second apart, or a moment ago.
  if (abs < 5) return "just now";
  const amount =
    abs < 60 ? `${abs} s` : abs < 3600 ? `${Math.round(abs / 60)} min` : abs < 86400 ? `${Math.round(abs / 3600)} h` : `${Math.round(abs / 86400)} d`;
  return seconds < 0 ? `${amount} ago` : `in ${amount}`;
}

function who(requester) {
  return requester.actor ? `${requester.actor} for ${requester.subject}` : requester.subject;
}

// SQL as text spans: keywords, strings, numbers, parameters and comments
// marked for colour. A display aid only: nothing is decided from it.
const KEYWORDS = new Set(
  ("select from where and or not in is null insert into values update set delete returning join left right full inner " +
    "outer on using group by order having limit offset union all distinct as with case when then else end create " +
    "drop alter table truncate grant revoke begin commit rollback merge matched exists between like ilike cascade " +
    "index view function do call copy to explain analyze").split(" "),
);

function highlight(sql) {
  const pre = document.createElement("pre");
  pre.className = "sql";
  const token = /(--[^\n]*|\/\*[\s\S]*?\*\/)|('(?:[^']|'')*')|(\$\d+)|(\b\d+(?:\.\d+)?\b)|([A-Za-z_][A-Za-z0-9_$]*)|([\s\S])/g;
  let match;
  while ((match = token.exec(sql)) !== null) {
    const [all, comment, string, param, number, word] = match;
    let kind = null;
    if (comment) kind = "comment";
    else if (string) kind = "string";
    else if (param) kind = "param";
    else if (number) kind = "number";
    else if (word && KEYWORDS.has(word.toLowerCase())) kind = "keyword";
    if (kind) pre.append(text("span", all, kind));
    else pre.append(document.createTextNode(all));
  }
  return pre;
}

function renderPlan(container, plans) {
  container.replaceChildren();
  if (plans === null || plans === undefined) {
    container.append(text("p", "Planning…", "muted"));
    return;
  }
  for (const plan of plans) {
    const block = document.createElement("div");
    block.className = "plan-entry";
    if (plan.state === "planned") {
      const rows = plan.estimated_rows;
      block.append(text("strong", `about ${rows} row${rows === 1 ? "" : "s"}`, "rows"));
      const relations = plan.relations.length ? plan.relations.join(", ") : "no table";
      block.append(text("span", ` · touches ${relations} · cost ${plan.estimated_cost}`, "relations"));
      const details = document.createElement("details");
      details.append(text("summary", "plan"));
      details.append(text("pre", JSON.stringify(plan.plan, null, 2), "plan-json"));
      block.append(details);
    } else {
      block.append(text("span", `No plan: ${plan.why}`, "muted"));
    }
    container.append(block);
  }
}

function describeState(state) {
  switch (state.state) {
    case "pending":
      return "pending";
    case "approved":
      return state.grant ? `approved (grant ${state.grant})` : "approved";
    case "denied":
      return `denied by ${state.by}: ${state.reason}`;
    case "withdrawn":
      return `withdrawn: ${state.why}`;
    default:
      return state.state;
  }
}

function renderRequest(request) {
  const card = $("#request-card").content.firstElementChild.cloneNode(true);
  card.dataset.request = request.id;
  $(".requester", card).textContent = who(request.requester);
  $(".state", card).textContent = describeState(request.state);
  $(".state", card).dataset.state = request.state.state;
  $(".times", card).textContent =
    request.state.state === "pending"
      ? `asked ${relative(request.created)} · expires ${relative(request.expires)}`
      : `asked ${relative(request.created)}`;
  $(".id", card).textContent = request.id;
  const needed = request.terms.approvals > 1 ? ` · ${request.terms.approvals} approvals needed` : "";
  $(".rule", card).textContent = `${request.rule || "no rule"}: ${request.reason}${needed} · approvers: ${request.approvers.join(", ")}`;
  const why = $(".why", card);
  if (request.justification) {
    why.append(text("span", "Their reason: ", "label"), text("span", request.justification, "justification"));
  } else {
    why.append(text("span", "No reason given", "muted"));
  }
  const statements = $(".statements", card);
  for (const statement of request.statements) {
    statements.append(highlight(statement.sql));
    if (statement.parameters.length) {
      const list = document.createElement("ol");
      list.className = "parameters";
      statement.parameters.forEach((value, i) => {
        const item = document.createElement("li");
        item.append(text("span", `$${i + 1} = `, "param"));
        item.append(value === null ? text("span", "NULL", "keyword") : text("span", `'${value}'`, "string"));
        list.append(item);
      });
      statements.append(list);
    }
    if (statement.decision) {
      const details = document.createElement("details");
      details.className = "decision";
      details.append(text("summary", "decision"));
      details.append(text("pre", JSON.stringify(statement.decision, null, 2), "plan-json"));
      statements.append(details);
    }
  }
  renderPlan($(".plan", card), request.plan);
  const votes = $(".votes", card);
  for (const vote of request.votes) {
    votes.append(text("li", `approved by ${vote.approver} ${relative(vote.at)}${vote.reason ? `: ${vote.reason}` : ""}`));
  }
  const form = $(".decide", card);
  if (request.state.state !== "pending") {
    form.remove();
  } else {
    $(".approve", card).addEventListener("click", () => decide(card, request.id, "approve"));
    $(".deny", card).addEventListener("click", () => decide(card, request.id, "deny"));
    if (claims(token()).sub === request.requester.subject) {
      // The requester's own request: they may give its reason.
      $(".justify", card).hidden = false;
      $(".justify", card).addEventListener("click", () => decide(card, request.id, "justify"));
    }
  }
  return card;
}

async function decide(card, id, verdict) {
  const reason = $(".reason", card).value.trim();
  const outcome = $(".outcome", card);
  outcome.className = "outcome";
  if ((verdict === "deny" || verdict === "justify") && !reason) {
    outcome.textContent =
      verdict === "deny" ? "A denial needs a reason: the requester is told it." : "Write the reason first.";
    outcome.classList.add("error");
    $(".reason", card).focus();
    return;
  }
  const body = { reason };
  const grant = $(".grant-for", card).value;
  if (verdict === "approve" && grant) body.grant_for = grant;
  for (const button of card.querySelectorAll("button")) button.disabled = true;
  try {
    const answer = await api("POST", `/api/v1/approvals/${encodeURIComponent(id)}/${verdict}`, body);
    outcome.textContent =
      verdict === "justify"
        ? "Reason given."
        : answer.state === "pending"
          ? `Counted: ${answer.needed} more needed.`
          : verdict === "approve"
            ? "Approved."
            : "Denied.";
    outcome.classList.add("done");
  } catch (e) {
    outcome.textContent = e.message;
    outcome.classList.add("error");
    for (const button of card.querySelectorAll("button")) button.disabled = false;
    return;
  }
  refresh();
}

function renderGrant(grant) {
  const card = $("#grant-card").content.firstElementChild.cloneNode(true);
  card.dataset.grant = grant.id;
  $(".requester", card).textContent = who(grant.requester);
  $(".times", card).textContent = `granted by ${grant.granted_by.join(", ")} · expires ${relative(grant.expires)}`;
  $(".id", card).textContent = grant.id;
  $(".rule", card).textContent = `statements shaped like request ${grant.request}'s (fingerprint ${grant.fingerprint})`;
  $(".revoke", card).addEventListener("click", async () => {
    try {
      await api("DELETE", `/api/v1/grants/${encodeURIComponent(grant.id)}`);
      refresh();
    } catch (e) {
      $(".outcome", card).textContent = e.message;
      $(".outcome", card).className = "outcome error";
    }
  });
  return card;
}

// Shows the current tab again. Calls made while one is running fold into
// one more run after it.
async function refresh() {
  if (refreshing) {
    refreshing.again = true;
    return;
  }
  refreshing = { again: false };
  try {
    await show();
  } finally {
    const again = refreshing.again;
    refreshing = null;
    if (again) refresh();
  }
}

async function show() {
  const error = $("#error");
  try {
    const list = $("#list");
    const empty = $("#empty");
    let cards;
    if (tab === "grants") {
      const { grants } = await api("GET", "/api/v1/grants");
      cards = grants.map(renderGrant);
      empty.textContent = "No live grants.";
    } else {
      const { approvals } = await api("GET", `/api/v1/approvals?state=${tab}`);
      if (tab === "decided") approvals.reverse();
      cards = approvals.map(renderRequest);
      empty.textContent = tab === "pending" ? "Nothing waits for you." : "Nothing decided yet.";
      if (tab === "pending") $("#pending-count").textContent = approvals.length ? `(${approvals.length})` : "";
    }
    // What an approver is typing, and what the card told them last (a
    // denial without a reason), survive the refresh, focus included.
    let focus = null;
    for (const card of cards) {
      const old = card.dataset.request && list.querySelector(`[data-request="${CSS.escape(card.dataset.request)}"]`);
      if (old && $(".reason", old) && $(".reason", card)) {
        $(".reason", card).value = $(".reason", old).value;
        $(".grant-for", card).value = $(".grant-for", old).value;
        $(".outcome", card).textContent = $(".outcome", old).textContent;
        $(".outcome", card).className = $(".outcome", old).className;
        if (document.activeElement === $(".reason", old)) focus = $(".reason", card);
      }
    }
    list.replaceChildren(...cards);
    if (focus) focus.focus();
    empty.hidden = cards.length > 0;
    error.textContent = "";
  } catch (e) {
    if (e.status === 401) return signOut(`Your token was refused: ${e.message}`);
    error.textContent = e.message;
  }
}

// Live updates: the server-sent event stream, read with fetch (an
// EventSource cannot send the Authorization header), any event refreshing
// the view. Reconnects after a pause when the stream ends.
async function listen() {
  const controller = new AbortController();
  stream = controller;
  const live = $("#live");
  while (stream === controller) {
    try {
      const response = await fetch("/api/v1/events", {
        headers: { Authorization: `Bearer ${token()}`, Accept: "text/event-stream" },
        signal: controller.signal,
        cache: "no-store",
        credentials: "omit",
      });
      if (response.status === 401) return signOut("Your token was refused.");
      if (!response.ok || !response.body) throw new Error(`HTTP ${response.status}`);
      live.textContent = "live";
      live.dataset.state = "live";
      refresh();
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffered = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffered += value;
        const events = buffered.split("\n\n");
        buffered = events.pop();
        if (events.some((e) => e.split("\n").some((line) => line.startsWith("data:")))) refresh();
      }
    } catch (e) {
      if (controller.signal.aborted) return;
    }
    live.textContent = "reconnecting…";
    live.dataset.state = "down";
    await new Promise((resolve) => setTimeout(resolve, 2000));
  }
}

function signIn(jwt) {
  sessionStorage.setItem(TOKEN_KEY, jwt);
  const c = claims(jwt);
  $("#who-name").textContent = c.sub ? `signed in as ${c.sub}` : "signed in";
  $("#who").hidden = false;
  $("#login").hidden = true;
  $("#inbox").hidden = false;
  refresh();
  listen();
}

function signOut(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  if (stream) stream.abort();
  stream = null;
  $("#who").hidden = true;
  $("#inbox").hidden = true;
  $("#login").hidden = false;
  $("#login-error").textContent = message || "";
  $("#list").replaceChildren();
}

document.addEventListener("DOMContentLoaded", () => {
  $("#login-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const jwt = $("#token").value.trim();
    sessionStorage.setItem(TOKEN_KEY, jwt);
    try {
      await api("GET", "/api/v1/approvals");
    } catch (e) {
      sessionStorage.removeItem(TOKEN_KEY);
      $("#login-error").textContent = e.status === 401 ? `Token refused: ${e.message}` : e.message;
      return;
    }
    $("#token").value = "";
    signIn(jwt);
  });
  $("#sign-out").addEventListener("click", () => signOut());
  for (const button of document.querySelectorAll(".tab")) {
    button.addEventListener("click", () => {
      tab = button.dataset.tab;
      for (const b of document.querySelectorAll(".tab")) b.setAttribute("aria-pressed", String(b === button));
      $("#list").replaceChildren();
      refresh();
    });
  }
  // Ages and expiries move on their own.
  setInterval(() => {
    if (token()) refresh();
  }, 30000);
  if (token()) signIn(token());
  else signOut();
});
