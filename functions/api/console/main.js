// The console's shell: a hash router over one module per view, the token prompt, and each
// view's lifetime (its requests are aborted and its polling stops when it is left; polling
// pauses while the tab is hidden).

import { token, setToken, forgetToken } from './api.js';
import { h, problemBox } from './ui.js';
import * as overview from './views/overview.js';
import * as calls from './views/calls.js';
import * as call from './views/call.js';
import * as campaigns from './views/campaigns.js';
import * as campaign from './views/campaign.js';

const ROUTES = [
  { pattern: /^\/$/, view: overview, nav: 'overview' },
  { pattern: /^\/calls$/, view: calls, nav: 'calls' },
  { pattern: /^\/calls\/([^/]+)$/, view: call, nav: 'calls' },
  { pattern: /^\/campaigns$/, view: campaigns, nav: 'campaigns' },
  { pattern: /^\/campaigns\/([^/]+)$/, view: campaign, nav: 'campaigns' },
];

let current = null;

function stopCurrent() {
  if (!current) return;
  current.controller.abort();
  for (const timer of current.timers) clearTimeout(timer);
  current = null;
}

function location_() {
  const raw = window.location.hash.replace(/^#/, '');
  const [path, search = ''] = raw.split('?');
  return { path: path || '/', params: new URLSearchParams(search) };
}

async function route({ focus = true } = {}) {
  stopCurrent();
  const main = document.getElementById('main');
  const { path, params } = location_();
  let matched = null;
  let match = null;
  for (const candidate of ROUTES) {
    match = candidate.pattern.exec(path);
    if (match) {
      matched = candidate;
      break;
    }
  }
  updateTokenButton();
  if (!matched) {
    setNav(null);
    document.title = 'Not found · Ebra console';
    main.replaceChildren(h('h1', { tabindex: '-1' }, 'Not found'),
      h('p', {}, 'The console has no page here. ', h('a', { href: '#/' }, 'Go to the overview.')));
    if (focus) focusHeading(main);
    return;
  }

  const controller = new AbortController();
  const timers = new Set();
  current = { controller, timers };
  const view = {
    signal: controller.signal,
    params,
    id: match[1] ? decodeURIComponent(match[1]) : undefined,
    go(hash) {
      if (window.location.hash === hash) route();
      else window.location.hash = hash;
    },
    /** Runs `fn` every `ms` while this view is shown and the tab is visible. */
    every(ms, fn) {
      const tick = async () => {
        timers.delete(timer);
        if (controller.signal.aborted) return;
        if (document.visibilityState === 'visible') await fn();
        if (!controller.signal.aborted) {
          timer = setTimeout(tick, ms);
          timers.add(timer);
        }
      };
      let timer = setTimeout(tick, ms);
      timers.add(timer);
    },
    /** Takes over the errors every view treats alike; true when it did. */
    handle(error) {
      if (error?.name === 'ApiError' && error.status === 401) {
        if (current?.controller === controller) {
          stopCurrent();
          showTokenForm(main, error);
        }
        return true;
      }
      return false;
    },
  };

  setNav(matched.nav);
  document.title = `${matched.view.title} · Ebra console`;
  main.setAttribute('aria-busy', 'true');
  try {
    await matched.view.render(main, view);
  } catch (error) {
    if (error?.name === 'AbortError' || controller.signal.aborted) return;
    if (!view.handle(error)) {
      main.replaceChildren(
        h('h1', { tabindex: '-1' }, matched.view.title),
        problemBox(error),
        h('p', {}, h('button', { type: 'button', onclick: () => route() }, 'Try again')));
    }
  } finally {
    main.removeAttribute('aria-busy');
  }
  if (focus && current?.controller === controller) focusHeading(main);
}

function focusHeading(main) {
  const heading = main.querySelector('h1');
  if (heading) heading.focus({ preventScroll: false });
}

function setNav(active) {
  for (const link of document.querySelectorAll('[data-nav]')) {
    if (link.dataset.nav === active) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
  }
}

function updateTokenButton() {
  const button = document.getElementById('forget-token');
  if (button) button.hidden = !token();
}

/** The API answered 401: ask for its bearer token (kept in this tab's session storage). */
function showTokenForm(main, error) {
  const presented = Boolean(token());
  forgetToken();
  updateTokenButton();
  document.title = 'API token · Ebra console';
  const input = h('input', {
    id: 'api-token', name: 'token', type: 'password', autocomplete: 'off', required: true,
    spellcheck: 'false', 'aria-describedby': 'api-token-help',
  });
  const form = h('form', {
    class: 'token-form', novalidate: true,
    onsubmit: (event) => {
      event.preventDefault();
      const value = input.value.trim();
      if (!value) {
        input.setAttribute('aria-invalid', 'true');
        input.focus();
        return;
      }
      setToken(value);
      route();
    },
  },
  h('label', { for: 'api-token' }, 'API token'),
  input,
  h('p', { class: 'muted small', id: 'api-token-help' },
    'Kept in this tab’s session storage and sent only to this API, as ', h('code', {}, 'Authorization: Bearer …'), '.'),
  h('button', { type: 'submit' }, 'Use this token'));
  main.replaceChildren(
    h('h1', { tabindex: '-1' }, 'API token needed'),
    h('p', {}, 'This API requires a bearer token: the ', h('code', {}, 'API_TOKEN'), ' it runs with, or the token its authorizer accepts.'),
    problemBox(error, { heading: presented ? 'The API refused the token' : 'The API asks for a token' }),
    form);
  input.focus();
}

document.getElementById('skip-link')?.addEventListener('click', (event) => {
  event.preventDefault();
  document.getElementById('main')?.focus();
});
document.getElementById('forget-token')?.addEventListener('click', () => {
  forgetToken();
  route();
});
window.addEventListener('hashchange', () => route());
route({ focus: false });
