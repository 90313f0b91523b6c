// The dashboard's charts (#32), as an admin ($ADMIN_USER, $PASSWORD) sees them:
//
//   a. every chart is drawn by uPlot on a canvas (pixels painted), with a time axis whose ticks
//      are times, a value axis labelled with its unit, and a legend naming its series
//   b. hovering a chart shows the values of that second in its legend, with their unit
//   c. the charts move as samples arrive, without a reload
//   d. after a burst of requests and a few quiet seconds, the requests headline still shows
//      the burst (a mean over its window, labelled), not the last second's 0
//   e. nothing scrolls sideways at 360 px; screenshots at 360, 390 and 1280 px; axe-core finds
//      no serious or critical violation; no console error (lib.mjs fails on any CSP violation)
//   f. seconds that have no sample (nobody sampled them: a stalled server, a restart) are a gap
//      in the line, not a straight line drawn through values that were never measured
// Screenshots: dashboard-360.png, dashboard-390.png, dashboard-1280.png, dashboard-hover.png.
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { BASE, fail, login, run, shot, step } from './lib.mjs';

const AXE = readFileSync(createRequire(import.meta.url).resolve('axe-core/axe.min.js'), 'utf8');

const admin = process.env.ADMIN_USER;
const password = process.env.PASSWORD;
if (!admin || !password) fail('ADMIN_USER and PASSWORD are required');

const CHARTS = ['rps', 'latency', 'sockets', 'jobs', 'depth', 'messages', 'cache'];

/** How many samples the page has drawn. */
async function drawn(page) {
  return Number((await page.locator('#charts').getAttribute('data-samples')) ?? 0);
}

await run(async ({ page }) => {
  const errors = [];
  page.on('console', (msg) => {
    if (msg.type() === 'error') errors.push(msg.text());
  });
  page.on('pageerror', (err) => errors.push(err.message));

  await page.setViewportSize({ width: 1280, height: 800 });
  await login(page, admin, password);
  await page.goto(`${BASE}/dashboard`);
  await page.locator('#status.online').waitFor();
  await page.waitForFunction(() => Number(document.querySelector('#charts')?.dataset.samples) >= 2);

  await step('a. each chart is a drawn canvas with a time axis, a unit axis and a legend', async () => {
    for (const name of CHARTS) {
      const chart = page.locator(`[data-chart=${name}]`);
      const found = await chart.evaluate((section) => {
        const canvas = section.querySelector('.uplot canvas');
        if (!canvas) return { canvas: false };
        const { data } = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height);
        let painted = 0;
        for (let i = 3; i < data.length; i += 4) if (data[i] > 0) painted++;
        // uPlot draws the axes' text on the canvas: their ticks and labels are read from the
        // chart (the page keeps its charts in window.dashboardCharts).
        const plot = window.dashboardCharts[section.dataset.chart];
        return {
          canvas: true,
          width: canvas.getBoundingClientRect().width,
          painted,
          axes: section.querySelectorAll('.u-axis').length,
          ticks: plot.axes.map((a) => (a._values ?? []).map(String)),
          labels: plot.axes.map((a) => a.label ?? ''),
          legend: [...section.querySelectorAll('.u-legend .u-series th .u-label')].map((l) => l.textContent),
        };
      });
      if (!found.canvas) fail(`${name}: no uPlot canvas`);
      if (found.width < 200) fail(`${name}: the canvas is ${found.width} px wide`);
      if (found.painted < 1000) fail(`${name}: only ${found.painted} pixels are painted`);
      if (found.axes < 2) fail(`${name}: ${found.axes} axes`);
      if (!found.ticks[0].length || !found.ticks[0].every((t) => /^\d\d:\d\d(:\d\d)?$/.test(t))) fail(`${name}: the x axis ticks are not times: ${found.ticks[0]}`);
      if (found.ticks[1].length < 2) fail(`${name}: the value axis has ticks ${found.ticks[1]}`);
      if (!found.labels[1]) fail(`${name}: the value axis has no unit label`);
      if (found.legend.length < 2 || found.legend[0] !== 'Time') fail(`${name}: legend ${JSON.stringify(found.legend)}`);
    }
    const units = await page.evaluate(() => Object.fromEntries(Object.entries(window.dashboardCharts).map(([n, p]) => [n, p.axes[1].label])));
    if (units.rps !== 'req/s' || units.latency !== 'ms' || units.cache !== '%') fail(`the value axes say ${JSON.stringify(units)}`);
    await shot(page, 'dashboard-1280.png');
  });

  await step('b. hovering a chart shows that second\'s values in its legend', async () => {
    const chart = page.locator('[data-chart=latency]');
    const before = await chart.locator('.u-legend .u-value').allTextContents();
    const over = await chart.locator('.u-over').boundingBox();
    await page.mouse.move(over.x + over.width - 3, over.y + over.height / 2);
    const values = chart.locator('.u-legend .u-value');
    await page.waitForFunction(
      () => /\d\d:\d\d:\d\d/.test(document.querySelector('[data-chart=latency] .u-legend .u-value')?.textContent ?? ''),
    );
    const after = await values.allTextContents();
    if (!after.slice(1).every((v) => v === '–' || / ms$/.test(v))) fail(`the hovered values are ${JSON.stringify(after)} (before: ${JSON.stringify(before)})`);
    const rps = page.locator('[data-chart=rps]');
    const rpsOver = await rps.locator('.u-over').boundingBox();
    await page.mouse.move(rpsOver.x + rpsOver.width - 3, rpsOver.y + rpsOver.height / 2);
    await page.waitForFunction(
      () => / req\/s$/.test(document.querySelectorAll('[data-chart=rps] .u-legend .u-value')[1]?.textContent ?? ''),
    );
    await shot(page, 'dashboard-hover.png');
    await page.mouse.move(0, 0);
  });

  await step('c. the charts move as samples arrive', async () => {
    const samples = await drawn(page);
    const last = await page.locator('#charts').getAttribute('data-last');
    await page.waitForFunction(
      ([n, t]) => Number(document.querySelector('#charts').dataset.samples) > n && document.querySelector('#charts').dataset.last !== t,
      [samples, last],
    );
  });

  await step('d. the requests headline keeps a burst in view, with its unit and window', async () => {
    // Twenty requests within a second, then quiet seconds (the page's own stream is one
    // request, already counted).
    await page.evaluate(() => Promise.all(Array.from({ length: 20 }, () => fetch('/healthz'))));
    const start = await drawn(page);
    await page.waitForFunction((n) => Number(document.querySelector('#charts').dataset.samples) >= n + 3, start);
    const headline = await page.locator('[data-chart=rps] .value').innerText();
    const window = await page.locator('[data-chart=rps] .window').innerText();
    const number = Number(headline.split(' ')[0]);
    if (!(number > 0)) fail(`the requests headline fell to ${JSON.stringify(headline)} after the burst`);
    if (!headline.includes('req/s')) fail(`the requests headline has no unit: ${JSON.stringify(headline)}`);
    if (!/mean of the last/.test(window)) fail(`the requests headline does not name its window: ${JSON.stringify(window)}`);
  });

  await step('e. 360, 390 and 1280 px: nothing sideways, accessible, no console error', async () => {
    for (const width of [360, 390, 1280]) {
      await page.setViewportSize({ width, height: width > 800 ? 800 : 844 });
      await page.goto(`${BASE}/dashboard`);
      await page.waitForFunction(() => Number(document.querySelector('#charts')?.dataset.samples) >= 1);
      // The charts follow the card's width (a ResizeObserver): give it a frame.
      await page.waitForTimeout(200);
      const found = await page.evaluate(() => {
        const w = document.documentElement.clientWidth;
        const wide = [...document.querySelectorAll('body *')]
          .filter((el) => el.getBoundingClientRect().right > w + 1 && getComputedStyle(el).position !== 'fixed')
          .filter((el) => !el.closest('.dropdown-panel, .skip-link, .sr-only'))
          .slice(0, 3)
          .map((el) => `${el.tagName.toLowerCase()}.${el.className}`);
        return { scroll: document.documentElement.scrollWidth, width: w, wide };
      });
      if (found.scroll > found.width) fail(`at ${width} px the dashboard is ${found.scroll} px wide (${found.wide.join(', ')})`);
      await shot(page, `dashboard-${width}.png`);
    }
    await page.evaluate(AXE);
    const violations = await page.evaluate(async () => {
      const result = await window.axe.run(document, { resultTypes: ['violations'] });
      return result.violations
        .filter((v) => v.impact === 'serious' || v.impact === 'critical')
        .map((v) => `${v.impact} ${v.id}: ${v.help} (${v.nodes.slice(0, 3).map((n) => n.target.join(' ')).join('; ')})`);
    });
    if (violations.length) fail(`axe-core:\n  ${violations.join('\n  ')}`);
    if (errors.length) fail(`console errors:\n  ${errors.join('\n  ')}`);
  });

  await step('f. seconds without a sample are a gap in the line', async () => {
    // A history with 34 seconds missing, served in place of the server's stream.
    const now = Date.now();
    const sample = (ago, requests) => ({
      t: now - ago * 1000, requests_per_s: requests, p50_ms: 1, p99_ms: 2, websockets: 0,
      event_streams: 1, jobs_completed_per_s: 0, jobs_failed_per_s: 0, queue_depth: 0,
      cache_hit_ratio: null, messages_published_per_s: 0, deliveries_per_s: 0,
    });
    const history = [sample(40, 5), sample(39, 6), sample(5, 7), sample(4, 8)];
    await page.route('**/dashboard/stream', (route) => route.fulfill({
      status: 200,
      headers: { 'content-type': 'text/event-stream', 'cache-control': 'no-store' },
      body: `event: history\ndata: ${JSON.stringify(history)}\n\n`,
    }));
    await page.goto(`${BASE}/dashboard`);
    await page.waitForFunction(() => document.querySelector('#charts')?.dataset.samples === '4');
    const [times, values] = await page.evaluate(() => window.dashboardCharts.rps.data);
    await page.unroute('**/dashboard/stream');
    const measured = values.filter((v) => v !== null);
    if (JSON.stringify(measured) !== '[5,6,7,8]') fail(`the chart lost or invented values: ${JSON.stringify(values)}`);
    const at = values.indexOf(null);
    if (at < 0) fail(`a line is drawn across the 34 seconds without samples: ${JSON.stringify(values)}`);
    const [before, gap, after] = [times[at - 1], times[at], times[at + 1]].map((t) => t - now / 1000);
    if (!(before < gap && gap < after && before < -30 && after > -10)) {
      fail(`the gap is not between the samples around it: ${JSON.stringify(times)}`);
    }
  });
});
