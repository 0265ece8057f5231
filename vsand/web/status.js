// The vsand status page: draws the JSON of /api/status (vsand/web/view.py).
// Live through server-sent events (/events); when they do not come through
// (no EventSource, a proxy that buffers, the daemon restarting) it polls.
"use strict";

const COLOURS = ["--free", "--used", "--failed", "--rebuilding"]
  .map((v) => getComputedStyle(document.documentElement).getPropertyValue(v).trim());
const POLL_MS = 2000;        // polling period when the event stream is down
const STALE_MS = 12000;      // no event nor ping for this long: the stream is down

const $ = (id) => document.getElementById(id);

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

function size(n) {
  if (n === null || n === undefined) return "-";
  const units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(n < 10 ? 1 : 0) : n) + " " + units[i];
}

function duration(s) {
  if (s === null || s === undefined) return "-";
  if (s < 90) return Math.round(s) + " s";
  if (s < 5400) return Math.round(s / 60) + " min";
  return (s / 3600).toFixed(1) + " h";
}

function render(st) {
  const p = st.pool;
  $("pool").textContent = `pool ${p.pool} · ${p.state}`;
  const used = p.capacity - p.free;
  const facts = [["capacity", size(p.capacity)],
    ["used", `${size(used)} (${p.capacity ? (100 * used / p.capacity).toFixed(1) : 0}%)`],
    ["free", size(p.free)], ["allocated to LDs", size(p.allocated)],
    ["drives", p.failed_drives ? `${p.drives} (${p.failed_drives} failed)` : `${p.drives}`],
    ["LDs", p.luns], ["NBD connections", p.connections]];
  $("summary").replaceChildren(...facts.map(([k, v]) => {
    const d = el("div", "", k);
    d.prepend(el("b", "", String(v)));
    return d;
  }));
  $("legend").replaceChildren(...st.legend.map((name, i) => {
    const s = el("span", "", name);
    const sw = el("i");
    sw.style.background = COLOURS[i];
    s.prepend(sw);
    return s;
  }));
  $("drives").replaceChildren(...st.drives.map((d) => drive(d, st.legend)));
  $("trees").replaceChildren(...(st.trees.length ? st.trees.map((n) => tree([n])) : [el("p", "muted", "no LUNs")]));
  tasks(st.tasks);
}

function drive(d, legend) {
  const row = el("div", "drive");
  row.dataset.index = d.index;
  row.dataset.status = d.status;
  const label = el("div", "", `drive ${d.index} · ${size(d.capacity)}`);
  label.title = `${d.path}\nLDAD ${d.ldad}${d.quorum ? ", holds a metadata copy" : ""}\n${d.state}` +
    (d.io_errors ? `\n${d.io_errors} I/O errors` : "");
  if (d.status !== "ok") label.append(el("span", `badge ${d.status}`, d.status));
  const bar = el("canvas");
  bar.title = d.runs.length > 64 ? `${d.runs.length} runs` :
    d.runs.map(([c, n]) => `${n} ${legend[c]}`).join(", ");
  const used = d.runs.reduce((sum, [c, n]) => sum + (c ? n : 0), 0);
  const figures = el("div", "figures", `${used} / ${d.psegs} PSEGs used`);
  figures.title = `${d.free_psegs} free for data, ${d.reserve_psegs} held back for metadata`;
  row.append(label, bar, figures);
  requestAnimationFrame(() => paint(bar, d.runs, d.psegs));
  return row;
}

// One rectangle per run; a non-free run keeps at least a pixel, so a lone
// failed PSEG among thousands still shows.
function paint(canvas, runs, total) {
  const w = canvas.width = Math.max(1, Math.round(canvas.clientWidth * devicePixelRatio));
  const h = canvas.height = Math.max(1, Math.round(canvas.clientHeight * devicePixelRatio));
  const ctx = canvas.getContext("2d");
  let at = 0;
  for (const [code, n] of runs) {
    const x = at * w / total;
    ctx.fillStyle = COLOURS[code];
    ctx.fillRect(x, 0, code ? Math.max(1, n * w / total) : n * w / total, h);
    at += n;
  }
}

function tree(nodes) {
  const ul = el("ul", "tree");
  for (const n of nodes) {
    const li = el("li", "node");
    li.dataset.name = n.name;
    li.dataset.kind = n.kind;
    li.append(el("span", "name", n.name), el("span", "badge", n.kind));
    if (n.state !== "ok") li.append(el("span", `badge ${n.state.split(" ")[0]}`, n.state));
    if (n.read_only) li.append(el("span", "badge", "read-only"));
    if (n.protected) li.append(el("span", "badge", "protected"));
    if (n.access_rules) li.append(el("span", "badge", "access rules"));   // which: vsanctl lun show
    const meter = el("span", "meter");
    const fill = el("i");
    fill.style.width = `${n.size ? Math.min(100, 100 * n.allocated / n.size) : 0}%`;
    meter.append(fill);
    li.append(meter, el("span", "muted",
      `${size(n.size)} RAID${n.raid} · ${size(n.allocated)} allocated · ${size(n.exclusive)} exclusive`));
    meter.title = `referenced ${size(n.referenced)}, shared ${size(n.shared)}`;
    if (n.children.length) li.append(tree(n.children));
    ul.append(li);
  }
  return ul;
}

function tasks(all) {
  const active = all.filter((t) => t.state === "running" || t.state === "queued");
  const rows = active.map((t) => {
    const row = el("div", "task");
    row.dataset.id = t.id;
    const bar = el("progress");
    bar.max = t.total || 1;
    bar.value = t.total ? t.done : 0;
    const pct = t.total ? (100 * t.done / t.total).toFixed(1) + " %" : "-";
    row.append(el("div", "", `#${t.id} ${t.kind} ${t.target} · ${t.phase || t.state}`), bar,
      el("div", "muted", `${pct} · ${t.mib_s} MiB/s · ETA ${duration(t.eta)}`));
    return row;
  });
  const done = all.filter((t) => !active.includes(t)).slice(-5).reverse();
  if (done.length) {
    const more = el("details");
    more.append(el("summary", "muted", `last ${done.length} finished`),
      ...done.map((t) => el("div", "muted",
        `#${t.id} ${t.kind} ${t.target}: ${t.state}${t.error ? " (" + t.error + ")" : ""}`)));
    rows.push(more);
  }
  $("tasks").replaceChildren(...(active.length ? rows : [el("p", "muted", "no task running"), ...rows]));
}

// ---- staying live ---------------------------------------------------------------
let heard = 0;          // when the daemon last answered (Date.now())
let streamed = 0;       // when the event stream last brought an event or a ping
let stream = null;

function link(text, cls) {
  $("link").textContent = text;
  $("link").className = "link " + cls;
}

function got(st, how) {
  heard = Date.now();
  link(how, "live");
  render(st);
}

async function poll() {
  try {
    const r = await fetch("api/status", {cache: "no-store"});
    if (!r.ok) throw new Error(r.status);
    got(await r.json(), "polling");
  } catch (e) {
    link(`daemon unreachable (last heard ${heard ? new Date(heard).toLocaleTimeString() : "never"})`, "down");
  }
}

function listen() {
  streamed = Date.now();         // a new stream has STALE_MS to bring something
  stream = new EventSource("events");
  stream.onmessage = (e) => { streamed = Date.now(); got(JSON.parse(e.data), "live"); };
  stream.addEventListener("ping", () => { streamed = heard = Date.now(); });
}

// The browser reconnects a dropped stream by itself, but gives up on one that
// was refused (e.g. 503 while the daemon starts): a new one is opened then.
function watch() {
  if (heard && Date.now() - streamed <= STALE_MS) return;     // nothing shown yet: ask
  poll();
  if (window.EventSource && (!stream || stream.readyState === EventSource.CLOSED)) listen();
}

if (window.EventSource) listen(); else poll();
setInterval(watch, POLL_MS);
