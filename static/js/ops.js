// The operations console: the current section is marked in the navigation; every action form
// asks for confirmation first; the overview's job counts, a job page's state and a workflow
// page's step states refresh while the page is open.
for (const link of document.querySelectorAll('.ops-nav a')) {
  const path = new URL(link.href).pathname;
  const here = location.pathname;
  if (here === path || (path !== '/ops' && here.startsWith(`${path}/`))) link.setAttribute('aria-current', 'page');
}

for (const form of document.querySelectorAll('form[data-confirm]')) {
  form.addEventListener('submit', (event) => {
    if (!confirm(form.dataset.confirm)) event.preventDefault();
  });
}

const every = (ms, fn) => {
  fn();
  setInterval(() => {
    if (!document.hidden) fn();
  }, ms);
};

const counts = document.getElementById('counts');
if (counts) {
  every(2000, async () => {
    const response = await fetch('/ops/api/counts', { credentials: 'same-origin' });
    if (!response.ok) return;
    const seen = new Map((await response.json()).map((c) => [`${c.queue}:${c.state}`, c.jobs]));
    for (const cell of counts.querySelectorAll('[data-count]')) {
      const link = cell.querySelector('a');
      link.textContent = String(seen.get(cell.dataset.count) ?? 0);
    }
  });
}

const state = document.getElementById('job-state');
if (state) {
  const attempt = document.getElementById('job-attempt');
  const progress = document.getElementById('job-progress');
  every(1000, async () => {
    const response = await fetch(`/api/jobs/${state.dataset.jobId}`, { credentials: 'same-origin' });
    if (!response.ok) return;
    const job = await response.json();
    state.textContent = job.state;
    state.className = `tag state-${job.state}`;
    attempt.textContent = `${job.attempt} of ${job.max_attempts}`;
    if (job.progress_percent != null) {
      progress.textContent = `${job.progress_percent} %${job.progress_message ? ` — ${job.progress_message}` : ''}`;
    }
  });
}

const workflow = document.getElementById('workflow-state');
if (workflow) {
  // Each node's views: its line in the outline and, when drawn, its box or frame in the SVG.
  const views = new Map();
  const view = (node, show) => views.set(node, [...(views.get(node) ?? []), show]);
  for (const li of document.querySelectorAll('#workflow-graph [data-node]')) {
    const tag = li.querySelector('[data-node-state]');
    view(li.dataset.node, (state) => {
      tag.textContent = state;
      tag.className = `tag state-${state}`;
    });
  }
  for (const shape of document.querySelectorAll('#workflow-svg [data-node]')) {
    const base = shape.getAttribute('class').replace(/\s*state-\S+/, '');
    const text = shape.querySelector('[data-node-state]');
    view(shape.dataset.node, (state) => {
      shape.setAttribute('class', `${base} state-${state}`);
      if (text) text.textContent = state;
    });
  }
  const shown = new Map();
  const counts = document.getElementById('workflow-counts');
  every(1000, async () => {
    if (workflow.textContent !== 'running') return;
    const response = await fetch(`/api/workflows/${workflow.dataset.workflowId}`, { credentials: 'same-origin' });
    if (!response.ok) return;
    const status = await response.json();
    workflow.textContent = status.state;
    workflow.className = `tag state-${status.state}`;
    if (status.state !== 'running') {
      // Finished: nothing left to cancel; show when (as the server does, to the second).
      document.getElementById('workflow-actions')?.remove();
      if (status.finished_at) {
        document.getElementById('workflow-finished').textContent = `${status.finished_at.slice(0, 19).replace('T', ' ')} UTC`;
      }
    }
    for (const node of status.nodes) {
      const key = String(node.node);
      if (shown.get(key) === node.state) continue;
      shown.set(key, node.state);
      for (const show of views.get(key) ?? []) show(node.state);
    }
    counts.replaceChildren(
      ...Object.entries(status.counts).flatMap(([state, n]) => {
        const tag = document.createElement('span');
        tag.className = `tag state-${state}`;
        tag.textContent = `${state} ${n}`;
        return [tag, document.createTextNode(' ')];
      }),
    );
  });
}
