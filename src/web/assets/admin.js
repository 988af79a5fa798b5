/* rappel admin page: lists requests (missed first) with their timelines, to call back by hand.
 * The token stays in this tab's sessionStorage and goes out as "Authorization: Bearer". */
(function () {
  "use strict";
  var form = document.querySelector('[data-rappel="login"]');
  var tokenInput = document.querySelector('[data-rappel="token"]');
  var filter = document.querySelector('[data-rappel="filter"]');
  var out = document.querySelector('[data-rappel="admin-status"]');
  var tbody = document.querySelector('[data-rappel="requests"] tbody');
  tokenInput.value = sessionStorage.getItem("rappel-admin-token") || "";

  function cell(tr, text) { var td = document.createElement("td"); td.textContent = text; tr.appendChild(td); return td; }

  function load() {
    var token = tokenInput.value;
    sessionStorage.setItem("rappel-admin-token", token);
    var q = filter.value ? "?state=" + encodeURIComponent(filter.value) : "";
    fetch("/api/callbacks" + q, { headers: { Authorization: "Bearer " + token } }).then(function (r) {
      return r.json().then(function (j) { return { status: r.status, body: j }; });
    }).then(function (r) {
      if (r.status !== 200) { out.textContent = r.body.error || ("Error " + r.status); return; }
      tbody.textContent = "";
      r.body.requests.forEach(function (v) {
        var tr = document.createElement("tr");
        tr.setAttribute("data-state", v.state);
        cell(tr, v.state);
        var num = cell(tr, "");
        var a = document.createElement("a"); a.href = "tel:" + v.phone; a.textContent = v.phone; num.appendChild(a);
        cell(tr, v.topic || "");
        cell(tr, new Date(v.created_at).toLocaleString());
        cell(tr, new Date(v.scheduled_at).toLocaleString());
        var tl = cell(tr, ""); var ol = document.createElement("ol");
        v.events.forEach(function (e) {
          var li = document.createElement("li");
          li.textContent = new Date(e.at).toLocaleTimeString() + " " + e.detail;
          ol.appendChild(li);
        });
        tl.appendChild(ol);
        tbody.appendChild(tr);
      });
      out.textContent = r.body.requests.length + " request(s)";
    }).catch(function () { out.textContent = "The service cannot be reached."; });
  }

  form.addEventListener("submit", function (ev) { ev.preventDefault(); load(); });
  if (tokenInput.value) { load(); }
})();
