// The dashboard page: draws /api/history on load, then appends each point of /api/stream (SSE).
// Plain script, no build step; charts by uPlot (vendored beside this file).
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  const state = { t: [], series: {}, capacity: 8640, current: null, charts: {}, dirty: false, group: null };
  const PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22"];

  function fmtSeconds(v) {
    if (v === null || v === undefined) return "?";
    if (v < 120) return v.toFixed(1) + " s";
    if (v < 7200) return (v / 60).toFixed(1) + " min";
    return (v / 3600).toFixed(1) + " h";
  }
  function fmt(v, digits) {
    if (v === null || v === undefined || Number.isNaN(v)) return "no data";
    return digits === undefined ? String(v) : Number(v).toFixed(digits);
  }
  function el(tag, text, cls) {
    const e = document.createElement(tag);
    if (text !== undefined) e.textContent = text;
    if (cls) e.className = cls;
    return e;
  }
  function badge(status) { return el("span", status, "badge " + status); }
  function fill(dl, pairs) {
    dl.replaceChildren();
    for (const [k, v, cls] of pairs) { dl.append(el("dt", k)); dl.append(el("dd", v, cls)); }
  }

  // -- the series store: one x axis, a y array per series, kept at most `capacity` long --------
  function append(t, values) {
    const n = state.t.length;
    state.t.push(t);
    for (const [name, arr] of Object.entries(state.series)) arr.push(name in values ? values[name] : null);
    const own = state.group === null ? null : "p:" + state.group + ":";
    for (const [name, v] of Object.entries(values)) {
      // Partition series only for the group the partition chart shows (fetched on selection).
      if (name.startsWith("p:") && (own === null || !name.startsWith(own))) continue;
      if (!(name in state.series)) { const arr = new Array(n).fill(null); arr.push(v); state.series[name] = arr; }
    }
    const over = state.t.length - state.capacity;
    if (over > 0) {
      state.t.splice(0, over);
      for (const arr of Object.values(state.series)) arr.splice(0, over);
    }
  }
  function matching(re) {
    const out = [];
    for (const name of Object.keys(state.series).sort()) { const m = name.match(re); if (m) out.push([name, m[1]]); }
    return out;
  }

  // -- charts ------------------------------------------------------------------------------------
  function chart(id, names, labels, yLabel) {
    const host = $(id);
    const key = id + "|" + names.join(",");
    let c = state.charts[id];
    const data = [state.t, ...names.map((n) => state.series[n])];
    if (!names.length) {
      if (c) { c.plot.destroy(); delete state.charts[id]; }
      host.replaceChildren(el("p", "no data", "nodata"));
      return;
    }
    if (!c || c.key !== key) {
      if (c) c.plot.destroy();
      host.replaceChildren();
      const opts = {
        width: Math.max(300, host.clientWidth || 520), height: 200,
        scales: { x: { time: true } },
        axes: [{}, { label: yLabel, size: 60 }],
        series: [{}, ...labels.map((l, i) => ({ label: l, stroke: PALETTE[i % PALETTE.length], width: 1.5, spanGaps: false }))],
        legend: { live: false },
      };
      c = state.charts[id] = { key: key, plot: new uPlot(opts, data, host) };
    } else {
      c.plot.setData(data, false);
    }
    const now = state.t.length ? state.t[state.t.length - 1] : Date.now() / 1000;
    const range = Number($("range").value) * 60;
    c.plot.setScale("x", { min: now - range, max: now });
  }
  function drawCharts() {
    const groups = matching(/^g:(.+):lag$/);
    chart("chart-lag", groups.map((g) => g[0]), groups.map((g) => g[1]), "offsets");
    const groupsS = matching(/^g:(.+):lag_s$/);
    chart("chart-lag-s", groupsS.map((g) => g[0]), groupsS.map((g) => g[1]), "seconds");
    const g = state.group;
    const parts = g ? matching(new RegExp("^p:" + g.replace(/[.*+?^${}()|[\]\\]/g, "\\$&") + ":(.+:\\d+):lag$")) : [];
    chart("chart-part", parts.map((p) => p[0]), parts.map((p) => p[1]), "offsets");
    const rates = matching(/^t:(.+):rate$/);
    chart("chart-rate", rates.map((r) => r[0]), rates.map((r) => r[1]), "records/s");
    const cmd = ["cmd:p50", "cmd:p95", "cmd:p99"].filter((n) => n in state.series);
    chart("chart-cmd", cmd, cmd.map((n) => n.slice(4)), "seconds");
    const mig = ["mig:mismatches", "mig:percentage", "proj:anomalies"].filter((n) => n in state.series);
    chart("chart-mig", mig, mig.map((n) => n.split(":")[1]), "");
  }

  // -- tables ------------------------------------------------------------------------------------
  function renderCurrent(cur) {
    if (!cur) return;
    const lag = cur.lag || { groups: [] };
    $("observed").textContent = lag.observedAt ? "observed " + new Date(lag.observedAt * 1000).toLocaleTimeString() + (lag.stale ? " (STALE)" : "") : "not observed yet";
    $("lag-errors").textContent = (lag.errors || []).join("; ");
    const tbody = $("groups").tBodies[0];
    tbody.replaceChildren();
    const select = $("group-select");
    const names = lag.groups.map((g) => g.group);
    if (select.options.length !== names.length || names.some((n, i) => select.options[i].value !== n)) {
      select.replaceChildren(...names.map((n) => { const o = el("option", n); o.value = n; return o; }));
      if (state.group && names.includes(state.group)) select.value = state.group;
    }
    if (!state.group || !names.includes(state.group)) {
      state.group = names[0] || null;
      if (state.group) loadGroup(state.group);
    }
    for (const g of lag.groups) {
      const tr = el("tr");
      tr.dataset.group = g.group;
      tr.append(el("td", g.group));
      const st = el("td"); st.className = "status"; st.append(badge(g.status)); tr.append(st);
      tr.append(el("td", String(g.lag), "num lag"));
      tr.append(el("td", fmtSeconds(g.lagSeconds), "num lag-seconds"));
      tr.append(el("td", g.state)); tr.append(el("td", String(g.members), "num")); tr.append(el("td", g.source));
      tbody.append(tr);
    }
    const pbody = $("partitions").tBodies[0];
    pbody.replaceChildren();
    const sel = lag.groups.find((g) => g.group === state.group);
    for (const p of sel ? sel.partitions : []) {
      const tr = el("tr");
      tr.append(el("td", p.topic), el("td", String(p.partition), "num"));
      const st = el("td"); st.append(badge(p.status)); tr.append(st);
      tr.append(el("td", p.committed === null ? "-" : String(p.committed), "num"), el("td", String(p.end), "num"),
        el("td", String(p.lag), "num"), el("td", fmtSeconds(p.lagSeconds), "num"), el("td", p.status === "OK" ? "" : p.reason, "small"));
      pbody.append(tr);
    }

    const topics = cur.topics || {};
    const tt = $("topics").tBodies[0];
    tt.replaceChildren();
    if (topics.error) tt.append(el("tr")).append(el("td", topics.error, "err"));
    for (const [name, t] of Object.entries(topics.topics || {})) {
      const tr = el("tr");
      tr.append(el("td", name), el("td", t.rate === null ? "no data" : t.rate.toFixed(1) + "/s", "num"), el("td", t.end + " offsets", "num"));
      tt.append(tr);
    }

    const prom = cur.prom || {};
    const c = prom.command || {};
    $("cmd-now").textContent = prom.error ? prom.error :
      (c.p50 === null || c.p50 === undefined) ? "no data" : `p50 ${fmt(c.p50 * 1000, 1)} ms · p95 ${fmt(c.p95 * 1000, 1)} ms · p99 ${fmt(c.p99 * 1000, 1)} ms`;
    const rb = $("router").tBodies[0];
    rb.replaceChildren();
    const backends = Object.entries(prom.router || {});
    if (!backends.length) { const tr = el("tr"); const td = el("td", "no data", "nodata"); td.colSpan = 4; tr.append(td); rb.append(tr); }
    for (const [b, f] of backends) {
      const tr = el("tr");
      tr.append(el("td", b), el("td", fmt(f.rate, 2), "num"),
        el("td", f.errorRate === null ? "no data" : (f.errorRate * 100).toFixed(1) + " %", "num"),
        el("td", f.p95 === null ? "no data" : (f.p95 * 1000).toFixed(1) + " ms", "num"));
      rb.append(tr);
    }
    const targets = Object.entries(prom.targets || {});
    $("targets").replaceChildren(...(targets.length ? targets.map(([u, s]) => el("li", u + ": " + s, s === "ok" ? "" : "err"))
      : [el("li", "no scrape target configured (ASSESSMENT_STORE_DASHBOARD_SCRAPE_URLS)", "nodata")]));

    const pr = cur.projection || {};
    fill($("projection"), pr.error ? [["error", pr.error, "err"]] : [
      ["anomalies", String(pr.anomaliesTotal)],
      ...Object.entries(pr.anomalies || {}).map(([k, v]) => ["  " + k, String(v)]),
      ["quarantined assessments", String(pr.quarantined), pr.quarantined ? "err" : ""],
      ["held events", String(pr.held)],
    ]);

    const bridgeGroup = lag.groups.find((g) => g.group === "assessment-store-bridge");
    const dlq = (topics.dlq || {});
    fill($("bridge"), [
      ["bridge group", bridgeGroup ? bridgeGroup.status + " · lag " + bridgeGroup.lag : "not running"],
      ...Object.entries(dlq).map(([t, n]) => [t, n === null ? "no topic" : String(n), n ? "err" : ""]),
    ]);

    const m = cur.migration || {};
    const f = m.flags;
    fill($("flags"), m.error ? [["error", m.error, "err"]] : f ? [
      ["version", String(m.flagsVersion)], ["store enabled", String(f.enable_assessment_store)],
      ["percentage", f.migration_percentage + " %"], ["dual mode", String(f.enable_dual_mode)],
      ["shadow comparison", String(f.enable_shadow_comparison)], ["legacy fallback", String(f.enable_legacy_fallback)],
    ] : [["flags", "no data", "nodata"]]);
    const rev = m.reverseSync;
    const mm = m.mismatches;
    fill($("migration"), [
      ["shadow mismatches", mm ? String(Object.values(mm).reduce((a, b) => a + b, 0)) : "no data"],
      ...Object.entries(mm || {}).map(([k, v]) => ["  " + k, String(v)]),
      ["reverse-sync lag", rev ? rev.lag + " offsets · " + fmtSeconds(rev.lagSeconds) + " · " + rev.status : "not running"],
      ...(m.errors || []).map((e) => ["error", e, "err"]),
    ]);
  }

  function schedule() {
    if (state.dirty) return;
    state.dirty = true;
    requestAnimationFrame(() => { state.dirty = false; renderCurrent(state.current); drawCharts(); });
  }

  // -- data: history once, then the live stream --------------------------------------------------
  async function load() {
    const resp = await fetch("/api/history", { credentials: "same-origin" });
    if (!resp.ok) { $("conn").textContent = "refused (" + resp.status + ")"; $("conn").className = "badge down"; return; }
    const h = await resp.json();
    state.capacity = h.capacity; state.t = h.t; state.series = h.series; state.current = h.current;
    renderCurrent(state.current); drawCharts();
    performance.mark("dashboard-drawn");
    document.body.dataset.ready = "1";
    connect();
  }
  function connect() {
    const es = new EventSource("/api/stream");
    es.onopen = () => { $("conn").textContent = "live"; $("conn").className = "badge live"; };
    es.onerror = () => { $("conn").textContent = "reconnecting"; $("conn").className = "badge down"; };
    es.addEventListener("sample", (ev) => {
      const p = JSON.parse(ev.data);
      append(p.t, p.values);
      state.current = p.current;
      document.body.dataset.samples = String(Number(document.body.dataset.samples || 0) + 1);
      schedule();
    });
  }
  $("range").addEventListener("change", drawCharts);
  async function loadGroup(group) {
    const resp = await fetch("/api/history?group=" + encodeURIComponent(group), { credentials: "same-origin" });
    if (!resp.ok || state.group !== group) return;
    const h = await resp.json();
    for (const name of Object.keys(state.series)) if (name.startsWith("p:")) delete state.series[name];
    // Align the group's series on the page's axis (points arrived since the answer are left blank).
    const at = new Map(h.t.map((t, i) => [t, i]));
    for (const [name, arr] of Object.entries(h.series)) state.series[name] = state.t.map((t) => at.has(t) ? arr[at.get(t)] : null);
    drawCharts();
  }
  $("group-select").addEventListener("change", (e) => { state.group = e.target.value; renderCurrent(state.current); loadGroup(state.group); });
  window.addEventListener("resize", () => { for (const c of Object.values(state.charts)) c.plot.setSize({ width: c.plot.root.parentNode.clientWidth, height: 200 }); });
  load();
})();
