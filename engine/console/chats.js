// The Chats view: WhatsApp conversations (live ones first) and one chat's
// messages as bubbles, each in its own direction (Hebrew right to left).

import * as api from "./api.js";
import { badge, empty, epochS, h, ltr, said, when } from "./dom.js";

/** A WhatsApp peer as a phone number ("972541112233" -> "+972541112233"). */
function peerNumber(peer) {
  return /^\d{6,15}$/.test(peer) ? `+${peer}` : peer;
}

export function normChat(c) {
  return {
    ...c,
    id: c.chat_id || c.id || "",
    business: c.business || c.business_id || "",
    last: epochS(c.last_message_at ?? c.last_at ?? c.updated_at ?? c.at),
    live: c.state === "live" || c.live === true,
    contact: peerNumber(c.peer || c.contact || c.name || c.from || ""),
  };
}

export class ChatsView {
  constructor(app) {
    this.app = app;
    this.id = null;
    this.lastList = this.lastDetail = "";
  }

  mount(root, params) {
    this.id = params[0] ? decodeURIComponent(params[0]) : null;
    this.list = h("div", { class: "list-items", id: "chats-list" });
    this.detail = h("div", { class: "detail", id: "chat-detail" });
    root.replaceChildren(
      h("div", { class: `split${this.id ? " has-detail" : ""}` },
        h("aside", { class: "list card" }, h("div", { class: "list-head" }, h("h2", {}, "Chats")), this.list),
        this.detail),
    );
    if (!this.id) this.detail.append(empty("Select a chat to read its messages."));
    this.lastList = this.lastDetail = "";
    return this.refresh();
  }

  async refresh() {
    const data = await api.get("/admin/chats?limit=100");
    const chats = (data.chats || []).map(normChat).sort((a, b) => (b.live - a.live) || (b.last ?? 0) - (a.last ?? 0));
    this.live = new Set(chats.filter((c) => c.live).map((c) => c.id));
    const key = JSON.stringify(chats);
    if (key !== this.lastList) {
      this.lastList = key;
      this.list.replaceChildren(
        ...(chats.length
          ? chats.map((c) =>
              h("a", { class: `item${c.id === this.id ? " selected" : ""}`, href: `#/chats/${encodeURIComponent(c.id)}`, dataset: { chat: c.id } },
                h("div", { class: "item-main" },
                  h("span", { class: `dot ${c.live ? "ok pulse" : "idle"}` }),
                  h("span", { class: "item-title" }, c.contact ? ltr(c.contact, "phone") : ltr(c.id.split("@")[0], "phone")),
                  h("span", { class: "item-side muted" }, when(c.last))),
                h("div", { class: "item-sub" },
                  said(this.app.businessName(c.business), "biz"),
                  c.channel ? h("span", {}, c.channel) : null,
                  c.messages !== undefined ? h("span", {}, `${c.messages} messages`) : null)))
          : [empty("No chats yet.")]),
      );
    }
    if (this.id) await this.refreshDetail();
  }

  async refreshDetail() {
    let data;
    try {
      data = await api.get(`/admin/chats/${encodeURIComponent(this.id)}`);
    } catch (err) {
      if (err instanceof api.ApiError && err.status === 404) {
        this.detail.replaceChildren(empty(`No chat ${this.id} on record.`));
        return;
      }
      throw err;
    }
    const key = JSON.stringify(data);
    if (key === this.lastDetail) return;
    this.lastDetail = key;
    const chat = normChat(data.chat || { chat_id: this.id });
    chat.live = chat.live || Boolean(this.live && this.live.has(chat.id)); // the list knows who holds it live
    const messages = data.messages || [];
    this.detail.replaceChildren(
      h("section", { class: "card call-head" },
        h("a", { class: "back", href: "#/chats" }, "← Chats"),
        h("div", { class: "call-title" }, h("h2", {}, chat.contact ? ltr(chat.contact, "phone") : ltr(chat.id.split("@")[0], "phone")), chat.live ? badge("live", "live") : badge("idle", "idle")),
        h("dl", { class: "facts" },
          h("div", {}, h("dt", {}, "Business"), h("dd", {}, said(this.app.businessName(chat.business)))),
          chat.channel ? h("div", {}, h("dt", {}, "Channel"), h("dd", {}, chat.channel)) : null,
          h("div", {}, h("dt", {}, "Last message"), h("dd", {}, when(chat.last))))),
      h("section", { class: "card conversation" },
        h("h3", {}, "Messages"),
        messages.length
          ? h("div", { class: "turns chat" },
              messages.map((m) => {
                const inbound = m.direction === "in" || m.direction === "inbound";
                return h("div", { class: `bubble ${inbound ? "caller" : "agent"}` },
                  h("span", { class: "who" }, inbound ? "Customer" : "Agent", h("span", { class: "at" }, when(m.at))),
                  said(m.text));
              }))
          : empty("No messages stored for this chat.")),
    );
  }
}
