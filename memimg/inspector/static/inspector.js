// memimg inspector: the time slider and live updates. Plain browsing works without it.
(function () {
  "use strict";
  var body = document.body;

  // The slider: show the seq while it moves, go there when it is let go.
  var slider = document.getElementById("at-slider");
  var output = document.getElementById("at-value");
  if (slider && output) {
    slider.addEventListener("input", function () { output.textContent = "seq " + slider.value; });
    // Arrow keys fire a change per step: go once the slider rests.
    var pending = null;
    slider.addEventListener("change", function () {
      clearTimeout(pending);
      pending = setTimeout(function () {
        var form = document.getElementById("timebar");
        if (slider.value === slider.max) { slider.disabled = true; }  // the newest state: no ?at=
        form.submit();
      }, 600);
    });
    window.addEventListener("pageshow", function () { slider.disabled = false; });
  }

  // Live: one event stream per page; a page showing the present is re-rendered after commits
  // (at most once a second, never two fetches at once).
  if (!window.EventSource || !body.dataset.events) { return; }
  var showingNow = body.dataset.at === "";
  var badge = document.getElementById("live");
  var busy = false, again = false, last = 0;

  function setHead(seq) {
    body.dataset.head = String(seq);
    var head = document.getElementById("head-seq");
    if (head) { head.textContent = String(seq); }
    document.querySelectorAll(".head-again").forEach(function (el) { el.textContent = String(seq); });
    if (slider) {
      var atMax = slider.value === slider.max;
      slider.max = String(seq);
      if (showingNow && atMax) { slider.value = String(seq); if (output) { output.textContent = "seq " + seq; } }
    }
  }

  function refresh() {
    if (busy) { again = true; return; }
    var wait = Math.max(0, last + 1000 - Date.now());
    busy = true;
    setTimeout(function () {
      last = Date.now();
      fetch(window.location.href, { headers: { "Accept": "text/html" }, credentials: "same-origin" })
        .then(function (r) { return r.ok ? r.text() : null; })
        .then(function (text) {
          if (text === null) { return; }
          var doc = new DOMParser().parseFromString(text, "text/html");
          var fresh = doc.getElementById("main"), main = document.getElementById("main");
          if (fresh && main) {
            main.replaceWith(fresh);
            fresh.classList.add("updated");
          }
          var footer = doc.querySelector("footer"), old = document.querySelector("footer");
          if (footer && old) { old.replaceWith(footer); }
        })
        .catch(function () {})
        .then(function () {
          busy = false;
          if (again) { again = false; refresh(); }
        });
    }, wait);
  }

  var source = new EventSource(body.dataset.events);
  source.addEventListener("open", function () { if (badge) { badge.hidden = false; } });
  source.addEventListener("error", function () { if (badge) { badge.hidden = true; } });
  source.addEventListener("commit", function (event) {
    var commit = JSON.parse(event.data);
    setHead(commit.seq);
    if (showingNow) { refresh(); }
  });
})();
