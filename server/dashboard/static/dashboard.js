// The run page: charts, diagnostic warnings and adapter versions, kept live by polling the JSON API.
// Text from the server is only ever set with textContent: no user string is parsed as HTML.
(function () {
  "use strict";
  var root = document.getElementById("run");
  if (!root || typeof uPlot === "undefined") return;
  var runId = root.dataset.runId;
  var base = "/api/runs/" + encodeURIComponent(runId);
  var POLL_MS = 1500;
  var IDLE_POLL_MS = 5000;
  var GROUPS = [
    { prefix: "reward/", target: "axis-reward_side", color: "#0d9488" },
    { prefix: "trajectory/", target: "axis-trajectory_side", color: "#7c3aed" },
    { prefix: "trainer/", target: "axis-trainer", color: "#64748b" },
  ];
  var REWARD_KEY = "reward/mean";
  var STEP_INCRS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000];
  var AXIS_NAMES = { reward_side: "reward side", trajectory_side: "trajectory side" };

  var after = "";
  var stepsByNumber = new Map(); // step -> metrics of its STEP event
  var charts = new Map(); // metric key -> {plot, el}
  var warningCount = 0;

  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = String(text);
    return node;
  }

  function formatValue(value) {
    var size = Math.abs(value);
    if (size !== 0 && (size < 0.001 || size >= 100000)) return value.toExponential(2);
    return String(Number(value.toPrecision(4)));
  }

  function series(key) {
    var steps = Array.from(stepsByNumber.keys()).sort(function (a, b) { return a - b; });
    var xs = [];
    var ys = [];
    steps.forEach(function (step) {
      var value = stepsByNumber.get(step)[key];
      if (typeof value === "number" && isFinite(value)) {
        xs.push(step);
        ys.push(value);
      }
    });
    return [xs, ys];
  }

  function makeChart(container, key, color, height) {
    var width = Math.max(container.clientWidth, 240);
    var opts = {
      width: width,
      height: height,
      legend: { show: false },
      cursor: { drag: { x: false, y: false } },
      scales: { x: { time: false } },
      axes: [
        { stroke: "#64748b", grid: { stroke: "#eef2f7" }, ticks: { stroke: "#e2e8f0" }, incrs: STEP_INCRS },
        { stroke: "#64748b", grid: { stroke: "#eef2f7" }, ticks: { stroke: "#e2e8f0" }, size: 56 },
      ],
      series: [
        { label: "step" },
        { label: key, stroke: color, width: 2, fill: color + "14", points: { show: true, size: 5 } },
      ],
    };
    var data = series(key);
    var plot = new uPlot(opts, data, container);
    charts.set(key, { plot: plot, el: container });
    container.dataset.points = String(data[0].length);
    return plot;
  }

  function ensureCard(key) {
    if (charts.has(key) || key === REWARD_KEY) return;
    var group = GROUPS.find(function (g) { return key.indexOf(g.prefix) === 0; });
    if (!group) return;
    var grid = document.getElementById(group.target);
    var card = el("figure", "card");
    var caption = el("figcaption");
    var name = el("span", "metric", key.slice(group.prefix.length));
    name.title = key;
    caption.appendChild(name);
    caption.appendChild(el("span", "latest"));
    card.appendChild(caption);
    var chart = el("div", "chart");
    chart.dataset.metric = key;
    card.appendChild(chart);
    // Keep cards in name order, so the grid does not reshuffle as metrics arrive.
    var next = Array.from(grid.children).find(function (c) {
      return c.querySelector(".chart").dataset.metric > key;
    });
    grid.insertBefore(card, next || null);
    makeChart(chart, key, group.color, 150);
  }

  function redraw() {
    var keys = new Set();
    stepsByNumber.forEach(function (metrics) {
      Object.keys(metrics).forEach(function (k) { keys.add(k); });
    });
    if (keys.has(REWARD_KEY) && !charts.has(REWARD_KEY)) {
      document.getElementById("reward-empty").hidden = true;
      makeChart(document.getElementById("reward-chart"), REWARD_KEY, "#2563eb", 280);
    }
    Array.from(keys).sort().forEach(ensureCard);
    charts.forEach(function (chart, key) {
      var data = series(key);
      chart.plot.setData(data);
      chart.el.dataset.points = String(data[0].length);
      var latest = chart.el.parentNode.querySelector(".latest");
      if (latest && data[1].length) latest.textContent = formatValue(data[1][data[1].length - 1]);
    });
  }

  function addWarning(event) {
    var list = document.getElementById("warnings");
    var item = el("li", "warning");
    item.dataset.axis = event.axis || "";
    item.appendChild(el("span", "axis axis-" + (event.axis || "none"), AXIS_NAMES[event.axis] || "no axis"));
    if (event.name) item.appendChild(el("strong", "name", event.name));
    item.appendChild(el("span", "detail", event.detail || event.message));
    item.appendChild(el("span", "when", "step " + event.step));
    list.insertBefore(item, list.firstChild);
    warningCount += 1;
    document.getElementById("warnings-empty").hidden = true;
  }

  var SAMPLE_EVENTS_SHOWN = 5;

  function addSamples(event) {
    var box = document.getElementById("samples");
    var step = el("div", "sample-step");
    step.appendChild(el("h3", "when", "step " + event.step));
    (event.samples || []).forEach(function (s) {
      var item = el("div", "sample");
      var parts = Object.keys(s.components || {}).sort().map(function (k) {
        return k + " " + formatValue(s.components[k]);
      });
      item.appendChild(el("p", "score", "reward " + formatValue(s.reward) + (parts.length ? " · " + parts.join(" · ") : "")));
      item.appendChild(el("pre", "prompt", s.prompt));
      item.appendChild(el("pre", "completion", s.completion));
      step.appendChild(item);
    });
    box.insertBefore(step, box.firstChild);
    while (box.children.length > SAMPLE_EVENTS_SHOWN) box.removeChild(box.lastChild);
    document.getElementById("samples-empty").hidden = true;
  }

  function showRun(run) {
    var status = document.getElementById("run-status");
    status.textContent = run.status;
    status.className = "status status-" + run.status;
    document.getElementById("run-step").textContent =
      run.max_steps ? run.step + " / " + run.max_steps : String(run.step);
    document.getElementById("run-version").textContent = "v" + run.version;
    var error = document.getElementById("run-error");
    error.textContent = run.error;
    error.hidden = !run.error;
  }

  function loadVersions() {
    return fetch(base + "/versions", { credentials: "same-origin", cache: "no-store" })
      .then(function (reply) { return reply.ok ? reply.json() : { versions: [] }; })
      .then(function (body) {
        var tbody = document.querySelector("#versions tbody");
        tbody.replaceChildren();
        body.versions.forEach(function (v) {
          var row = el("tr");
          row.appendChild(el("td", "num", "v" + v.version));
          row.appendChild(el("td", "num", v.step));
          var files = el("td", "files");
          Object.keys(v.files).forEach(function (name) {
            var line = el("div", "file");
            line.appendChild(el("span", "file-name", name));
            line.appendChild(el("code", "digest", v.files[name]));
            files.appendChild(line);
          });
          row.appendChild(files);
          var cell = el("td");
          var link = el("a", "download", "Download .tar.gz");
          link.href = "/runs/" + encodeURIComponent(runId) + "/versions/" + v.version + "/download";
          cell.appendChild(link);
          row.appendChild(cell);
          tbody.appendChild(row);
        });
        document.getElementById("versions-empty").hidden = body.versions.length > 0;
      });
  }

  function setLive(state, text) {
    var live = document.getElementById("live");
    live.dataset.state = state;
    live.textContent = text;
  }

  function poll() {
    var url = base + "/events?after=" + encodeURIComponent(after);
    fetch(url, { credentials: "same-origin", cache: "no-store" })
      .then(function (reply) {
        if (reply.status === 401) {
          window.location.assign("/login");
          throw new Error("logged out");
        }
        if (!reply.ok) throw new Error("HTTP " + reply.status);
        return reply.json();
      })
      .then(function (body) {
        var stepsChanged = false;
        var versionsChanged = after === "";
        body.events.forEach(function (event) {
          if (event.kind === "step") {
            stepsByNumber.set(event.step, event.metrics || {});
            stepsChanged = true;
          } else if (event.kind === "warning") {
            addWarning(event);
          } else if (event.kind === "sample") {
            addSamples(event);
          } else if (event.kind === "version") {
            versionsChanged = true;
          }
        });
        after = body.last;
        showRun(body.run);
        if (stepsChanged) redraw();
        if (versionsChanged) loadVersions();
        var running = body.run.status === "running";
        setLive(running ? "live" : "idle", (running ? "live" : body.run.status) + " · updated " +
          new Date().toLocaleTimeString());
        window.setTimeout(poll, body.more ? 0 : running ? POLL_MS : IDLE_POLL_MS);
      })
      .catch(function (err) {
        if (err.message === "logged out") return;
        setLive("error", "connection lost, retrying…");
        window.setTimeout(poll, IDLE_POLL_MS);
      });
  }

  window.addEventListener("resize", function () {
    charts.forEach(function (chart) {
      chart.plot.setSize({ width: Math.max(chart.el.clientWidth, 240), height: chart.plot.height });
    });
  });

  poll();
})();
