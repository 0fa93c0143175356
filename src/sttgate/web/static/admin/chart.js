// Usage over time from the usage document (docs/contract.md#usage), drawn as stacked SVG bars.
//
// The document lists sessions, each with its start, provider, key, audio and cost; a session counts wholly in the
// UTC hour or day it started in (the API's own window rule: sessions that started in [since, until)). Bars are
// hand-drawn SVG elements styled by class, so the console needs no chart library and keeps to its CSP.

const SVG = "http://www.w3.org/2000/svg";
const HOUR_MS = 3600 * 1000;
const DAY_MS = 24 * HOUR_MS;
const SERIES_COLOURS = 8; // .series-0 … .series-7 in console.css; more series reuse them in turn

export const WINDOWS = {
  hours: { unit: HOUR_MS, count: 48 },
  days: { unit: DAY_MS, count: 30 },
};

export const MEASURES = {
  cost: { label: "USD", value: (s) => Number(s.cost_usd) },
  audio: { label: "audio seconds", value: (s) => s.audio_seconds },
  sessions: { label: "sessions", value: () => 1 },
};

// The window's buckets: `count` whole UTC hours or days, the last one holding `now`.
export function buckets(windowName, now = new Date()) {
  const { unit, count } = WINDOWS[windowName];
  const end = Math.floor(now.getTime() / unit) * unit + unit;
  const start = end - count * unit;
  return { start: new Date(start), end: new Date(end), unit, count };
}

// {series: [{name, values: [per bucket]}], totals: [per bucket]} for `sessions`, grouped by `seriesOf(session)`.
// Sessions outside the window are left out. Series are ordered by their total, largest first.
export function bucketSessions(sessions, span, seriesOf, measure) {
  const bySeries = new Map();
  for (const session of sessions) {
    const at = Date.parse(session.started_at);
    const index = Math.floor((at - span.start.getTime()) / span.unit);
    if (!(index >= 0 && index < span.count)) continue;
    const name = seriesOf(session);
    if (!bySeries.has(name)) bySeries.set(name, new Array(span.count).fill(0));
    bySeries.get(name)[index] += measure.value(session);
  }
  const series = [...bySeries].map(([name, values]) => ({ name, values, total: values.reduce((a, b) => a + b, 0) }));
  series.sort((a, b) => b.total - a.total || a.name.localeCompare(b.name));
  const totals = new Array(span.count).fill(0);
  for (const s of series) s.values.forEach((v, i) => (totals[i] += v));
  return { series, totals };
}

function svg(tag, attributes = {}, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

function label(date, unit) {
  const iso = date.toISOString();
  return unit === HOUR_MS ? `${iso.slice(11, 13)}h` : iso.slice(5, 10);
}

function number(value) {
  if (value === 0) return "0";
  if (Math.abs(value) >= 100) return value.toFixed(0);
  return Number(value.toPrecision(3)).toString();
}

// An <svg> of stacked bars, one bar per bucket, one colour per series, with a legend; each bar segment has a
// <title> (the browser's tooltip) and data-series / data-value attributes.
export function barChart(data, span, measure) {
  const width = 880;
  const height = 220;
  const left = 56;
  const bottom = 24;
  const top = 8;
  const plotWidth = width - left - 8;
  const plotHeight = height - top - bottom;
  const max = Math.max(0, ...data.totals);
  const scale = max > 0 ? plotHeight / max : 0;
  const step = plotWidth / span.count;
  const barWidth = Math.max(1, step * 0.8);

  const root = svg("svg", {
    viewBox: `0 0 ${width} ${height}`,
    class: "bars",
    role: "img",
    "aria-label": `${measure.label} per ${span.unit === HOUR_MS ? "hour" : "day"}`,
  });
  root.append(svg("line", { x1: left, x2: width - 8, y1: top + plotHeight, y2: top + plotHeight, class: "axis" }));
  root.append(svg("text", { x: left - 6, y: top + 10, class: "tick end" }, number(max)));
  root.append(svg("text", { x: left - 6, y: top + plotHeight, class: "tick end" }, "0"));
  root.append(svg("text", { x: 4, y: top + plotHeight / 2, class: "tick" }, measure.label));

  const labelEvery = Math.ceil(span.count / 12);
  for (let i = 0; i < span.count; i++) {
    const x = left + i * step + (step - barWidth) / 2;
    const bucketStart = new Date(span.start.getTime() + i * span.unit);
    let y = top + plotHeight;
    data.series.forEach((series, s) => {
      const value = series.values[i];
      if (!(value > 0)) return;
      const h = Math.max(1, value * scale);
      y -= h;
      const rect = svg("rect", {
        x: x.toFixed(1),
        y: y.toFixed(1),
        width: barWidth.toFixed(1),
        height: h.toFixed(1),
        class: `bar series-${s % SERIES_COLOURS}`,
        "data-series": series.name,
        "data-value": String(value),
        "data-bucket": bucketStart.toISOString(),
      });
      const tip = `${series.name}, ${label(bucketStart, span.unit)}: ${number(value)} ${measure.label}`;
      rect.append(svg("title", {}, tip));
      root.append(rect);
    });
    if (i % labelEvery === 0) {
      const at = { x: (x + barWidth / 2).toFixed(1), y: height - 6, class: "tick middle" };
      root.append(svg("text", at, label(bucketStart, span.unit)));
    }
  }
  return root;
}

// The legend: one entry per series, its colour and its total over the window.
export function legend(data, measure) {
  const list = document.createElement("ul");
  list.className = "legend";
  data.series.forEach((series, s) => {
    const item = document.createElement("li");
    const swatch = document.createElement("span");
    swatch.className = `swatch series-${s % SERIES_COLOURS}`;
    item.append(swatch, `${series.name}: ${number(series.total)} ${measure.label}`);
    list.append(item);
  });
  return list;
}
