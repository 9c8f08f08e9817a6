// A supervision tree drawn as a tree: one row per actor with its role, how it
// runs (trio task, pykka thread, OS process, supervisor), its status as a
// colour, restarts, whether a fallback is active, and its mailbox depth.

import { badge, h } from "./dom.js";

const STATUS_CLASS = {
  running: "ok", ok: "ok", alive: "ok", connected: "ok", open: "ok",
  starting: "warn", restarting: "warn", degraded: "warn", backoff: "warn", connecting: "warn", fallback: "warn", qr: "warn",
  failed: "bad", crashed: "bad", dead: "bad", escalated: "bad", error: "bad",
  stopped: "idle", stopping: "idle", finished: "idle", done: "idle", exited: "idle",
};

const KIND_LABEL = { trio: "trio", pykka: "pykka", process: "process", supervisor: "supervisor" };

export function statusClass(status) {
  return STATUS_CLASS[String(status || "").toLowerCase()] || "idle";
}

function stats(node) {
  const out = [];
  const restarts = Number(node.restarts || 0);
  out.push(h("span", { class: `stat restarts ${restarts ? "warn" : "quiet"}`, title: "restarts by its supervisor", dataset: { restarts: String(restarts) } }, `↻ ${restarts}`));
  if (node.fallback_active || node.fallback === true) out.push(badge("fallback active", "warn", "a fallback provider is serving this role"));
  if (node.kind !== "supervisor" || node.mailbox_depth) {
    const depth = Number(node.mailbox_depth || 0);
    const level = depth >= 50 ? "bad" : depth >= 10 ? "warn" : "quiet";
    out.push(
      h("span", { class: `stat mailbox ${level}`, title: "messages waiting in its mailbox" },
        h("span", { class: "meter" }, h("span", { style: { width: `${Math.min(100, depth * 2)}%` } })),
        `${depth}`),
    );
  }
  if (node.pid) out.push(h("span", { class: "stat quiet", title: "OS process id" }, `pid ${node.pid}`));
  if (node.whatsapp) out.push(badge(String(node.whatsapp), statusClass(node.whatsapp), "WhatsApp connection"));
  if (node.strategy) out.push(h("span", { class: "stat quiet", title: "restart strategy" }, node.strategy.replaceAll("_", " ")));
  return out;
}

/** "call:CA…" -> "call" (the call is named above the tree); "chat:9725…@s.whatsapp.net" -> "chat +9725…". */
function shortRole(role) {
  if (!role) return "?";
  if (role.startsWith("call:")) return "call";
  const chat = /^chat:(\d{6,15})@/.exec(role);
  return chat ? `chat +${chat[1]}` : role;
}

/**
 * The tree as nested lists. `onRestart(role)` (optional) adds a restart button
 * to every actor under the root.
 */
export function renderTree(root, { onRestart } = {}) {
  const ul = h("ul", { class: "tree" });
  ul.append(renderNode(root, 0, onRestart));
  return ul;
}

function renderNode(node, depth, onRestart) {
  const status = node.status || "unknown";
  const kind = KIND_LABEL[node.kind] || node.kind || "actor";
  const row = h(
    "div",
    { class: "node", title: node.last_error ? `last error: ${node.last_error}` : null, dataset: { role: node.role || "" } },
    h("span", { class: `dot ${statusClass(status)}`, title: status }),
    h("span", { class: "role", title: node.role }, shortRole(node.role)),
    h("span", { class: `kind kind-${kind}` }, kind),
    h("span", { class: `status ${statusClass(status)}` }, status),
    h("span", { class: "stats" }, stats(node)),
    node.last_error ? badge("error", "bad", node.last_error) : null,
    onRestart && depth > 0 && node.kind !== "supervisor"
      ? h("button", { class: "mini", title: `restart ${node.role} through its supervisor`, onclick: () => onRestart(node.role) }, "Restart")
      : null,
  );
  const li = h("li", {}, row);
  const children = node.children || [];
  if (children.length) {
    const ul = h("ul", {});
    for (const child of children) ul.append(renderNode(child, depth + 1, onRestart));
    li.append(ul);
  }
  return li;
}
