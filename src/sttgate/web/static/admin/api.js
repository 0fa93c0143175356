// The admin API client (docs/admin-api.md): JSON over fetch, the admin token as a Bearer header.
//
// The token lives in sessionStorage: it survives a reload of this tab, never reaches another tab or a later
// browser session, and is never written anywhere else. The API is the sibling path v1/ of the page, so the
// console works behind a reverse proxy that adds a path prefix.

const TOKEN_KEY = "sttgate.admin-token";
const BASE = new URL("v1/", document.baseURI);

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export const token = {
  get: () => sessionStorage.getItem(TOKEN_KEY),
  set: (value) => sessionStorage.setItem(TOKEN_KEY, value),
  clear: () => sessionStorage.removeItem(TOKEN_KEY),
};

// One call: the answer's JSON, or an ApiError with the API's own code and message
// ({"error": {"code", "message"}}), or a network error said in one sentence.
export async function call(method, path, { query, body, secret } = {}) {
  const url = new URL(path.replace(/^\//, ""), BASE);
  for (const [name, value] of Object.entries(query ?? {})) {
    if (value !== null && value !== undefined && value !== "") url.searchParams.set(name, value);
  }
  const headers = { Accept: "application/json", Authorization: `Bearer ${secret ?? token.get() ?? ""}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(url, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
      credentials: "omit",
    });
  } catch (exc) {
    throw new ApiError(0, "network_error", `The admin API did not answer (${exc.message}).`);
  }
  let document = null;
  try {
    document = await response.json();
  } catch {
    // Not JSON: a proxy's page, say. Reported below by status.
  }
  if (!response.ok) {
    const error = document?.error;
    throw new ApiError(
      response.status,
      error?.code ?? "http_error",
      error?.message ?? `The admin API answered ${response.status} ${response.statusText}.`,
    );
  }
  return document;
}
