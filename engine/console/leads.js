// The Leads view: every captured lead with its fields, where it came from (a
// call links to it) and whether it is complete; CSV export with the token.

import * as api from "./api.js";
import { empty, h, ltr, said, when } from "./dom.js";

/** CSV text for leads (RFC 4180 quoting), one column per field name. */
export function leadsCsv(leads, fields) {
  const q = (v) => {
    const s = v === null || v === undefined ? "" : String(v);
    return /[",\r\n]/.test(s) ? `"${s.replaceAll('"', '""')}"` : s;
  };
  const head = ["created_at", "business", "source", "ref", "complete", ...fields];
  const rows = leads.map((l) => [
    new Date((l.created_at || 0) * 1000).toISOString(), l.business_id || l.business || "", l.source || "", l.ref || "",
    l.complete ? "yes" : "no", ...fields.map((f) => (l.fields || {})[f] ?? ""),
  ]);
  return [head, ...rows].map((r) => r.map(q).join(",")).join("\r\n") + "\r\n";
}

export class LeadsView {
  constructor(app) {
    this.app = app;
    this.last = "";
  }

  mount(root) {
    this.table = h("div", { class: "table-wrap", id: "leads" });
    this.exportBtn = h("button", { class: "primary", id: "leads-csv", onclick: () => this.exportCsv() }, "Export CSV");
    root.replaceChildren(
      h("section", { class: "card" },
        h("div", { class: "list-head" }, h("h2", {}, "Leads"), this.exportBtn),
        this.table),
    );
    this.last = "";
    return this.refresh();
  }

  async refresh() {
    const data = await api.get("/admin/leads?limit=500");
    this.leads = data.leads || [];
    const key = JSON.stringify(this.leads);
    if (key === this.last) return;
    this.last = key;
    this.fields = [...new Set(this.leads.flatMap((l) => Object.keys(l.fields || {})))];
    if (!this.leads.length) {
      this.table.replaceChildren(empty("No leads yet. The agent records one whenever a caller or chatter leaves their details."));
      return;
    }
    this.table.replaceChildren(
      h("table", { class: "leads" },
        h("thead", {}, h("tr", {}, h("th", {}, "When"), h("th", {}, "Business"), h("th", {}, "From"), ...this.fields.map((f) => h("th", {}, f)), h("th", {}, "Complete"))),
        h("tbody", {},
          this.leads.map((l) =>
            h("tr", {},
              h("td", { "data-label": "When" }, when(l.created_at)),
              h("td", { "data-label": "Business" }, said(this.app.businessName(l.business_id || l.business || ""))),
              h("td", { "data-label": "From" }, l.source === "call" && l.ref
                ? h("a", { href: `#/calls/${encodeURIComponent(l.ref)}` }, "call")
                : l.source === "chat" || l.source === "whatsapp"
                  ? h("a", { href: `#/chats/${encodeURIComponent(l.ref || "")}` }, "chat")
                  : ltr(l.source || "")),
              ...this.fields.map((f) => h("td", { "data-label": f }, said((l.fields || {})[f] ?? ""))),
              h("td", { "data-label": "Complete" }, l.complete ? h("span", { class: "ok-text" }, "✓") : h("span", { class: "muted" }, "–")))))),
    );
  }

  async exportCsv() {
    try {
      await api.download("/admin/leads.csv", "leads.csv");
    } catch (err) {
      if (!(err instanceof api.ApiError && err.status === 404)) throw err;
      // A host without the CSV route: the same columns, made here.
      api.saveBlob(new Blob([leadsCsv(this.leads || [], this.fields || [])], { type: "text/csv" }), "leads.csv");
    }
  }
}
