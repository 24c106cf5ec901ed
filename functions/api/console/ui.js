// Small DOM helpers shared by the views: an element builder (text is always set as text, never
// parsed as HTML), formatting, status badges, and the box that shows an API refusal plainly.

/** h('p', {class: 'x', onclick: fn}, 'text', child...) */
export function h(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith('on') && typeof value === 'function') {
      element.addEventListener(name.slice(2), value);
    } else if (name === 'class') {
      element.className = value;
    } else if (name === 'dataset') {
      Object.assign(element.dataset, value);
    } else {
      element.setAttribute(name, value === true ? '' : String(value));
    }
  }
  append(element, children);
  return element;
}

function append(element, children) {
  for (const child of children) {
    if (child === undefined || child === null || child === false) continue;
    if (Array.isArray(child)) append(element, child);
    else element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** SVG elements (the gauge and the chart). */
export function svg(tag, attributes = {}, ...children) {
  const element = document.createElementNS('http://www.w3.org/2000/svg', tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value !== undefined && value !== null) element.setAttribute(name, String(value));
  }
  for (const child of children) {
    if (child !== undefined && child !== null) {
      element.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
  }
  return element;
}

export const STATUSES = ['PENDING', 'IN_PROGRESS', 'COMPLETED', 'FAILED', 'EXPIRED', 'CANCELED'];

export function statusLabel(status) {
  return status.replace('_', ' ').toLowerCase().replace(/^./, (c) => c.toUpperCase());
}

export function statusBadge(status) {
  return h('span', { class: `badge badge-${status.toLowerCase().replace('_', '-')}` }, status);
}

const dateTime = new Intl.DateTimeFormat(undefined, {
  year: 'numeric', month: 'short', day: 'numeric',
  hour: '2-digit', minute: '2-digit', second: '2-digit',
});
const timeOfDay = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit' });
const timeWithSeconds = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit', second: '2-digit' });

/** A <time> element in local time, its exact ISO instant in `datetime` and `title`. */
export function time(iso) {
  if (!iso) return h('span', { class: 'muted' }, '—');
  const at = new Date(iso);
  return h('time', { datetime: iso, title: iso }, dateTime.format(at));
}

export function clock(date) {
  return timeOfDay.format(date);
}

export function clockWithSeconds(date) {
  return timeWithSeconds.format(date);
}

/** 0 s, 42 s, 3 min 5 s, 2 h 4 min, 3 d 2 h */
export function duration(seconds) {
  if (seconds === null || seconds === undefined) return '—';
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
}

export function shortId(id) {
  return id.slice(0, 8) + '…' + id.slice(-4);
}

/** A definition list from [label, value] pairs (values: text or nodes; null rows skipped). */
export function fields(pairs, className = 'fields') {
  return h('dl', { class: className },
    pairs.filter(Boolean).map(([label, value]) => h('div', { class: 'field' },
      h('dt', {}, label),
      h('dd', {}, value === null || value === undefined || value === '' ? h('span', { class: 'muted' }, '—') : value))));
}

/**
 * An API refusal, shown plainly: the HTTP status, the problem's title and detail, its field
 * errors and type; or, for an answer that is not a problem (a gateway's), its body as text.
 */
export function problemBox(error, { heading = 'The API refused the request' } = {}) {
  const box = h('div', { class: 'problem', role: 'alert' });
  if (!error || error.name !== 'ApiError') {
    box.append(h('p', { class: 'problem-title' }, heading), h('p', {}, String(error?.message || error)));
    return box;
  }
  const problem = error.problem || {};
  const statusLine = error.status
    ? `${error.status}${problem.title ? ' ' + problem.title : ''}`
    : 'No answer';
  box.append(h('p', { class: 'problem-title' }, `${heading}: `, h('strong', { class: 'problem-status' }, statusLine)));
  if (problem.detail) box.append(h('p', { class: 'problem-detail' }, problem.detail));
  if (Array.isArray(problem.errors) && problem.errors.length) {
    box.append(h('ul', { class: 'problem-errors' },
      problem.errors.map((e) => h('li', {}, h('code', {}, e.field), ': ', e.message))));
  }
  if (problem.type) box.append(h('p', { class: 'problem-type' }, 'type ', h('code', {}, problem.type)));
  if (!error.isProblem) {
    const body = (error.text || '').trim();
    if (body) box.append(h('pre', { class: 'problem-body' }, body.slice(0, 2000)));
    else if (!error.status) box.append(h('p', {}, error.message));
    if (error.status === 403) {
      box.append(h('p', { class: 'hint' },
        'An API behind IAM authorization accepts only SigV4-signed requests, which a browser cannot make. ',
        'Open the console through ', h('code', {}, 'ebra console --api <API URL>'),
        ' on your machine: it signs each request with your AWS credentials.'));
    }
  }
  return box;
}

/** Says `text` to screen readers through the page's polite live region. */
export function announce(text) {
  const announcer = document.getElementById('announcer');
  if (!announcer) return;
  announcer.textContent = '';
  // A fresh text node after a tick, so a repeated message is announced again.
  setTimeout(() => { announcer.textContent = text; }, 50);
}

export function isUuid(text) {
  return /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i.test(text);
}

/**
 * A confirmation: a modal <dialog> (focus trapped, Escape or the "keep" button changes
 * nothing). `open({title, text, keep, confirm, danger}, opener, then)` runs `then` only when
 * confirmed, and gives the focus back to `opener`.
 */
export function confirmDialog() {
  let onConfirm = null;
  let opener = null;
  const title = h('h2', { id: 'confirm-title' });
  const text = h('p', { id: 'confirm-text' });
  const keep = h('button', { type: 'button', class: 'button-quiet', autofocus: true, onclick: () => element.close('keep') });
  const confirm = h('button', { type: 'button', onclick: () => element.close('confirm') });
  const element = h('dialog', { class: 'confirm', 'aria-labelledby': 'confirm-title', 'aria-describedby': 'confirm-text' },
    title, text, h('div', { class: 'dialog-buttons' }, keep, confirm));
  element.addEventListener('close', () => {
    const confirmed = element.returnValue === 'confirm';
    element.returnValue = '';
    if (opener && opener.isConnected) opener.focus();
    if (confirmed && onConfirm) onConfirm();
  });
  return {
    element,
    isOpen: () => element.open,
    open(words, from, then) {
      onConfirm = then;
      opener = from;
      title.textContent = words.title;
      text.textContent = words.text;
      keep.textContent = words.keep;
      confirm.textContent = words.confirm;
      confirm.className = words.danger ? 'button-danger' : '';
      element.showModal();
      keep.focus();
    },
  };
}

export const CAMPAIGN_STATUSES = ['ACTIVE', 'PAUSED', 'COMPLETED', 'CANCELED'];

/** Calls that ended (any terminal status) out of a campaign's `progress.calls`. */
export function endedCalls(calls) {
  return ['COMPLETED', 'FAILED', 'EXPIRED', 'CANCELED'].reduce((sum, s) => sum + (calls[s] ?? 0), 0);
}

/** A campaign's calls in progress: "2 of 5" against its own limit, "2 (no limit of its own)" under the global cap only. */
export function inProgressText(inProgress, maxConcurrency) {
  return maxConcurrency === null || maxConcurrency === undefined
    ? `${inProgress} (no limit of its own)`
    : `${inProgress} of ${maxConcurrency}`;
}
