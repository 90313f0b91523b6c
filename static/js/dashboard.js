// The live dashboard: the history and then one sample a second over server-sent events,
// drawn as SVG polylines by hand (no charting library). Each chart spans the samples kept
// (at least a minute, at most 15 minutes) and scales to its own maximum.
const KEEP = 900;
const MIN_WINDOW = 60;
const samples = [];
const status = document.getElementById('status');

const charts = {
  rps: { series: [(s) => s.requests_per_s], text: (s) => `${s.requests_per_s}` },
  latency: {
    series: [(s) => s.p50_ms, (s) => s.p99_ms],
    text: (s) => (s.p50_ms == null ? 'no requests' : `${fmt(s.p50_ms)} / ${fmt(s.p99_ms)}`),
  },
  sockets: { series: [(s) => s.websockets, (s) => s.event_streams], text: (s) => `${s.websockets} / ${s.event_streams}` },
  jobs: {
    series: [(s) => s.jobs_completed_per_s, (s) => s.jobs_failed_per_s],
    text: (s) => `${s.jobs_completed_per_s} / ${s.jobs_failed_per_s}`,
  },
  messages: {
    series: [(s) => s.messages_published_per_s, (s) => s.deliveries_per_s],
    text: (s) => `${s.messages_published_per_s} / ${s.deliveries_per_s}`,
  },
  depth: { series: [(s) => s.queue_depth], text: (s) => (s.queue_depth == null ? '?' : `${s.queue_depth}`) },
  cache: {
    series: [(s) => (s.cache_hit_ratio == null ? null : s.cache_hit_ratio * 100)],
    text: (s) => (s.cache_hit_ratio == null ? 'no lookups' : `${(s.cache_hit_ratio * 100).toFixed(1)} %`),
    max: 100,
  },
};

function fmt(ms) {
  return ms < 1 ? ms.toFixed(2) : ms < 10 ? ms.toFixed(1) : Math.round(ms).toString();
}

const SVG = 'http://www.w3.org/2000/svg';

function draw() {
  const last = samples[samples.length - 1];
  const window = Math.max(MIN_WINDOW, samples.length);
  const offset = window - samples.length;
  const scale = KEEP / Math.max(1, window - 1);
  for (const [name, chart] of Object.entries(charts)) {
    const section = document.querySelector(`[data-chart=${name}]`);
    const svg = section.querySelector('svg');
    const values = chart.series.flatMap((f) => samples.map(f)).filter((v) => v != null);
    const max = chart.max ?? Math.max(1, ...values) * 1.1;
    const lines = chart.series.map((f, i) => {
      const points = [];
      samples.forEach((s, x) => {
        const v = f(s);
        if (v != null) points.push(`${((offset + x) * scale).toFixed(1)},${(120 - (v / max) * 116).toFixed(1)}`);
      });
      const line = document.createElementNS(SVG, 'polyline');
      line.setAttribute('points', points.join(' '));
      line.setAttribute('class', `series series-${i}`);
      return line;
    });
    svg.replaceChildren(...lines);
    if (last) section.querySelector('.value').textContent = chart.text(last);
  }
}

function add(list) {
  samples.push(...list);
  samples.splice(0, Math.max(0, samples.length - KEEP));
  draw();
}

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
