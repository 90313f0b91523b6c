// The live dashboard: the history and then one sample a second over server-sent events, drawn
// with uPlot (static/vendor/uplot.iife.min.js, the global `uPlot`, loaded before this module):
// a time axis in the reader's time zone, a value axis labelled with its unit, a legend that
// shows the values of the second under the pointer, and a new point as each sample arrives.
//
// The headline of a chart that counts events per second is their mean over the last minute
// (a burst of requests stays visible for a minute, rather than the headline falling back to 0
// on the next quiet second while the chart still shows the spike); a gauge (open connections,
// queue depth) shows its value now; latency and the cache's hit ratio show the latest second
// that had any requests or lookups, and say how long ago that was.
//
// #charts carries data-samples (how many samples are drawn) and data-last (the newest one's
// time): the browser test reads them to see the charts move without a reload.
const KEEP = 900;
// The time axis spans the samples kept, and at least this many seconds.
const MIN_SPAN = 60;
// The window of the per-second headlines, in samples (one a second).
const RATE_WINDOW = 60;
const COLORS = ['#c2410c', '#2563eb'];

const samples = [];
const status = document.getElementById('status');
const container = document.getElementById('charts');

function fmt(v) {
  if (v == null) return '–';
  const a = Math.abs(v);
  if (a === 0) return '0';
  if (a < 1) return v.toFixed(2);
  if (a < 10) return v.toFixed(1);
  return Math.round(v).toLocaleString('en');
}

/** The mean of `pick` over the last `RATE_WINDOW` samples, and how many seconds that covers. */
function mean(pick) {
  const recent = samples.slice(-RATE_WINDOW);
  const sum = recent.reduce((total, s) => total + (pick(s) ?? 0), 0);
  return { value: recent.length ? sum / recent.length : null, seconds: recent.length };
}

function windowText(seconds) {
  return seconds >= 60 ? 'per second, mean of the last minute' : `per second, mean of the last ${seconds} s`;
}

/** The newest sample for which `pick` has a value, and how long before the newest sample it is. */
function lastWith(pick) {
  for (let i = samples.length - 1; i >= 0; i--) {
    if (pick(samples[i]) != null) return { sample: samples[i], ago: (samples.at(-1).t - samples[i].t) / 1000 };
  }
  return null;
}

/** When `found` (of `lastWith`) was: "the last second", or how long before it. */
function when(found, what) {
  return found.ago < 1 ? 'the last second' : `the last second with ${what}, ${Math.round(found.ago)} s ago`;
}

/** A headline for when no sample of the history had a value. */
function none(what) {
  const minutes = Math.max(1, Math.round(samples.length / 60));
  return { number: '–', unit: '', window: `no ${what} in the last ${minutes} min` };
}

/** A rate chart's headline: each series' mean over the window. */
function rateHeadline(picks, unit) {
  return () => {
    const means = picks.map((pick) => mean(pick));
    return { number: means.map((m) => fmt(m.value)).join(' / '), unit, window: windowText(means[0].seconds) };
  };
}

// Each chart: its series (label, how to read it from a sample), the unit of its axis and
// values, the value range when fixed, and its headline.
const CHARTS = {
  rps: {
    unit: 'req/s',
    series: [['Requests', (s) => s.requests_per_s]],
    headline: rateHeadline([(s) => s.requests_per_s], 'req/s'),
  },
  latency: {
    unit: 'ms',
    series: [
      ['p50', (s) => s.p50_ms],
      ['p99', (s) => s.p99_ms],
    ],
    headline: () => {
      const found = lastWith((s) => s.p50_ms);
      if (!found) return none('requests');
      return {
        number: `${fmt(found.sample.p50_ms)} / ${fmt(found.sample.p99_ms)}`,
        unit: 'ms',
        window: `p50 / p99 of ${when(found, 'requests')}`,
      };
    },
  },
  sockets: {
    unit: 'open',
    series: [
      ['WebSockets', (s) => s.websockets],
      ['Event streams', (s) => s.event_streams],
    ],
    headline: () => {
      const s = samples.at(-1);
      return { number: `${s.websockets} / ${s.event_streams}`, unit: 'open', window: 'now' };
    },
  },
  jobs: {
    unit: 'jobs/s',
    series: [
      ['Completed', (s) => s.jobs_completed_per_s],
      ['Failed', (s) => s.jobs_failed_per_s],
    ],
    headline: rateHeadline([(s) => s.jobs_completed_per_s, (s) => s.jobs_failed_per_s], 'jobs/s'),
  },
  depth: {
    unit: 'jobs',
    series: [['Waiting', (s) => s.queue_depth]],
    headline: () => {
      const depth = samples.at(-1).queue_depth;
      return depth == null
        ? { number: '–', unit: '', window: 'the database did not answer in time' }
        : { number: fmt(depth), unit: 'jobs', window: 'due and waiting now' };
    },
  },
  messages: {
    unit: 'msg/s',
    series: [
      ['Published', (s) => s.messages_published_per_s],
      ['Delivered', (s) => s.deliveries_per_s],
    ],
    headline: rateHeadline([(s) => s.messages_published_per_s, (s) => s.deliveries_per_s], 'msg/s'),
  },
  cache: {
    unit: '%',
    range: [0, 100],
    series: [['Hit ratio', (s) => (s.cache_hit_ratio == null ? null : s.cache_hit_ratio * 100)]],
    headline: () => {
      const found = lastWith((s) => s.cache_hit_ratio);
      if (!found) return none('cache lookups');
      return {
        number: (found.sample.cache_hit_ratio * 100).toFixed(1),
        unit: '%',
        window: `of the lookups in ${when(found, 'lookups')}`,
      };
    },
  },
};

/** `t` (unix seconds) as a time of day: `14:05` or `14:05:30`. */
function clock(t, seconds) {
  const options = { hour: '2-digit', minute: '2-digit', hourCycle: 'h23' };
  if (seconds) options.second = '2-digit';
  return new Date(t * 1000).toLocaleTimeString([], options);
}

/** The axis ticks' text: whole numbers without decimals, small ones with. */
function ticks(_u, values) {
  return values.map((v) => fmt(v));
}

function options(chart, width) {
  return {
    width,
    height: 160,
    // The legend shows the values of the second under the pointer.
    legend: { live: true },
    cursor: { drag: { x: false, y: false } },
    scales: {
      x: {
        time: true,
        range: (_u, min, max) => [Math.min(min, max - MIN_SPAN), max],
      },
      y: { range: chart.range ?? ((_u, _min, max) => [0, max > 0 ? max * 1.1 : 1]) },
    },
    axes: [
      {
        // Times of day in the reader's zone, 24-hour, with seconds while the span is short.
        values: (u, splits) => {
          const seconds = u.scales.x.max - u.scales.x.min <= 180;
          return splits.map((t) => clock(t, seconds));
        },
        space: 70,
        stroke: '#675e55',
        grid: { stroke: '#ebe2d7' },
        ticks: { stroke: '#ebe2d7' },
      },
      {
        label: chart.unit,
        labelSize: 20,
        size: 44,
        values: ticks,
        stroke: '#675e55',
        grid: { stroke: '#ebe2d7' },
        ticks: { stroke: '#ebe2d7' },
      },
    ],
    series: [
      { label: 'Time', value: (_u, t) => (t == null ? '–' : clock(t, true)) },
      ...chart.series.map(([label], i) => ({
        label,
        stroke: COLORS[i],
        width: 2,
        points: { show: false },
        value: (_u, v) => (v == null ? '–' : `${fmt(v)} ${chart.unit}`),
      })),
    ],
  };
}

/** More than this between two samples is a gap: seconds nobody sampled (a stalled server, a
 * restart), which the line must not bridge with values that were never measured. */
const GAP_MS = 2500;

/** The columns uPlot draws: unix seconds, then one array per series; a null point a second
 * after the last sample before a gap breaks the line there. */
function columns(chart) {
  const times = [];
  const values = chart.series.map(() => []);
  samples.forEach((sample, i) => {
    const previous = samples[i - 1];
    if (previous && sample.t - previous.t > GAP_MS) {
      times.push(previous.t / 1000 + 1);
      for (const column of values) column.push(null);
    }
    times.push(sample.t / 1000);
    chart.series.forEach(([, pick], k) => values[k].push(pick(sample)));
  });
  return [times, ...values];
}

// The charts by name; the browser test reads their axes here (uPlot draws axis text on the
// canvas, where the DOM cannot see it).
const plots = {};
window.dashboardCharts = plots;

function setUp() {
  for (const [name, chart] of Object.entries(CHARTS)) {
    const plot = container.querySelector(`[data-chart=${name}] .plot`);
    plots[name] = new window.uPlot(options(chart, plot.clientWidth), columns(chart), plot);
  }
  // uPlot draws at a fixed size: follow the card's width (the grid reflows with the window).
  const resize = new ResizeObserver(() => {
    for (const [name, plot] of Object.entries(plots)) {
      const width = container.querySelector(`[data-chart=${name}] .plot`).clientWidth;
      if (width > 0 && width !== plot.width) plot.setSize({ width, height: 160 });
    }
  });
  for (const plot of container.querySelectorAll('.plot')) resize.observe(plot);
}

function draw() {
  for (const [name, chart] of Object.entries(CHARTS)) {
    plots[name].setData(columns(chart));
    if (!samples.length) continue;
    const section = container.querySelector(`[data-chart=${name}]`);
    const headline = chart.headline();
    section.querySelector('.number').textContent = headline.number;
    section.querySelector('.unit').textContent = headline.unit;
    section.querySelector('.window').textContent = headline.window;
  }
  container.dataset.samples = samples.length;
  container.dataset.last = samples.at(-1)?.t ?? '';
}

function add(list) {
  samples.push(...list);
  samples.splice(0, Math.max(0, samples.length - KEEP));
  draw();
}

setUp();
const source = new EventSource('/dashboard/stream');
source.addEventListener('open', () => {
  status.textContent = 'live';
  status.className = 'status online';
});
source.addEventListener('error', () => {
  status.textContent = 'reconnecting…';
  status.className = 'status offline';
});
source.addEventListener('history', (event) => {
  samples.length = 0;
  add(JSON.parse(event.data));
});
source.addEventListener('sample', (event) => add([JSON.parse(event.data)]));
