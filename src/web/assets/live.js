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
  function line(record) {
    var li = document.createElement("li");
    function part(cls, text) {
      var span = document.createElement(cls === "sql" ? "code" : "span");
      span.className = cls;
      // textContent, never innerHTML: statement text is whatever an engineer typed.
      span.textContent = text;
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
    part("sql", String(record.statement || ""));
    return li;
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
