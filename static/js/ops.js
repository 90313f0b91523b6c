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
  const lines = new Map(
    [...document.querySelectorAll('#workflow-graph [data-node]')].map((li) => [li.dataset.node, li.querySelector('[data-node-state]')]),
  );
  const counts = document.getElementById('workflow-counts');
  every(1000, async () => {
    if (workflow.textContent !== 'running') return;
    const response = await fetch(`/api/workflows/${workflow.dataset.workflowId}`, { credentials: 'same-origin' });
    if (!response.ok) return;
    const status = await response.json();
    workflow.textContent = status.state;
    workflow.className = `tag state-${status.state}`;
    for (const node of status.nodes) {
      const tag = lines.get(String(node.node));
      if (!tag || tag.textContent === node.state) continue;
      tag.textContent = node.state;
      tag.className = `tag state-${node.state}`;
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
