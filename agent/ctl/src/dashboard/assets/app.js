// strait's topology view: draws /api/graph (the mesh as Prometheus sees
// it) and redraws it as it changes. Every value from the graph goes into
// the page as text or an attribute, never as markup: workload and service
// names are written by tenants.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const NODE_W = 200, NODE_H = 44, GAP = 14, PAD = 14, HEAD = 24, NET_GAP = 110;

const state = { doc: null, selected: null, updates: 0 };

function el(name, attrs, parent) {
  const e = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  if (parent) parent.appendChild(e);
  return e;
}

function text(parent, x, y, value, cls) {
  const t = el("text", { x, y, class: cls || "" }, parent);
  t.textContent = value;
  return t;
}

function human(n, unit) {
  if (!isFinite(n)) return "–";
  const steps = ["", "k", "M", "G", "T"];
  let i = 0;
  while (Math.abs(n) >= 1000 && i < steps.length - 1) { n /= 1000; i++; }
  const digits = n >= 100 || Number.isInteger(n) ? 0 : n >= 10 ? 1 : 2;
  return n.toFixed(digits) + " " + steps[i] + (unit || "");
}

function groupBy(items, key) {
  const out = new Map();
  for (const item of items) {
    const k = key(item);
    if (!out.has(k)) out.set(k, []);
    out.get(k).push(item);
  }
  return new Map([...out.entries()].sort((a, b) => a[0].localeCompare(b[0])));
}

// Networks side by side; in each, its gateways on top, then its clusters
// stacked, each cluster's zones side by side, a zone's workloads stacked.
// Nodes no proxy placed go into one box of their own at the end.
function layout(nodes) {
  const pos = new Map();
  const groups = [];
  const placed = nodes.filter((n) => n.placed);
  const outside = nodes.filter((n) => !n.placed);
  let x = 20;
  let height = 0;
  const networks = groupBy(placed, (n) => n.network);
  for (const [network, members] of networks) {
    const gateways = members.filter((n) => n.role === "gateway");
    const clusters = groupBy(members.filter((n) => n.role !== "gateway"), (n) => n.cluster);
    const clusterBoxes = [];
    for (const [cluster, inCluster] of clusters) {
      const zones = groupBy(inCluster, (n) => n.region + "/" + n.zone);
      const zoneBoxes = [];
      for (const [zone, inZone] of zones) {
        inZone.sort((a, b) => a.id.localeCompare(b.id));
        zoneBoxes.push({ zone, nodes: inZone, w: NODE_W + 2 * PAD, h: HEAD + PAD + inZone.length * (NODE_H + GAP) - GAP + PAD });
      }
      const w = zoneBoxes.reduce((s, z) => s + z.w, 0) + GAP * (zoneBoxes.length - 1) + 2 * PAD;
      const h = HEAD + PAD + Math.max(...zoneBoxes.map((z) => z.h)) + PAD;
      clusterBoxes.push({ cluster, zones: zoneBoxes, w, h });
    }
    const strip = gateways.length ? NODE_H + 2 * GAP : 0;
    const inner = Math.max(0, ...clusterBoxes.map((c) => c.w), gateways.length * (NODE_W + GAP) - GAP);
    const w = inner + 2 * PAD;
    const h = HEAD + strip + clusterBoxes.reduce((s, c) => s + c.h + GAP, 0) + PAD;
    groups.push({ kind: "network", name: network, path: network, x, y: 20, w, h });
    let gx = x + PAD;
    for (const g of gateways.sort((a, b) => a.id.localeCompare(b.id))) {
      pos.set(g.id, { x: gx, y: 20 + HEAD + GAP, path: network });
      gx += NODE_W + GAP;
    }
    let cy = 20 + HEAD + strip;
    for (const c of clusterBoxes) {
      const cpath = network + "/" + c.cluster;
      groups.push({ kind: "cluster", name: "cluster " + c.cluster, path: cpath, x: x + PAD, y: cy, w: c.w, h: c.h });
      let zx = x + 2 * PAD;
      for (const z of c.zones) {
        const zpath = cpath + "/" + z.zone;
        groups.push({ kind: "zone", name: z.zone, path: zpath, x: zx, y: cy + HEAD + PAD, w: z.w, h: z.h });
        let ny = cy + HEAD + PAD + HEAD + PAD;
        for (const n of z.nodes) {
          pos.set(n.id, { x: zx + PAD, y: ny, path: zpath });
          ny += NODE_H + GAP;
        }
        zx += z.w + GAP;
      }
      cy += c.h + GAP;
    }
    height = Math.max(height, 20 + h);
    x += w + NET_GAP;
  }
  let width = Math.max(x - NET_GAP + 20, 400);
  // Below the networks, in rows: what no proxy placed (destinations
  // outside the mesh, clients known only by namespace).
  if (outside.length) {
    outside.sort((a, b) => a.id.localeCompare(b.id));
    const top = height + 40;
    const perRow = Math.max(1, Math.floor((width - 40 - 2 * PAD + GAP) / (NODE_W + GAP)));
    const rows = Math.ceil(outside.length / perRow);
    const w = Math.min(outside.length, perRow) * (NODE_W + GAP) - GAP + 2 * PAD;
    const h = HEAD + PAD + rows * (NODE_H + GAP) - GAP + PAD;
    groups.push({ kind: "outside", name: "not placed by a proxy", path: "outside", x: 20, y: top, w, h });
    outside.forEach((n, i) => {
      const col = i % perRow, r = Math.floor(i / perRow);
      pos.set(n.id, { x: 20 + PAD + col * (NODE_W + GAP), y: top + HEAD + PAD + r * (NODE_H + GAP), path: "outside" });
    });
    height = top + h;
    width = Math.max(width, 20 + w + 20);
  }
  return { pos, groups, width, height: height + 20 };
}

function edgeClass(e) {
  if (e.error_ratio > 0.05) return "errors";
  if (e.error_ratio > 0) return "warn";
  return e.security === "mutual_tls" ? "mtls" : "plain";
}

// Rates while traffic flows; what was counted in all once it stops.
function edgeLabel(e) {
  const parts = [];
  const live = e.connections_per_s > 0 || e.requests_per_s > 0;
  if (!live) parts.push(e.protocol === "http" ? human(e.requests, "req") : human(e.connections, "conn"));
  else if (e.protocol === "http") parts.push(human(e.requests_per_s, "req/s"));
  else parts.push(human(e.connections_per_s, "conn/s"));
  if (live) parts.push(human(e.bytes_per_s, "B/s"));
  if (e.error_ratio > 0) parts.push((e.error_ratio * 100).toFixed(1) + "% err");
  return parts.join(" · ");
}

function centre(p) {
  return { x: p.x + NODE_W / 2, y: p.y + NODE_H / 2 };
}

// A gentle curve from one node to the next, through each gateway.
function edgePath(points) {
  let d = "M " + points[0].x + " " + points[0].y;
  for (let i = 1; i < points.length; i++) {
    const a = points[i - 1], b = points[i];
    const mx = (a.x + b.x) / 2, my = (a.y + b.y) / 2;
    const bend = Math.min(60, Math.hypot(b.x - a.x, b.y - a.y) / 6);
    d += " Q " + (mx + bend) + " " + (my - bend) + " " + b.x + " " + b.y;
  }
  return d;
}

function render(doc) {
  const svg = document.getElementById("graph");
  const { pos, groups, width, height } = layout(doc.nodes);
  svg.replaceChildren();
  svg.setAttribute("width", width);
  svg.setAttribute("height", height);
  svg.setAttribute("viewBox", "0 0 " + width + " " + height);
  const defs = el("defs", {}, svg);
  for (const cls of ["mtls", "plain", "warn", "errors"]) {
    const m = el("marker", { id: "arrow-" + cls, viewBox: "0 0 10 10", refX: 10, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" }, defs);
    el("path", { d: "M 0 0 L 10 5 L 0 10 z", class: "arrow " + cls, fill: getComputedStyle(document.documentElement).getPropertyValue(cls === "mtls" ? "--mtls" : cls === "plain" ? "--plain" : cls === "warn" ? "--warn" : "--bad") }, m);
  }
  const groupLayer = el("g", { class: "groups" }, svg);
  for (const g of groups) {
    const ge = el("g", { class: "group " + g.kind, "data-kind": g.kind, "data-name": g.name, "data-path": g.path }, groupLayer);
    el("rect", { x: g.x, y: g.y, width: g.w, height: g.h }, ge);
    text(ge, g.x + 10, g.y + 17, g.kind === "network" ? "network " + g.name : g.name);
  }
  const edgeLayer = el("g", { class: "edges" }, svg);
  for (const e of doc.edges) {
    const from = pos.get(e.source), to = pos.get(e.target);
    if (!from || !to) continue;
    const points = [centre(from)];
    for (const g of e.via) if (pos.has(g)) points.push(centre(pos.get(g)));
    // Ends on the target's border, so the arrowhead shows.
    const end = centre(to);
    const last = points[points.length - 1];
    const dx = end.x - last.x, dy = end.y - last.y;
    const scale = Math.min(Math.abs(dx) > 0 ? (NODE_W / 2) / Math.abs(dx) : Infinity, Math.abs(dy) > 0 ? (NODE_H / 2 + 2) / Math.abs(dy) : Infinity);
    points.push(isFinite(scale) && scale < 1 ? { x: end.x - dx * scale, y: end.y - dy * scale } : end);
    const cls = edgeClass(e);
    const live = e.connections_per_s > 0 || e.requests_per_s > 0;
    const ge = el("g", {
      class: "edge" + (live ? " live" : "") + (state.selected === "edge=" + e.id ? " selected" : ""),
      "data-id": e.id, "data-source": e.source, "data-target": e.target,
      "data-via": e.via.join(" "), "data-security": e.security, "data-protocol": e.protocol,
      "data-reporter": e.reporter, "data-services": [...e.services].join(" "),
      "data-connections": e.connections, "data-refused": e.refused, "data-closed": e.closed,
      "data-request-bytes": e.request_bytes, "data-response-bytes": e.response_bytes,
      "data-requests": e.requests, "data-failed-requests": e.failed_requests,
      "data-error-ratio": e.error_ratio,
    }, edgeLayer);
    const d = edgePath(points);
    el("path", { d, class: "hit" }, ge);
    const width = 1.5 + Math.min(5, Math.log10(1 + e.bytes_per_s) / 1.2);
    el("path", { d, class: "edge-line " + cls, "stroke-width": width.toFixed(2), "marker-end": "url(#arrow-" + cls + ")" }, ge);
    const a = points[0], b = points[1];
    text(ge, (a.x + b.x) / 2 + 8, (a.y + b.y) / 2 - 8, edgeLabel(e));
    ge.addEventListener("click", () => select("edge=" + e.id));
  }
  const nodeLayer = el("g", { class: "nodes" }, svg);
  for (const n of doc.nodes) {
    const p = pos.get(n.id);
    const ge = el("g", {
      class: "node" + (state.selected === "node=" + n.id ? " selected" : ""),
      "data-id": n.id, "data-name": n.name, "data-namespace": n.namespace, "data-cluster": n.cluster,
      "data-network": n.network, "data-region": n.region, "data-zone": n.zone, "data-role": n.role,
      "data-placed": n.placed, "data-group": p.path,
    }, nodeLayer);
    el("rect", { x: p.x, y: p.y, width: NODE_W, height: NODE_H }, ge);
    // Long names are cut to the box; the whole one is its tooltip.
    const title = el("title", {}, ge);
    title.textContent = n.id;
    text(ge, p.x + 10, p.y + 18, n.name.length > 28 ? n.name.slice(0, 27) + "…" : n.name, "name");
    const sub = n.role === "workload" ? n.namespace : n.role + " · " + n.namespace;
    text(ge, p.x + 10, p.y + 34, sub, "sub");
    ge.addEventListener("click", () => select("node=" + n.id));
  }
  details(doc);
}

function row(dl, field, label, value) {
  const dt = document.createElement("dt");
  dt.textContent = label;
  const dd = document.createElement("dd");
  dd.dataset.field = field;
  dd.textContent = value;
  dl.append(dt, dd);
}

function details(doc) {
  const aside = document.getElementById("details");
  aside.replaceChildren();
  const sel = state.selected || "";
  const [kind, ...rest] = sel.split("=");
  const id = rest.join("=");
  const edge = kind === "edge" && doc.edges.find((e) => e.id === id);
  const node = kind === "node" && doc.nodes.find((n) => n.id === id);
  if (!edge && !node) {
    delete aside.dataset.selected;
    const p = document.createElement("p");
    p.className = "hint";
    p.textContent = "Select an edge or a workload.";
    aside.append(p);
    return;
  }
  aside.dataset.selected = sel;
  const h = document.createElement("h2");
  const dl = document.createElement("dl");
  if (edge) {
    h.textContent = edge.source + " → " + edge.target;
    row(dl, "services", "services", [...edge.services].join(", ") || "–");
    row(dl, "protocol", "protocol", edge.protocol);
    row(dl, "security", "security", edge.security === "mutual_tls" ? "mutual TLS" : "not known to be mTLS");
    row(dl, "via", "through", edge.via.length ? edge.via.join(", ") : "direct");
    row(dl, "reporter", "counted by", edge.reporter);
    row(dl, "connections", "connections", String(edge.connections));
    row(dl, "refused", "refused", String(edge.refused));
    row(dl, "closed", "closed", String(edge.closed));
    row(dl, "request-bytes", "bytes sent by the client", String(edge.request_bytes));
    row(dl, "response-bytes", "bytes sent by the server", String(edge.response_bytes));
    row(dl, "connections-per-s", "connections/s", human(edge.connections_per_s, "/s"));
    row(dl, "bytes-per-s", "bytes/s", human(edge.bytes_per_s, "B/s"));
    if (edge.requests > 0) {
      row(dl, "requests", "requests", String(edge.requests));
      row(dl, "failed-requests", "5xx", String(edge.failed_requests));
      row(dl, "requests-per-s", "requests/s", human(edge.requests_per_s, "/s"));
    }
    row(dl, "error-ratio", "error ratio", (edge.error_ratio * 100).toFixed(2) + "%");
  } else {
    h.textContent = node.name;
    row(dl, "namespace", "namespace", node.namespace);
    row(dl, "role", "role", node.role);
    row(dl, "cluster", "cluster", node.cluster);
    row(dl, "network", "network", node.network);
    row(dl, "locality", "locality", node.region + "/" + node.zone);
    row(dl, "in", "edges in", String(doc.edges.filter((e) => e.target === node.id).length));
    row(dl, "out", "edges out", String(doc.edges.filter((e) => e.source === node.id).length));
    if (node.role === "gateway") {
      row(dl, "forwarded", "legs opened", String(node.forwarded));
      row(dl, "forwarded-per-s", "legs/s", human(node.forwarded_per_s, "/s"));
    }
  }
  aside.append(h, dl);
}

function select(what) {
  state.selected = what;
  history.replaceState(null, "", "#" + encodeURIComponent(what));
  if (state.doc) render(state.doc);
}

async function refresh() {
  let wait = 5000;
  const status = document.getElementById("status");
  try {
    const resp = await fetch("api/graph", { cache: "no-store" });
    if (!resp.ok) throw new Error("the dashboard answered " + resp.status);
    const doc = await resp.json();
    wait = doc.refresh_ms || wait;
    state.doc = doc;
    render(doc);
    const failed = doc.prometheus.filter((p) => p.error);
    state.updates++;
    document.body.dataset.state = "ready";
    document.body.dataset.updates = state.updates;
    document.body.dataset.nodes = doc.nodes.length;
    document.body.dataset.edges = doc.edges.length;
    document.body.dataset.failing = failed.length;
    const at = new Date(doc.generated_at * 1000).toLocaleTimeString();
    status.textContent = doc.nodes.length + " workloads, " + doc.edges.length + " edges · rates over " + doc.window + " · updated " + at +
      (failed.length ? " · " + failed.map((p) => p.url + ": " + p.error).join("; ") : "");
    status.className = failed.length ? "error" : "";
  } catch (err) {
    status.textContent = "no graph: " + err.message;
    status.className = "error";
    if (document.body.dataset.state !== "ready") document.body.dataset.state = "error";
  }
  setTimeout(refresh, wait);
}

const hash = decodeURIComponent(location.hash.slice(1));
if (hash.startsWith("edge=") || hash.startsWith("node=")) state.selected = hash;
refresh();
