// Progressive enhancement: every form works without this script; with it, answers stream,
// feedback is sent in place and uploaded documents show their progress.
"use strict";

function csrfToken(form) {
  const input = form.querySelector("input[name=csrfmiddlewaretoken]");
  return input ? input.value : "";
}

function parseEvents(buffer) {
  // Server-sent events: blocks separated by a blank line, "event:" and "data:" lines.
  const blocks = buffer.split("\n\n");
  const rest = blocks.pop();
  const events = blocks.map((block) => {
    const event = { name: "message", data: "" };
    for (const line of block.split("\n")) {
      if (line.startsWith("event: ")) event.name = line.slice(7);
      else if (line.startsWith("data: ")) event.data += line.slice(6);
    }
    return event;
  });
  return { events, rest };
}

async function ask(form) {
  const question = form.querySelector("textarea[name=question]");
  const status = form.querySelector("[data-ask-status]");
  const button = form.querySelector("button[type=submit]");
  const turns = document.getElementById("turns");
  const pending = document.createElement("article");
  pending.className = "turn";
  pending.innerHTML = '<h2 class="question"></h2><p class="rewrite" hidden></p>' +
    '<div class="answer"><p class="draft" aria-busy="true">Searching…</p></div>';
  pending.querySelector(".question").textContent = question.value;
  turns.appendChild(pending);
  button.disabled = true;
  status.textContent = "Answering…";
  const response = await fetch(form.dataset.api, {
    method: "POST", credentials: "same-origin",
    headers: { "Content-Type": "application/json", "X-CSRFToken": csrfToken(form),
               "Accept": "text/event-stream" },
    body: JSON.stringify({ question: question.value, stream: true }),
  });
  if (!response.ok) {
    const body = await response.json().catch(() => ({}));
    pending.querySelector(".draft").textContent =
      (body.error && body.error.message) || `The question failed (${response.status}).`;
    pending.querySelector(".draft").className = "error";
    button.disabled = false;
    status.textContent = "";
    return;
  }
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  const draft = pending.querySelector(".draft");
  let buffer = "", started = false;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    const parsed = parseEvents(buffer);
    buffer = parsed.rest;
    for (const event of parsed.events) {
      const data = JSON.parse(event.data);
      if (event.name === "question" && data.standalone_question !== question.value.trim()) {
        const rewrite = pending.querySelector(".rewrite");
        rewrite.textContent = `Searched as: “${data.standalone_question}”`;
        rewrite.hidden = false;
      } else if (event.name === "draft") {
        if (!started) { draft.textContent = ""; started = true; }
        draft.textContent += data.text;
        status.textContent = "Writing a draft; checking it against the sources next…";
      } else if (event.name === "turn") {
        const html = await fetch(form.dataset.turnUrl + data.id + "/",
                                 { credentials: "same-origin" }).then((r) => r.text());
        pending.outerHTML = html;
        question.value = "";
        form.querySelector("label[for=id_question]").textContent = "Ask a follow-up";
        const title = document.querySelector("h1");
        if (title.textContent === "New conversation") title.textContent = data.question;
        status.textContent = "Answered.";
        enhanceFeedback(turns);
      } else if (event.name === "error") {
        draft.textContent = data.error.message;
        draft.className = "error";
        status.textContent = "";
      }
    }
  }
  button.disabled = false;
}

function enhanceFeedback(root) {
  root.querySelectorAll("form[data-feedback]:not([data-ready])").forEach((form) => {
    form.dataset.ready = "1";
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const body = new FormData(form);
      body.set("rating", event.submitter ? event.submitter.value : "up");
      const response = await fetch(form.action, {
        method: "POST", body, credentials: "same-origin",
        headers: { "Accept": "application/json", "X-CSRFToken": csrfToken(form) },
      });
      if (response.ok) {
        form.classList.add("sent");
        form.querySelectorAll("button").forEach((b) => { b.disabled = true; });
      }
    });
  });
}

function followStatuses(table) {
  const open = () => [...table.querySelectorAll("tr[data-document]")].filter(
    (row) => row.dataset.status === "pending" || row.dataset.status === "processing");
  const tick = async () => {
    const rows = open();
    if (!rows.length) return;
    const ids = rows.map((row) => row.dataset.document).join(",");
    const data = await fetch(`${table.dataset.statuses}?ids=${ids}`,
                             { credentials: "same-origin" }).then((r) => r.json());
    for (const row of rows) {
      const info = data.documents[row.dataset.document];
      if (!info) continue;
      row.dataset.status = info.status;
      const cell = row.querySelector(".status");
      cell.className = `status status-${info.status}`;
      cell.querySelector("[data-label]").textContent = info.label;
      cell.querySelector("[data-message]").textContent = info.progress || info.message;
      row.querySelector("[data-version]").textContent = info.version;
    }
    setTimeout(tick, 1500);
  };
  setTimeout(tick, 1000);
}

document.addEventListener("DOMContentLoaded", () => {
  const form = document.querySelector("form[data-ask]");
  if (form) {
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      ask(form).catch((error) => {
        form.querySelector("[data-ask-status]").textContent = `The question failed: ${error}`;
        form.querySelector("button[type=submit]").disabled = false;
      });
    });
  }
  enhanceFeedback(document);
  const table = document.querySelector("table[data-statuses]");
  if (table) followStatuses(table);
  const cited = document.getElementById("cited");
  if (cited) { cited.scrollIntoView({ block: "center" }); cited.focus({ preventScroll: true }); }
});
