// Castor console: live updates over server-sent events, and confirmations for destructive forms.
// The server renders every page; on an event this script fetches the page's live part again
// (its data-fragment URL) and swaps it in, unless the user is typing in it.
(function () {
  "use strict";
  var live = document.body.getAttribute("data-live");
  var stale = false;

  function part() { return document.getElementById("live-part"); }

  function typing() {
    var p = part(), el = document.activeElement;
    return p && el && p.contains(el) && (el.tagName === "INPUT" || el.tagName === "SELECT") && el.value;
  }

  function refresh() {
    var p = part();
    if (!p) { return; }
    if (typing()) { stale = true; return; }
    stale = false;
    fetch(p.getAttribute("data-fragment"), { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (r) { if (r.ok) { return r.text(); } throw new Error("HTTP " + r.status); })
      .then(function (html) { p.innerHTML = html; document.body.setAttribute("data-refreshed", String(Date.now())); })
      .catch(function () { stale = true; });
  }

  function count(n) {
    var badge = document.getElementById("pending-count");
    if (!badge) { return; }
    badge.textContent = String(n);
    badge.hidden = !n;
  }

  document.addEventListener("focusout", function () { if (stale) { setTimeout(refresh, 50); } });

  document.addEventListener("submit", function (e) {
    var text = e.target.getAttribute("data-confirm");
    if (text && !window.confirm(text)) { e.preventDefault(); }
  });

  if (!window.EventSource || !document.getElementById("live-dot")) { return; }
  var dot = document.getElementById("live-dot");
  var source = new EventSource("/events");
  source.onopen = function () { dot.classList.add("on"); };
  source.onerror = function () { dot.classList.remove("on"); };
  source.addEventListener("hello", function (e) { count(JSON.parse(e.data).count); });
  source.addEventListener("approvals", function (e) {
    count(JSON.parse(e.data).count);
    if (live === "approvals" || live === "run") { refresh(); }
  });
  source.addEventListener("runs", function (e) {
    var changed = JSON.parse(e.data).changed || [];
    var p = part();
    if (live === "runs") { refresh(); }
    if (live === "run" && p && changed.indexOf(p.getAttribute("data-pid")) >= 0) { refresh(); }
  });
})();
