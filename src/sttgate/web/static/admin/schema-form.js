// Form fields from the admin API's own OpenAPI document: the console asks for whatever options a request body
// documents (for a new key: a name, an expiry, limits…, as the API of this gateway has them), so the page and the
// API never disagree about which fields exist. A field left empty is not sent, so the API's default applies.

import { el } from "./format.js";

// The one non-null alternative of an optional field (`anyOf: [X, {type: "null"}]`), else the schema itself.
function resolved(schema) {
  const alternatives = (schema.anyOf ?? [schema]).filter((s) => s.type !== "null");
  return alternatives.length === 1 ? { ...schema, ...alternatives[0] } : null;
}

// The inputs for the properties of `schema` that a form can express (text, numbers, lists of strings, booleans).
export function fieldsOf(schema) {
  const fields = [];
  for (const [name, property] of Object.entries(schema?.properties ?? {})) {
    const s = resolved(property);
    if (s === null) continue;
    const list = s.type === "array" && s.items?.type === "string";
    if (!list && !["string", "integer", "number", "boolean"].includes(s.type)) continue;
    fields.push({ name, type: list ? "list" : s.type, title: s.title ?? name, description: s.description ?? "" });
  }
  return fields;
}

export function inputsFor(fields) {
  return fields.map((field) => {
    const attributes = { name: field.name, title: field.description, dataset: { kind: field.type } };
    if (field.type === "boolean") {
      return el("label", { class: "check" }, el("input", { ...attributes, type: "checkbox" }), field.title);
    }
    if (field.type === "integer" || field.type === "number") attributes.type = "number";
    if (field.type === "list") attributes.placeholder = "comma-separated";
    return el("label", {}, field.title, el("input", attributes));
  });
}

// The request body from the form: typed as the schema says; empty fields (and unticked boxes) left out.
export function bodyOf(form, fields) {
  const body = {};
  for (const field of fields) {
    const input = form.elements[field.name];
    if (field.type === "boolean") {
      if (input.checked) body[field.name] = true;
      continue;
    }
    const text = input.value.trim();
    if (text === "") continue;
    if (field.type === "integer" || field.type === "number") body[field.name] = Number(text);
    else if (field.type === "list") body[field.name] = text.split(",").map((item) => item.trim()).filter(Boolean);
    else body[field.name] = text;
  }
  return body;
}
