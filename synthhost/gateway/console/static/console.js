// synthhost console: progressive enhancement only (every page works without it).
// Live runs: the runs table names its running runs in data-live; their rows are
// updated from the server-sent events of /ui/runs/live as they finish.
(function () {
  "use strict";
  var table = document.getElementById("runs");
  if (!table || !table.dataset.live || !window.EventSource) { return; }
  var source = new EventSource(table.dataset.live);
  function ms(v) { return v === null || v === undefined ? "—" : (v >= 1000 ? (v / 1000).toFixed(2) + " s" : v.toFixed(1) + " ms"); }
  source.addEventListener("run", function (event) {
    var run = JSON.parse(event.data);
    var row = table.querySelector('tr[data-run-id="' + CSS.escape(run.id) + '"]');
    if (!row) { return; }
    var status = row.querySelector('[data-field="status"]');
    status.textContent = run.status;
    status.className = "status " + run.status;
    row.querySelector('[data-field="duration"]').textContent = ms(run.duration_ms);
    row.querySelector('[data-field="tokens"]').textContent = run.tokens === null || run.tokens === undefined ? "—" : String(run.tokens);
    row.querySelector('[data-field="cost"]').textContent = run.cost_usd ? "$" + run.cost_usd : "—";
  });
  source.addEventListener("done", function () { source.close(); });
})();
