// The console's shell: the token gate, the tabs (one view each, routed by the
// URL's #fragment), live updates and the refresh loop.
//
// Nothing is read from /admin/ until the operator has entered a token the
// server accepts; a 401 at any time forgets the token and shows the gate
// again. Updates: the server's event stream (GET /admin/events) wakes the
// current view at once; without it (or while it reconnects) the view polls.
// A view re-renders only what changed, and every duration on screen ticks
// each second on its own.

import * as api from "./api.js";
import { CallsView } from "./calls.js";
import { ChatsView } from "./chats.js";
import { h, tick } from "./dom.js";
import { LeadsView } from "./leads.js";
import { SystemView } from "./system.js";
import { TestCallView } from "./testcall.js";
import { WhatsAppView } from "./whatsapp.js";

const $ = (sel) => document.querySelector(sel);

class App {
  constructor() {
    this.views = {
      calls: new CallsView(this), chats: new ChatsView(this), leads: new LeadsView(this),
      whatsapp: new WhatsAppView(this), test: new TestCallView(this), system: new SystemView(this),
    };
    this.view = null;
    this.timer = null;
    this.live = false; // the event stream is connected
    this.events = null;
    api.onSignOut((reason) => this.signOut(reason));
  }

  start() {
    $("#gate-form").addEventListener("submit", (ev) => { ev.preventDefault(); this.signIn(); });
    $("#signout").addEventListener("click", () => { api.clearToken(); this.signOut(""); });
    window.addEventListener("hashchange", () => this.route());
    setInterval(tick, 1000);
    if (api.hasToken()) this.enter();
    else this.showGate("");
  }

  async signIn() {
    const input = $("#token");
    api.setToken(input.value.trim(), $("#remember").checked);
    try {
      await api.get("/admin/calls?limit=1");
    } catch (err) {
      this.showGate(err instanceof api.Unauthorized ? "That token was refused. Use the value of CALLENGINE_ADMIN_TOKEN on the server." : `The server did not answer: ${err.message}`);
      api.clearToken();
      return;
    }
    input.value = "";
    this.enter();
  }

  enter() {
    document.body.classList.add("signed-in");
    $("#gate").hidden = true;
    $("#view").hidden = false;
    for (const id of ["#tabs", "#signout", "#health", "#conn"]) $(id).hidden = false;
    this.connectEvents();
    this.health();
    this.loadBusinesses();
    this.route();
  }

  showGate(message) {
    document.body.classList.remove("signed-in");
    $("#gate").hidden = false;
    $("#view").hidden = true;
    $("#view").replaceChildren();
    for (const id of ["#tabs", "#signout", "#health", "#conn"]) $(id).hidden = true;
    $("#gate-error").textContent = message;
    $("#token").focus();
  }

  signOut(reason) {
    clearTimeout(this.timer);
    if (this.events) this.events.abort();
    this.events = null;
    this.view = null;
    this.showGate(reason);
  }

  route() {
    if (!api.hasToken()) return;
    const [name, ...params] = (location.hash.replace(/^#\/?/, "") || "calls").split("/");
    const view = this.views[name] || this.views.calls;
    for (const a of document.querySelectorAll("#tabs a")) a.classList.toggle("on", a.dataset.tab === (this.views[name] ? name : "calls"));
    this.view = view;
    this.banner(null);
    clearTimeout(this.timer);
    this.run(() => view.mount($("#view"), params));
  }

  /** Run a view step; a failure shows as a banner (or the gate on 401); then schedule the next refresh. */
  async run(step) {
    const view = this.view;
    try {
      await step();
      if (view === this.view) this.banner(null);
    } catch (err) {
      if (err instanceof api.Unauthorized) return;
      if (view === this.view) this.banner(err instanceof api.ApiError ? `The server answered: ${err.message}` : "The host is not reachable; retrying…");
    }
    if (view === this.view) this.schedule();
  }

  schedule(delay) {
    clearTimeout(this.timer);
    const view = this.view;
    const wait = delay ?? view.interval ?? (this.live ? 5000 : 2000);
    this.timer = setTimeout(() => this.run(() => view.refresh()), wait);
  }

  /** Something changed on the server: refresh the current view soon. */
  poke() {
    if (this.view) this.schedule(150);
  }

  async connectEvents() {
    const ctl = new AbortController();
    this.events = ctl;
    let backoff = 1000;
    while (this.events === ctl) {
      try {
        await api.streamEvents((name) => { if (this.view && (this.view.events || ["calls", "processes"]).includes(name)) this.poke(); }, {
          signal: ctl.signal,
          onOpen: () => { this.setLive(true); backoff = 1000; },
        });
      } catch (err) {
        if (err instanceof api.Unauthorized || ctl.signal.aborted) break;
        if (err instanceof api.ApiError && err.status === 404) backoff = 60000; // this host has no event stream: poll
      }
      this.setLive(false);
      await new Promise((r) => setTimeout(r, backoff));
      backoff = Math.min(backoff * 2, 30000);
    }
  }

  setLive(on) {
    this.live = on;
    const el = $("#conn");
    el.className = `conn ${on ? "on" : "off"}`;
    el.textContent = on ? "live" : "polling";
    el.title = on ? "updates arrive as they happen" : "no event stream: refreshing every 2 s";
  }

  setLiveCount(n) {
    $("#count-live").textContent = n ? String(n) : "";
  }

  async health() {
    try {
      const resp = await fetch("/healthz", { cache: "no-store" });
      const hz = await resp.json();
      $("#health").replaceChildren(
        h("span", { class: `dot ${hz.status === "ok" ? "ok" : "warn"}` }),
        `${hz.status}`,
        h("span", { class: "muted" }, ` · ${hz.stt || "?"} / ${hz.llm || "?"} / ${hz.tts || "?"} · ${hz.store || "?"}`));
    } catch (_) {
      $("#health").replaceChildren(h("span", { class: "dot bad" }), "unreachable");
    }
    if (api.hasToken()) setTimeout(() => this.health(), 15000);
  }

  async loadBusinesses() {
    try {
      const data = await api.get("/admin/testcall");
      this.names = Object.fromEntries((data.businesses || []).map((b) => [b.id, b.name]));
      this.poke();
    } catch (_) { /* ids are shown instead */ }
  }

  /** A business's display name (its id until the names have loaded). */
  businessName(id) {
    return (this.names && this.names[id]) || id || "";
  }

  /** POST an action (end call, restart actor) and say what happened. */
  async act(path, body, pending) {
    this.toast(pending);
    try {
      await api.post(path, body);
      this.toast(pending.replace("…", ": requested"));
      this.poke();
    } catch (err) {
      if (!(err instanceof api.Unauthorized)) this.toast(`Failed: ${err.message}`, true);
    }
  }

  toast(text, bad = false) {
    const el = $("#toast");
    el.textContent = text;
    el.className = `toast show${bad ? " bad" : ""}`;
    clearTimeout(this.toastTimer);
    this.toastTimer = setTimeout(() => { el.className = "toast"; }, 3500);
  }

  banner(text) {
    const el = $("#banner");
    el.hidden = !text;
    el.textContent = text || "";
  }
}

new App().start();
