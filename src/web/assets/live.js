// The request page's live statement list: follows the request's audit stream (server-sent
// events, authenticated by the session cookie) and puts each new record on top. Without
// JavaScript the page still shows the latest records and a refresh link.
(function () {
  "use strict";
  var list = document.getElementById("statements");
  if (!list || !list.dataset.stream || !window.EventSource) {
    return;
  }
  var fields = ["event", "kind", "status", "sqlstate", "rows"];
  // What would hide or reorder a statement on the page (controls, bidi overrides,
  // zero-width and other format characters, line separators) is shown as an escape, as
  // the server writes it in the list it renders (src/visible.rs); line breaks stay.
  var hidden = /[\u0000-\u0009\u000b-\u001f\u007f-\u009f\u00ad\u034f\u115f\u1160\u17b4\u17b5\u3164\uffa0\u0600-\u0605\u061c\u06dd\u070f\u0890\u0891\u08e2\u180e\u200b-\u200f\u2028-\u202e\u2060-\u2064\u2066-\u206f\ufeff\ufff9-\ufffb\u{110bd}\u{110cd}\u{13430}-\u{1343f}\u{1bca0}-\u{1bca3}\u{1d173}-\u{1d17a}\u{e0001}\u{e0020}-\u{e007f}]/gu;
  function shown(text) {
    return text.replace(hidden, function (c) {
      if (c === "\r") { return "\\r"; }
      if (c === "\t") { return "\\t"; }
      return "\\u{" + c.codePointAt(0).toString(16) + "}";
    });
  }
  function line(record) {
    var li = document.createElement("li");
    function part(cls, text) {
      var span = document.createElement(cls === "sql" ? "code" : "span");
      span.className = cls;
      // textContent, never innerHTML: statement text is whatever an engineer typed.
      span.textContent = shown(text);
      li.appendChild(span);
      li.appendChild(document.createTextNode(" "));
    }
    part("t", String(record.time || ""));
    part("k", String(record.type || ""));
    fields.forEach(function (f) {
      if (record[f] !== undefined && record[f] !== null && record[f] !== "") {
        part(f, String(record[f]));
      }
    });
    part("sql", statement(record));
    return li;
  }
  // As the server renders it (audit::shown_statement): a clipped statement says what was
  // cut and the names its record keeps, quoted where a name could pass for the words.
  function statement(record) {
    var text = String(record.statement || "");
    var clipped = record.statement_clipped;
    if (!clipped || typeof clipped !== "object") { return text; }
    var out = text + " \u2026 (clipped: " + Number(clipped.length || 0) + " bytes";
    ["relations", "functions", "fields"].forEach(function (list) {
      var names = Array.isArray(clipped[list]) ? clipped[list] : [];
      names = names.filter(function (n) { return typeof n === "string"; }).map(quoted);
      if (names.length) { out += "; " + list + ": " + names.join(", "); }
    });
    if (typeof clipped.names_omitted === "number") {
      out += "; " + clipped.names_omitted + " more names";
    }
    return out + ")";
  }
  function quoted(name) {
    return /^[a-z0-9_$.]+$/.test(name) ? name : "\"" + name.replace(/"/g, "\"\"") + "\"";
  }
  var source = new EventSource(list.dataset.stream, { withCredentials: true });
  source.onmessage = function (event) {
    var record;
    try {
      record = JSON.parse(event.data);
    } catch (e) {
      return;
    }
    list.insertBefore(line(record), list.firstChild);
  };
  var state = document.getElementById("live-state");
  source.onopen = function () {
    if (state) { state.textContent = "Live: new statements appear at the top."; }
  };
  source.onerror = function () {
    if (state) { state.textContent = "The live stream paused; it reconnects by itself."; }
  };
})();
