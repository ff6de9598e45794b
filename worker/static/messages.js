// Dashboard: a tenant's synced messages, with filters, word search and "Load more" (cursor pages).
// Uses app.js's helpers ($, el, api, ui, report); every value is rendered as text, never as HTML.
"use strict";

const messagesUi = { cursor: null, query: null };

function showMessages() {
  ui.view = "messages";
  for (const s of document.querySelectorAll("main > section")) s.hidden = s.id !== "messages-view";
  if (!$("messages-tenant").value) $("messages-tenant").value = localStorage.getItem(TENANT_KEY) || "";
  if ($("messages-tenant").value.trim()) searchMessages().catch(report);
}

function messagesQuery() {
  const params = new URLSearchParams({ limit: "50" });
  const field = (id, name) => { const v = $(id).value.trim(); if (v) params.set(name, v); };
  field("messages-account", "account_id");
  field("messages-mailbox", "mailbox");
  field("messages-category", "category");
  field("messages-q", "q");
  field("messages-reply", "needs_reply");
  // date inputs are local calendar days: from the start of `since` to the end of `until`
  if ($("messages-since").value) params.set("since", new Date(`${$("messages-since").value}T00:00`).toISOString());
  if ($("messages-until").value) {
    const end = new Date(`${$("messages-until").value}T00:00`);
    end.setDate(end.getDate() + 1);
    params.set("until", end.toISOString());
  }
  return params;
}

async function searchMessages() {
  messagesUi.query = messagesQuery();
  messagesUi.cursor = null;
  $("messages").replaceChildren();
  await loadMessages();
}

async function loadMessages() {
  const tenant = $("messages-tenant").value.trim();
  if (!tenant) return;
  const params = new URLSearchParams(messagesUi.query);
  if (messagesUi.cursor) params.set("cursor", messagesUi.cursor);
  $("messages-error").textContent = "";
  let page;
  try {
    page = await api(`/v1/tenants/${encodeURIComponent(tenant)}/messages?${params}`);
  } catch (err) {
    $("messages-error").textContent = String(err.message || err);  // e.g. a filter the API refused (422)
    throw err;
  }
  $("messages").append(...page.items.map((m) => el("tr", { dataset: { message: m.id }, title: m.snippet },
    el("td", { title: m.sort_date }, new Date(m.sort_date).toLocaleString()),
    el("td", {}, m.sender),
    el("td", {}, m.subject || "(no subject)", m.attachments ? ` 📎${m.attachments}` : ""),
    el("td", {}, m.mailbox),
    el("td", {}, m.category || ""),
    el("td", {}, m.needs_reply == null ? "" : (m.needs_reply ? "yes" : "no")))));
  messagesUi.cursor = page.next_cursor;
  $("messages-more").hidden = !page.next_cursor;
  $("messages-empty").hidden = $("messages").children.length > 0;
}

document.addEventListener("DOMContentLoaded", () => {
  $("messages-link").addEventListener("click", (e) => { e.preventDefault(); showMessages(); });
  // the other views hide their siblings by id: hide this one whenever another nav entry is chosen
  $("app").querySelector("nav").addEventListener("click", (e) => {
    if (e.target.closest("a") && !e.target.closest("#messages-link")) $("messages-view").hidden = true;
  });
  $("messages-form").addEventListener("submit", (e) => { e.preventDefault(); searchMessages().catch(report); });
  $("messages-more").addEventListener("click", () => loadMessages().catch(report));
});
