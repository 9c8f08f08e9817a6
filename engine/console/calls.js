// The Calls view: live and recent calls (state and duration, updating on their
// own), and one call's detail: who, state, duration, its actor tree (live
// calls), its turns with latency waterfalls, and its lead. End call and
// restart-actor act through the admin API.

import * as api from "./api.js";
import { badge, clock, empty, epochS, h, liveClock, ltr, said, when } from "./dom.js";
import { renderTree } from "./tree.js";
import { renderTurns } from "./turns.js";

/** A call row in one shape whatever the host's version calls its fields. */
export function normCall(c) {
  const started = epochS(c.started_at);
  const ended = epochS(c.ended_at);
  const state = c.state || (ended ? "ended" : "live");
  let duration = typeof c.duration_s === "number" ? c.duration_s : null;
  if (duration === null && started !== null) duration = (ended ?? Date.now() / 1000) - started;
  return {
    ...c,
    sid: c.sid || c.call_sid || "",
    business: c.business || c.business_id || "",
    from: c.from ?? c.from_number ?? "",
    to: c.to ?? c.to_number ?? "",
    state, started, ended, duration,
  };
}

/** GET /admin/calls/{sid} in one shape: {call, turns, lead, tree}. */
export function normDetail(d) {
  const call = normCall(d.call || d);
  const turns = d.turns || (d.call && d.call.turns) || [];
  let lead = d.lead !== undefined ? d.lead : null;
  if (lead === null && Array.isArray(d.leads) && d.leads.length) lead = d.leads[d.leads.length - 1];
  return { call, turns, lead, tree: d.tree || null };
}

export function callTitle(c) {
  if (c.from === "browser") return h("span", {}, "Test call ", h("span", { class: "muted" }, "(browser)"));
  return c.from ? ltr(c.from, "phone") : h("span", { class: "muted" }, "unknown caller");
}

export function stateBadge(c) {
  if (c.state === "live") return badge("live", "live");
  return badge(c.end_reason && c.end_reason !== "ended" ? `ended · ${c.end_reason}` : "ended", "idle");
}

function durationCell(c) {
  return c.state === "live" && c.started !== null ? liveClock(c.started) : h("span", { class: "clock" }, clock(c.duration));
}

export class CallsView {
  constructor(app) {
    this.app = app;
    this.filter = "all";
    this.sid = null;
    this.lastList = "";
    this.lastDetail = "";
  }

  mount(root, params) {
    this.sid = params[0] ? decodeURIComponent(params[0]) : null;
    this.list = h("div", { class: "list-items", id: "calls-list" });
    this.detail = h("div", { class: "detail", id: "call-detail" });
    const chip = (value, label) =>
      h("button", { class: `chip${this.filter === value ? " on" : ""}`, dataset: { filter: value },
        onclick: (ev) => { this.filter = value; this.lastList = ""; for (const b of ev.target.parentNode.children) b.classList.toggle("on", b === ev.target); this.refresh(); } }, label);
    root.replaceChildren(
      h("div", { class: `split${this.sid ? " has-detail" : ""}` },
        h("aside", { class: "list card" },
          h("div", { class: "list-head" }, h("h2", {}, "Calls"), h("div", { class: "chips" }, chip("all", "All"), chip("live", "Live"))),
          this.list),
        this.detail,
      ),
    );
    if (!this.sid) this.detail.append(empty("Select a call to see its conversation, latency and actor tree."));
    this.lastList = this.lastDetail = "";
    return this.refresh();
  }

  /** The server events that change this view. */
  get events() {
    return ["calls"];
  }

  /** Refresh each second while the selected call is live (its tree and turns move). */
  get interval() {
    return this.sid && this.selectedLive ? 1000 : undefined;
  }

  async refresh() {
    const data = await api.get(`/admin/calls?limit=100&state=${this.filter}`);
    let calls = (data.calls || []).map(normCall);
    if (this.filter === "live") calls = calls.filter((c) => c.state === "live");
    calls.sort((a, b) => (b.state === "live") - (a.state === "live") || (b.started ?? 0) - (a.started ?? 0));
    this.app.setLiveCount(calls.filter((c) => c.state === "live").length);
    const key = JSON.stringify([this.app.names, calls.map((c) => [c.sid, c.state, c.ended, c.turns, c.summary])]);
    if (key !== this.lastList) {
      this.lastList = key;
      this.renderList(calls);
    }
    if (this.sid) await this.refreshDetail();
  }

  renderList(calls) {
    if (!calls.length) {
      this.list.replaceChildren(empty(this.filter === "live" ? "No live calls right now." : "No calls yet. Place a test call from the Test call tab."));
      return;
    }
    this.list.replaceChildren(
      ...calls.map((c) =>
        h("a", { class: `item${c.sid === this.sid ? " selected" : ""}${c.state === "live" ? " is-live" : ""}`, href: `#/calls/${encodeURIComponent(c.sid)}`, dataset: { sid: c.sid, state: c.state } },
          h("div", { class: "item-main" },
            h("span", { class: `dot ${c.state === "live" ? "ok pulse" : "idle"}` }),
            h("span", { class: "item-title" }, callTitle(c)),
            h("span", { class: "item-side" }, durationCell(c))),
          h("div", { class: "item-sub" },
            said(this.app.businessName(c.business), "biz"),
            h("span", {}, when(c.started)),
            c.summary ? said(c.summary, "sum") : null),
        ),
      ),
    );
  }

  async refreshDetail() {
    const sid = this.sid;
    let data;
    try {
      data = normDetail(await api.get(`/admin/calls/${encodeURIComponent(sid)}`));
    } catch (err) {
      if (err instanceof api.ApiError && err.status === 404) {
        this.detail.replaceChildren(empty(`No call ${sid}.`));
        return;
      }
      throw err;
    }
    if (!data.tree && data.call.state === "live") {
      try { data.tree = await api.get(`/admin/calls/${encodeURIComponent(sid)}/tree`); } catch (err) {
        if (!(err instanceof api.ApiError)) throw err; // another worker owns it, or it just ended
      }
    }
    if (sid !== this.sid) return;
    this.selectedLive = data.call.state === "live";
    const key = JSON.stringify([this.app.names, data]);
    if (key === this.lastDetail) return;
    this.lastDetail = key;
    this.detail.replaceChildren(...renderCallDetail(data, this.app));
  }
}

export function renderCallDetail({ call, turns, lead, tree }, app) {
  const live = call.state === "live";
  const actions = h("div", { class: "actions" });
  if (live) actions.append(confirmButton("End call", "End this call now?", () => app.act(`/admin/calls/${encodeURIComponent(call.sid)}/end`, {}, "Ending the call…")));
  const head = h("section", { class: "card call-head" },
    h("a", { class: "back", href: "#/calls" }, "← Calls"),
    h("div", { class: "call-title" },
      h("h2", {}, callTitle(call)),
      stateBadge(call),
      h("span", { class: "duration", title: "duration" }, durationCell(call)),
      actions),
    h("dl", { class: "facts" },
      fact("Business", said(app.businessName(call.business))),
      fact("To", call.to ? ltr(call.to, "phone") : "–"),
      fact("Started", when(call.started)),
      call.ended ? fact("Ended", when(call.ended)) : null,
      call.process ? fact("Process", ltr(String(call.process))) : null,
      fact("Call", ltr(call.sid, "mono small"))),
    call.summary ? h("p", { class: "summary" }, said(call.summary)) : null,
  );
  const convo = h("section", { class: "card conversation" },
    h("h3", {}, "Conversation and latency"),
    legend(),
    renderTurns(turns));
  const side = h("div", { class: "side" });
  if (tree) {
    side.append(h("section", { class: "card tree-card" },
      h("h3", {}, "Actor tree"),
      renderTree(tree, live ? { onRestart: (role) => app.act(`/admin/calls/${encodeURIComponent(call.sid)}/restart`, { role }, `Restarting ${role}…`) } : {})));
  } else if (live) {
    side.append(h("section", { class: "card tree-card" }, h("h3", {}, "Actor tree"), empty("The tree is not visible from this process.")));
  }
  side.append(renderLead(lead));
  return [head, h("div", { class: "detail-grid" }, convo, side)];
}

function fact(label, value) {
  return h("div", {}, h("dt", {}, label), h("dd", {}, value));
}

function legend() {
  return h("div", { class: "legend" },
    h("span", {}, h("i", { class: "stage-stt" }), "speech end → STT final"),
    h("span", {}, h("i", { class: "stage-llm" }), "→ LLM first token"),
    h("span", {}, h("i", { class: "stage-tts" }), "→ TTS first audio"),
    h("span", {}, h("i", { class: "stage-send" }), "→ first reply frame"),
    h("span", {}, h("i", { class: "slow" }), "slowest stage"));
}

export function renderLead(lead) {
  const card = h("section", { class: "card lead-card" }, h("h3", {}, "Lead"));
  if (!lead || !lead.fields || !Object.keys(lead.fields).length) {
    card.append(empty("No lead captured on this call."));
    return card;
  }
  card.append(
    h("dl", { class: "fields" }, Object.entries(lead.fields).map(([k, v]) => fact(k, said(String(v))))),
    h("p", { class: "muted" }, lead.complete ? "✓ complete" : "incomplete: some fields are still missing"),
  );
  return card;
}

/** A button that asks once more before it acts (no modal dialog). */
export function confirmButton(label, question, action) {
  const btn = h("button", { class: "danger" }, label);
  let armed = null;
  btn.addEventListener("click", () => {
    if (armed) {
      clearTimeout(armed);
      armed = null;
      btn.textContent = label;
      action();
      return;
    }
    btn.textContent = `${question} Click again`;
    armed = setTimeout(() => { armed = null; btn.textContent = label; }, 4000);
  });
  return btn;
}
