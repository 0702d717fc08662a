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

  // Live: pages showing the present are re-rendered after commits (at most once a second, never two
  // fetches at once, never while a form in the page is being filled in).
  // One event stream serves every tab of this inspector: the tab holding a Web Lock opens it and passes each
  // commit on through a BroadcastChannel (a browser allows 6 connections per host; a stream per tab would
  // leave the seventh tab unable to load). Without Web Locks (plain http on a host other than localhost)
  // each tab has its own stream, closed while the tab is hidden.
  if (!window.EventSource || !body.dataset.events) { return; }
  var showingNow = body.dataset.at === "";
  var badge = document.getElementById("live");
  var busy = false, again = false, last = 0, stale = false;
  var seen = Number(body.dataset.head) || 0;

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

  // Whether the person is using a form in <main> (focused in it, or changed a field and not sent it):
  // replacing <main> then would throw away what they typed.
  function editing(main) {
    var active = document.activeElement;
    if (active && main.contains(active) && active.matches("input, select, textarea")) { return true; }
    var fields = main.querySelectorAll("input, select, textarea");
    for (var i = 0; i < fields.length; i++) {
      var f = fields[i];
      if (f.type === "checkbox" || f.type === "radio") {
        if (f.checked !== f.defaultChecked) { return true; }
      } else if (f.tagName === "SELECT") {
        for (var j = 0; j < f.options.length; j++) {
          if (f.options[j].selected !== f.options[j].defaultSelected) { return true; }
        }
      } else if (f.type !== "hidden" && f.value !== f.defaultValue) { return true; }
    }
    return false;
  }

  function refresh() {
    if (busy) { again = true; return; }
    var main = document.getElementById("main");
    if (main && editing(main)) { stale = true; main.classList.add("stale"); return; }  // after the form is left
    stale = false;
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
            if (editing(main)) { stale = true; main.classList.add("stale"); return; }  // typing began meanwhile
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
  // a refresh held back by a form: done once the form is left unchanged (a form sent loads a new page)
  document.addEventListener("focusout", function () {
    setTimeout(function () { if (stale && showingNow) { refresh(); } }, 0);
  });

  function onCommit(commit) {
    if (commit.seq <= seen) { return; }
    seen = commit.seq;
    setHead(commit.seq);
    if (showingNow) { refresh(); }
  }
  function setLive(on) { if (badge) { badge.hidden = !on; } }

  var url = new URL(body.dataset.events, window.location.href);
  var key = "memimg-inspector " + url.pathname;
  var channel = window.BroadcastChannel ? new BroadcastChannel(key) : null;
  var source = null, leading = false;

  function open() {
    url.searchParams.set("since", String(seen));
    source = new EventSource(url.toString());
    source.addEventListener("open", function () { setLive(true); tell({ type: "live", on: true, seq: seen }); });
    source.addEventListener("error", function () { setLive(false); tell({ type: "live", on: false, seq: seen }); });
    source.addEventListener("commit", function (event) {
      var commit = JSON.parse(event.data);
      tell({ type: "commit", commit: commit });
      onCommit(commit);
    });
  }
  function tell(message) { if (leading && channel) { channel.postMessage(message); } }

  if (channel && navigator.locks) {
    channel.addEventListener("message", function (event) {
      var m = event.data;
      if (m.type === "commit") { onCommit(m.commit); }
      else if (m.type === "live") { setLive(m.on); if (m.seq > seen) { onCommit({ seq: m.seq }); } }
      else if (m.type === "hello" && leading) {
        channel.postMessage({ type: "live", on: !!source && source.readyState === 1, seq: seen });
      }
    });
    channel.postMessage({ type: "hello" });
    navigator.locks.request(key, function () {  // held until this tab goes: then the next tab leads
      leading = true;
      open();
      return new Promise(function () {});
    });
  } else {
    open();
    document.addEventListener("visibilitychange", function () {
      if (document.hidden && source) { source.close(); source = null; setLive(false); }
      else if (!document.hidden && !source) { open(); }  // since= the last commit seen: none is missed
    });
  }
})();
