// The insights page: asks GET /insights/funnel with the key typed in the page (held in this
// closure only, sent as a header) and draws the totals, two charts and a table per group.
(function () {
  "use strict";
  const RANGES = {"24h": 86400e3, "7d": 7 * 86400e3, "30d": 30 * 86400e3};
  const GROUPS = [
    ["country", "By country"],
    ["provider", "By provider"],
    ["channel", "By channel"],
    ["step", "By ladder step (0: the first call)"],
    ["prefix", "By number prefix"],
  ];
  const $ = (id) => document.getElementById(id);
  let charts = [];

  function say(text, bad) {
    $("status").textContent = text;
    $("status").className = bad ? "bad" : "";
  }

  async function ask(key, path) {
    const answer = await fetch(path, {
      headers: {Authorization: "Bearer " + key}, cache: "no-store", credentials: "omit",
    });
    const body = await answer.json();
    if (!answer.ok) {
      throw new Error(answer.status + " " + (body.detail || body.title || ""));
    }
    return body;
  }

  function funnel(key, from, to, groupBy) {
    return ask(key, "/insights/funnel?" + new URLSearchParams({from: from, to: to, group_by: groupBy}));
  }

  // What the conversion rule suspended, by destination ("+234803", "NG"): "voice until 14:05".
  function suspendedBy(suspensions) {
    const found = new Map();
    for (const s of suspensions) {
      const whose = s.client ? " (" + s.client + ")" : " (every client)";
      const text = s.channel + " until " + new Date(s.until).toLocaleTimeString() + whose;
      found.set(s.destination, (found.has(s.destination) ? found.get(s.destination) + "; " : "") + text);
    }
    return found;
  }

  const percent = (v) => (v === null ? "–" : (100 * v).toFixed(1) + " %");
  const money = (v, currency) => (v === null ? "–" : v + (currency ? " " + currency : ""));
  const seconds = (t) => (t.p50 === null ? "–" : "≤" + t.p50 + " s / " + (t.p95 === null ? ">600" : "≤" + t.p95) + " s");

  function showTotal(body) {
    const t = body.total;
    $("total-verifications").textContent = t.verifications;
    $("total-approved").textContent = t.approved;
    $("total-conversion").textContent = percent(t.conversion);
    $("total-sends").textContent = t.sends;
    $("total-spend").textContent = money(t.spend, body.currency);
    $("total-cost").textContent = money(t.cost_per_approval, body.currency);
    $("total-time").textContent = seconds(t.seconds_to_approval);
    $("range-text").textContent = body.from + " to " + body.to;
  }

  function table(group, title, body, suspended) {
    const element = document.createElement("table");
    element.className = "panel";
    element.id = "by-" + group;
    const caption = element.createCaption();
    caption.textContent = title;
    const marks = group === "prefix" || group === "country";
    const heads = [group, "verifications", "sends", "answered", "approved", "conversion", "spend", "per approval"];
    if (marks) heads.push("suspended");
    const head = element.createTHead().insertRow();
    for (const name of heads) {
      const cell = document.createElement("th");
      cell.scope = "col";
      cell.textContent = name;
      head.appendChild(cell);
    }
    const rows = element.createTBody();
    for (const row of body.rows) {
      const line = rows.insertRow();
      const values = [row[group], row.verifications, row.sends, row.answered, row.approved,
        percent(row.conversion), row.spend, row.cost_per_approval === null ? "–" : row.cost_per_approval];
      if (marks) {
        const mark = suspended.get(group === "prefix" ? "+" + row[group] : row[group]);
        values.push(mark || "–");
        if (mark) line.className = "suspended";
      }
      values.forEach((value, i) => {
        const cell = i === 0 ? document.createElement("th") : document.createElement("td");
        if (i === 0) cell.scope = "row";
        cell.textContent = String(value);
        line.appendChild(cell);
      });
    }
    if (!body.rows.length) {
      const cell = rows.insertRow().insertCell();
      cell.colSpan = heads.length;
      cell.textContent = "no verifications in this range";
    }
    return element;
  }

  function chart(target, label, times, values, format) {
    const width = Math.max(320, target.clientWidth || 480);
    const options = {
      width: width, height: 220,
      scales: {x: {time: true}},
      series: [{}, {label: label, stroke: "#0b57d0", width: 2, fill: "rgba(11,87,208,0.08)",
        spanGaps: false, points: {show: true, size: 5},
        value: (u, v) => (v === null ? "–" : format(v))}],
      axes: [{}, {values: (u, splits) => splits.map(format)}],
      legend: {show: true},
    };
    return new uPlot(options, [times, values], target);
  }

  function showCharts(series, span) {
    charts.forEach((c) => c.destroy());
    // Every hour (or day) of the range, those without verifications too.
    const step = span === "hour" ? 3600e3 : 86400e3;
    const byTime = new Map(series.rows.map((r) => [Date.parse(r[span]), r]));
    const times = [], conversion = [], spend = [], said = [];
    for (let at = Date.parse(series.from); at < Date.parse(series.to); at += step) {
      const row = byTime.get(at);
      times.push(at / 1000);
      conversion.push(row ? row.conversion : null);
      spend.push(row ? Number(row.spend) : 0);
      if (row) said.push([new Date(at).toISOString(), row]);
    }
    const label = (what, format) => what + " by " + span + ": " +
      (said.length ? said.map(([at, r]) => at + " " + format(r)).join("; ") : "nothing in this range");
    $("conversion-chart").setAttribute("aria-label", label("Conversion", (r) => percent(r.conversion)));
    $("spend-chart").setAttribute("aria-label", label("Spend", (r) => r.spend));
    charts = [
      chart($("conversion-chart"), "conversion", times, conversion, (v) => (100 * v).toFixed(0) + "%"),
      chart($("spend-chart"), "spend", times, spend, (v) => v.toFixed(2)),
    ];
  }

  $("ask").addEventListener("submit", async (event) => {
    event.preventDefault();
    const key = $("key").value.trim();
    if (!key) {
      say("Enter a key first.", true);
      $("key").focus();
      return;
    }
    const to = new Date();
    const from = new Date(to.getTime() - RANGES[$("range").value]);
    const span = $("range").value === "24h" ? "hour" : "day";
    say("Loading…");
    try {
      const [series, held, ...groups] = await Promise.all([
        funnel(key, from.toISOString(), to.toISOString(), span),
        ask(key, "/insights/suspensions"),
        ...GROUPS.map(([group]) => funnel(key, from.toISOString(), to.toISOString(), group)),
      ]);
      const suspended = suspendedBy(held.suspensions);
      $("report").hidden = false;
      showTotal(series);
      showCharts(series, span);
      const tables = $("tables");
      tables.replaceChildren(...GROUPS.map(([group, title], i) => table(group, title, groups[i], suspended)));
      $("suspended-count").textContent = held.suspensions.length;
      say("Updated " + new Date().toLocaleTimeString() + ".");
    } catch (error) {
      say("Could not read the funnel: " + error.message, true);
    }
  });
})();
