// What every dashboard page shares: the API key (from `#key=…` or the sign-in form, kept in session storage),
// fetch with it, sign-in / not-found panels, HTML escaping and the value formats. Loaded before each page's script,
// which defines its own `load()` and calls `startPage`.
"use strict";
const KEY_STORAGE = "ltx2trainer-key";
const $ = (id) => document.getElementById(id);

function storedKey() { return sessionStorage.getItem(KEY_STORAGE); }
function forgetKey() { sessionStorage.removeItem(KEY_STORAGE); }

function takeKeyFromFragment() {
  const match = location.hash.match(/key=([^&]+)/);
  if (match) {
    sessionStorage.setItem(KEY_STORAGE, decodeURIComponent(match[1]));
    history.replaceState(null, "", location.pathname + location.search);  // not left in the address bar
  }
}

// The last part of the page's path: the training, dataset or sweep id.
function pageId() {
  return decodeURIComponent(location.pathname.replace(/\/+$/, "").split("/").pop());
}

async function api(path, key, options = {}) {
  return fetch(path, {...options, headers: {"Authorization": "Key " + key, ...(options.headers || {})}});
}

function esc(text) {
  return String(text ?? "").replace(/[&<>"']/g, (c) => ({"&":"&amp;","<":"&lt;",">":"&gt;",'"':"&quot;","'":"&#39;"}[c]));
}
const money = (value) => value == null ? "–" : "$" + value;
const loss = (value) => value == null ? "–" : Number(value).toFixed(4);
const duration = (s) => s == null ? "–" : s < 90 ? `${Math.round(s)} s` : s < 5400 ? `${Math.round(s / 60)} min` : `${(s / 3600).toFixed(1)} h`;
const when = (iso) => iso ? new Date(iso).toLocaleString(undefined, {dateStyle:"medium", timeStyle:"short"}) : "–";

function showSignin(message) {
  $("app").hidden = true; $("signin").hidden = false; $("signout").hidden = true;
  if ($("problem")) $("problem").hidden = true;
  $("signin-error").textContent = message || "";
}

function showProblem(message) {
  $("app").hidden = true; $("signin").hidden = true; $("problem").hidden = false; $("signout").hidden = false;
  $("problem-text").textContent = message;
  document.body.dataset.error = "not-found";
}

// Shows the page once it has loaded.
function showApp() {
  $("app").hidden = false; $("signin").hidden = true; $("signout").hidden = false;
  if ($("problem")) $("problem").hidden = true;
  document.body.dataset.loaded = "true";
}

// Wires the sign-in form and the sign-out button, takes a key from the fragment, and loads the page.
// `stop` is called on sign-out (the page's refresh timer).
function startPage(load, stop = () => {}) {
  $("signin-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(KEY_STORAGE, $("key").value.trim());
    load();
  });
  $("signout").addEventListener("click", () => { forgetKey(); stop(); showSignin(); });
  takeKeyFromFragment();
  load();
}
