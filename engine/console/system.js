// The System view: every engine process (on every host) with its heartbeat and
// load, and the supervision tree of each (recorder, calls, chats, sidecar).

import * as api from "./api.js";
import { badge, clock, empty, epochS, h, ltr, when } from "./dom.js";
import { renderTree } from "./tree.js";

export class SystemView {
  constructor(app) {
    this.app = app;
    this.last = "";
  }

  get events() {
    return ["processes"];
  }

  mount(root) {
    this.body = h("div", { class: "procs", id: "processes" });
    root.replaceChildren(h("section", { class: "card" }, h("h2", {}, "Processes"), this.body));
    this.last = "";
    return this.refresh();
  }

  async refresh() {
    let procs;
    try {
      procs = (await api.get("/admin/processes")).processes || [];
    } catch (err) {
      if (!(err instanceof api.ApiError && err.status === 404)) throw err;
      const one = await api.get("/admin/tree");
      procs = [{ pid: one.pid, tree: one.tree, note: "this process only" }];
    }
    const key = JSON.stringify(procs);
    if (key === this.last) return;
    this.last = key;
    if (!procs.length) {
      this.body.replaceChildren(empty("No process has reported in."));
      return;
    }
    const now = Date.now() / 1000;
    this.body.replaceChildren(
      ...procs.map((p) => {
        const state = p.state && typeof p.state === "object" ? p.state : {};
        const tree = p.tree || state.tree || null;
        const beat = epochS(p.heartbeat_at);
        return h("article", { class: "proc" },
          h("div", { class: "proc-head" },
            h("strong", {}, ltr(p.host || "this host", "")), " ", h("span", { class: "muted" }, "pid ", ltr(String(p.pid ?? "?"))),
            p.note ? badge(p.note, "idle") : null,
            beat !== null ? badge(`heartbeat ${Math.max(0, Math.round(now - beat))} s ago`, now - beat < 10 ? "ok" : "warn") : null),
          h("dl", { class: "facts" },
            h("div", {}, h("dt", {}, "Live calls"), h("dd", {}, String(p.live_calls ?? state.live_calls ?? "–"))),
            h("div", {}, h("dt", {}, "Live chats"), h("dd", {}, String(p.live_chats ?? state.live_chats ?? "–"))),
            p.started_at ? h("div", {}, h("dt", {}, "Up"), h("dd", {}, clock(now - epochS(p.started_at)))) : null,
            p.started_at ? h("div", {}, h("dt", {}, "Since"), h("dd", {}, when(p.started_at))) : null),
          tree ? renderTree(tree) : null);
      }),
    );
  }
}
