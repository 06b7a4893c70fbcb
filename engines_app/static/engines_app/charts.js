// Line charts of PnL over time, drawn by uPlot (vendor/uplot-1.6.32, MIT): time axis, value
// axis, a legend and a tooltip that follow the cursor, drag to zoom, double-click to reset.
// Each chart reads its data from a <script type="application/json"> (Django json_script):
// {"series": [{"label": "...", "points": [[unix seconds, value], ...]}, ...], "unit": "USDT"}.
(function () {
  "use strict";
  const COLOURS = ["#2563eb", "#9ca3af", "#16a34a", "#dc2626"];

  function columns(series) {
    // uPlot wants one x column shared by all series: merge the times, hold values missing.
    const times = [...new Set(series.flatMap((s) => s.points.map((p) => p[0])))].sort((a, b) => a - b);
    const ys = series.map((s) => {
      const at = new Map(s.points);
      return times.map((t) => (at.has(t) ? at.get(t) : null));
    });
    return [times, ...ys];
  }

  function tooltip(unit) {
    let box;
    return {
      hooks: {
        init: (u) => {
          box = document.createElement("div");
          box.className = "chart-tip";
          box.style.display = "none";
          u.over.appendChild(box);
        },
        setCursor: (u) => {
          const i = u.cursor.idx;
          if (i == null) {
            box.style.display = "none";
            return;
          }
          const when = new Date(u.data[0][i] * 1000).toISOString().slice(0, 16).replace("T", " ");
          const lines = u.series.slice(1).map((s, k) => {
            const v = u.data[k + 1][i];
            return v == null ? "" : `${s.label}: ${v.toFixed(2)} ${unit}`;
          });
          box.textContent = [when + " UTC", ...lines.filter(Boolean)].join("\n");
          box.style.display = "block";
          box.style.left = Math.min(u.cursor.left + 12, u.over.clientWidth - 180) + "px";
          box.style.top = Math.max(u.cursor.top - 12, 0) + "px";
        },
      },
    };
  }

  function draw(target) {
    const source = document.getElementById(target.dataset.source);
    if (!source || typeof uPlot === "undefined") return null;
    const spec = JSON.parse(source.textContent);
    const data = columns(spec.series);
    if (data[0].length < 1) return null;
    const unit = spec.unit || "";
    const options = {
      width: Math.max(target.clientWidth, 320),
      height: Number(target.dataset.height || 240),
      cursor: { drag: { x: true, y: false }, points: { size: 6 } },
      scales: { x: { time: true } },
      tzDate: (ts) => uPlot.tzDate(new Date(ts * 1000), "Etc/UTC"),
      axes: [
        { stroke: "#6b7280", grid: { stroke: "#e5e7eb" } },
        { stroke: "#6b7280", grid: { stroke: "#e5e7eb" }, size: 70, values: (u, ticks) => ticks.map((v) => v.toFixed(2)) },
      ],
      legend: { live: true },
      plugins: [tooltip(unit)],
      series: [
        { label: "time (UTC)", value: (u, v) => (v == null ? "—" : new Date(v * 1000).toISOString().slice(0, 16).replace("T", " ")) },
        ...spec.series.map((s, k) => ({
          label: s.label,
          stroke: COLOURS[k % COLOURS.length],
          width: k === 0 ? 2 : 1.5,
          spanGaps: true,
          value: (u, v) => (v == null ? "—" : v.toFixed(2)),
        })),
      ],
    };
    const chart = new uPlot(options, data, target);
    target.uplot = chart;
    window.addEventListener("resize", () => chart.setSize({ width: Math.max(target.clientWidth, 320), height: options.height }));
    return chart;
  }

  document.querySelectorAll("[data-chart]").forEach(draw);
})();
