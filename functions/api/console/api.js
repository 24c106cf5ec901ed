// The console's one door to the API. URLs are relative to the console's parent path, so the
// same files work under `ebra dev`, behind API Gateway (with or without a base path) and
// behind `ebra console --api URL`. A refusal becomes an ApiError carrying the API's
// problem+json, or whatever else answered (API Gateway's own {"message": ...}, a proxy).

const API_BASE = new URL('../', import.meta.url);
const TOKEN_KEY = 'ebra.console.apiToken';

export class ApiError extends Error {
  constructor(status, problem, text) {
    super(problem?.detail || problem?.title || problem?.message || text || `HTTP ${status}`);
    this.name = 'ApiError';
    // 0 when nothing answered.
    this.status = status;
    // The parsed JSON body (an RFC 9457 problem, or a gateway's error object), or null.
    this.problem = problem;
    this.text = text;
  }

  get isProblem() {
    return Boolean(this.problem && typeof this.problem.type === 'string' && this.problem.status);
  }
}

export function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function setToken(value) {
  sessionStorage.setItem(TOKEN_KEY, value);
}

export function forgetToken() {
  sessionStorage.removeItem(TOKEN_KEY);
}

/** Calls the API; resolves to the parsed JSON body, rejects with an ApiError. */
export async function api(path, { method = 'GET', body, signal } = {}) {
  const headers = { Accept: 'application/json' };
  const bearer = token();
  if (bearer) headers.Authorization = `Bearer ${bearer}`;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  let response;
  try {
    response = await fetch(new URL(path, API_BASE), {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      signal,
      credentials: 'omit',
      cache: 'no-store',
    });
  } catch (error) {
    if (error.name === 'AbortError') throw error;
    throw new ApiError(0, null, `The API did not answer (${error.message}).`);
  }
  const text = await response.text();
  let json = null;
  if (text && (response.headers.get('content-type') || '').includes('json')) {
    try {
      json = JSON.parse(text);
    } catch {
      json = null;
    }
  }
  if (!response.ok) throw new ApiError(response.status, json, text);
  return json;
}

/** A query string from the defined values of `params` (leading `?` included when non-empty). */
export function query(params) {
  const search = new URLSearchParams();
  for (const [name, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== '') search.set(name, value);
  }
  const text = search.toString();
  return text ? `?${text}` : '';
}
