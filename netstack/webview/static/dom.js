// Small DOM helpers. Every text from the daemon goes through textContent or
// setAttribute: names, DHCP host names and rules are the guest's or the operator's
// strings and must never be parsed as markup.

const SVG_NS = 'http://www.w3.org/2000/svg';

function fill(node, attrs, children) {
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith('on') && typeof value === 'function') {
      node.addEventListener(key.slice(2), value);
    } else if (key === 'text') {
      node.textContent = String(value);
    } else if (key === 'dataset') {
      for (const [k, v] of Object.entries(value)) node.dataset[k] = String(v);
    } else {
      node.setAttribute(key, value === true ? '' : String(value));
    }
  }
  for (const child of children) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function el(tag, attrs, ...children) {
  return fill(document.createElement(tag), attrs, children);
}

export function svg(tag, attrs, ...children) {
  return fill(document.createElementNS(SVG_NS, tag), attrs, children);
}

export function byId(id) {
  const node = document.getElementById(id);
  if (!node) throw new Error(`missing element #${id}`);
  return node;
}

// Replace a table body's rows; an empty list shows one row saying so.
export function setRows(tbody, rows, emptyText, columns) {
  if (rows.length === 0) {
    tbody.replaceChildren(el('tr', { class: 'empty' }, el('td', { colspan: columns, text: emptyText })));
  } else {
    tbody.replaceChildren(...rows);
  }
}

export function showMessage(node, text, isError) {
  node.textContent = text || '';
  node.classList.toggle('error', Boolean(isError));
  node.hidden = !text;
}

const UNITS = ['', 'k', 'M', 'G', 'T'];

// 1234567 -> "1.23M"; rates keep one decimal below 10.
export function human(value) {
  let v = Number(value) || 0;
  let i = 0;
  while (Math.abs(v) >= 1000 && i < UNITS.length - 1) {
    v /= 1000;
    i += 1;
  }
  const digits = i === 0 ? (Math.abs(v) < 10 && v % 1 !== 0 ? 1 : 0) : Math.abs(v) < 10 ? 2 : 1;
  return v.toFixed(digits) + UNITS[i];
}
