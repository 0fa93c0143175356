// How the console writes values: money as the API sends it (decimal strings, trailing zeros trimmed), times in
// UTC like every document of the gateway.

export function usd(value) {
  if (value === null || value === undefined) return "—";
  if (!value.includes(".")) return value;
  const trimmed = value.replace(/0+$/, "").replace(/\.$/, "");
  return trimmed === "" ? "0" : trimmed;
}

export function time(iso) {
  if (!iso) return "—";
  return iso.replace("T", " ").replace(/\.\d+Z$|Z$/, "");
}

export function shortId(id) {
  return id ? id.slice(0, 8) : "—";
}

// An element with text and attributes: the console builds all its DOM with this (text nodes only, so nothing from
// the API is ever read as markup).
export function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === false || value === null || value === undefined) continue;
    if (name === "class") node.className = value;
    else if (name === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined) node.append(child instanceof Node ? child : String(child));
  }
  return node;
}
