/* rappel click-to-call widget. Embed with one tag:
 *   <script src="https://rappel.example/widget.js" data-rappel-endpoint="https://rappel.example"></script>
 * It renders into the first element with a data-rappel-widget attribute, or right after the script tag.
 * Parts carry stable attributes: data-rappel="open", "phone", "when", "topic", "submit", "status", "cancel",
 * and, when the server takes calls from the browser, "call-browser", "hangup" (WebRTC: microphone, G.711) and
 * "keypad" with one "dtmf" button per key (data-digit; sent as RFC 4733 telephone-events with insertDTMF).
 * The current browser call's RTCPeerConnection is window.rappelPeer (for inspection).
 * Hand-written, no build step, no dependencies. */
(function () {
  "use strict";
  var script = document.currentScript;
  var endpoint = (script && script.getAttribute("data-rappel-endpoint")) || "";
  if (!endpoint && script && script.src) { endpoint = new URL(script.src, location.href).origin; }
  endpoint = endpoint.replace(/\/+$/, "");

  var LABELS = {
    scheduled: "Your callback is scheduled",
    queued: "You are in line for a callback",
    calling_visitor: "We are calling you now",
    confirming: "Please press 1 on your phone to confirm",
    holding: "Please hold, we are finding someone for you",
    calling_agent: "We are connecting you to an agent",
    connected: "You are connected",
    completed: "Thank you, the call is over",
    missed: "We could not reach you; we will call you back",
    cancelled: "Your callback was cancelled"
  };

  function el(tag, attrs, text) {
    var e = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) { e.setAttribute(k, attrs[k]); });
    if (text) { e.textContent = text; }
    return e;
  }

  function api(method, path, body) {
    var opts = { method: method, headers: {} };
    if (body !== undefined) {
      opts.headers["Content-Type"] = "application/json";
      opts.body = JSON.stringify(body);
    }
    return fetch(endpoint + path, opts).then(function (r) {
      return r.json().catch(function () { return {}; }).then(function (j) { return { status: r.status, body: j, headers: r.headers }; });
    });
  }

  function mount() {
    if (!document.querySelector('link[data-rappel="css"]')) {
      var css = el("link", { rel: "stylesheet", href: endpoint + "/widget.css", "data-rappel": "css" });
      document.head.appendChild(css);
    }
    var root = document.querySelector("[data-rappel-widget]");
    if (!root) {
      root = el("div", { "data-rappel-widget": "" });
      if (script && script.parentNode) { script.parentNode.insertBefore(root, script.nextSibling); } else { document.body.appendChild(root); }
    }
    root.classList.add("rappel-widget");

    var open = el("button", { type: "button", "data-rappel": "open", "aria-expanded": "false" }, "Call me back");
    var form = el("form", { "data-rappel": "form", hidden: "" });
    var phoneLabel = el("label", {}, "Your phone number");
    var phone = el("input", { type: "tel", name: "phone", autocomplete: "tel", required: "", placeholder: "+33 6 12 34 56 78", "data-rappel": "phone" });
    phoneLabel.appendChild(phone);
    var whenLabel = el("label", {}, "When (leave empty for now)");
    var when = el("input", { type: "datetime-local", name: "when", "data-rappel": "when" });
    whenLabel.appendChild(when);
    var topicLabel = el("label", {}, "Topic");
    var topic = el("input", { type: "text", name: "topic", maxlength: "64", "data-rappel": "topic" });
    topicLabel.appendChild(topic);
    var submit = el("button", { type: "submit", "data-rappel": "submit" }, "Call me");
    var hint = el("p", { "class": "rappel-hint" }, "We only use your number to call you back.");
    form.appendChild(phoneLabel); form.appendChild(whenLabel); form.appendChild(topicLabel);
    form.appendChild(submit); form.appendChild(hint);
    var status = el("div", { "data-rappel": "status", role: "status", "aria-live": "polite" });
    var cancel = el("button", { type: "button", "data-rappel": "cancel", hidden: "" }, "Cancel my callback");
    var callBrowser = el("button", { type: "button", "data-rappel": "call-browser", hidden: "" }, "Call from my browser");
    var hangup = el("button", { type: "button", "data-rappel": "hangup", hidden: "" }, "Hang up");
    var keypad = el("div", { "data-rappel": "keypad", role: "group", "aria-label": "Keypad", hidden: "" });
    "123456789*0#".split("").forEach(function (d) {
      var key = el("button", { type: "button", "data-rappel": "dtmf", "data-digit": d }, d);
      key.addEventListener("click", function () { sendDigits(d); });
      keypad.appendChild(key);
    });
    var audio = el("audio", { autoplay: "", "data-rappel": "audio" });
    root.appendChild(open); root.appendChild(callBrowser); root.appendChild(form); root.appendChild(status);
    root.appendChild(cancel); root.appendChild(hangup); root.appendChild(keypad); root.appendChild(audio);

    var settings = { topics: [], token_required: false };
    api("GET", "/api/widget-config").then(function (r) {
      if (r.status !== 200) { return; }
      settings = r.body;
      if (settings.browser_calls && window.RTCPeerConnection && navigator.mediaDevices) { callBrowser.removeAttribute("hidden"); }
      if (settings.topics && settings.topics.length) {
        var select = el("select", { name: "topic", "data-rappel": "topic" });
        settings.topics.forEach(function (t) { select.appendChild(el("option", { value: t }, t)); });
        topicLabel.replaceChild(select, topic);
        topic = select;
      }
    }).catch(function () {});

    open.addEventListener("click", function () {
      var show = form.hasAttribute("hidden");
      if (show) { form.removeAttribute("hidden"); phone.focus(); } else { form.setAttribute("hidden", ""); }
      open.setAttribute("aria-expanded", String(show));
    });

    var current = null, timer = null, source = null;
    var pc = null, stream = null, browserCall = false;

    function setStatus(state, text) {
      status.setAttribute("data-state", state);
      status.textContent = text;
    }

    function render(v) {
      var text = (LABELS[v.state] || v.state) + " (" + v.state + ")";
      if (v.queue_position !== null && v.queue_position !== undefined) {
        text += " · position " + (v.queue_position + 1) + " in line";
      }
      if (v.estimated_wait_s !== null && v.estimated_wait_s !== undefined) {
        text += " · about " + Math.max(1, Math.round(v.estimated_wait_s / 60)) + " min";
      }
      if (v.state === "scheduled" && v.scheduled_at) {
        text += " · " + new Date(v.scheduled_at).toLocaleString();
      }
      setStatus(v.state, text);
      if (v["final"]) { stop(); endBrowserCall(); }
      if (v["final"] || v.state === "connected" || browserCall) { cancel.setAttribute("hidden", ""); } else { cancel.removeAttribute("hidden"); }
    }

    function refresh() {
      if (!current) { return; }
      api("GET", "/api/callbacks/" + encodeURIComponent(current)).then(function (r) {
        if (r.status === 200) { render(r.body); }
      }).catch(function () {});
    }

    function stop() {
      if (timer) { clearInterval(timer); timer = null; }
      if (source) { source.close(); source = null; }
    }

    function follow(id) {
      stop();
      current = id;
      refresh();
      timer = setInterval(refresh, 5000);
      if (window.EventSource) {
        source = new EventSource(endpoint + "/api/callbacks/" + encodeURIComponent(id) + "/events");
        source.addEventListener("state", refresh);
        source.onerror = function () { if (source) { source.close(); source = null; } };
      }
    }

    function token() {
      if (!settings.token_required) { return Promise.resolve(undefined); }
      return api("GET", "/api/token").then(function (r) { return r.body.token; });
    }

    form.addEventListener("submit", function (ev) {
      ev.preventDefault();
      submit.disabled = true;
      setStatus("sending", "Sending…");
      var body = { phone: phone.value, page: location.href };
      try { body.tz = Intl.DateTimeFormat().resolvedOptions().timeZone; } catch (e) { /* no time zone */ }
      if (when.value) { body.at = when.value; }
      if (topic.value) { body.topic = topic.value; }
      token().then(function (t) {
        if (t) { body.token = t; }
        return api("POST", "/api/callbacks", body);
      }).then(function (r) {
        submit.disabled = false;
        if (r.status === 201) {
          form.setAttribute("hidden", "");
          open.setAttribute("aria-expanded", "false");
          status.setAttribute("data-request", r.body.id);
          render({ state: r.body.state, scheduled_at: r.body.scheduled_at });
          follow(r.body.id);
        } else if (r.status === 429) {
          var after = r.headers.get("Retry-After");
          setStatus("error", (r.body.error || "Too many requests.") + (after ? " (" + after + " s)" : ""));
        } else {
          setStatus("error", r.body.error || ("Error " + r.status));
        }
      }).catch(function () {
        submit.disabled = false;
        setStatus("error", "The callback service cannot be reached.");
      });
    });

    /* Calls from the browser: the offer goes to POST /api/webrtc, the answer comes back with the request id;
     * from there the status is followed like a phone request's. */
    function endBrowserCall() {
      if (pc) { pc.close(); pc = null; window.rappelPeer = null; }
      if (stream) { stream.getTracks().forEach(function (t) { t.stop(); }); stream = null; }
      if (browserCall) { browserCall = false; hangup.setAttribute("hidden", ""); keypad.setAttribute("hidden", ""); callBrowser.disabled = false; }
    }

    /* DTMF (a menu, a PIN): RFC 4733 telephone-events on the audio stream; the server relays them to the agent. */
    function sendDigits(digits) {
      var sender = pc && pc.getSenders().filter(function (s) { return s.dtmf; })[0];
      /* insertDTMF replaces the tones not yet played: keep them (fast key presses). */
      if (sender && sender.dtmf.canInsertDTMF !== false) { sender.dtmf.insertDTMF(sender.dtmf.toneBuffer + digits, 100, 70); }
    }

    function gathered(peer) {
      return new Promise(function (resolve) {
        if (peer.iceGatheringState === "complete") { resolve(); return; }
        var done = false;
        function finish() { if (!done) { done = true; resolve(); } }
        peer.addEventListener("icegatheringstatechange", function () { if (peer.iceGatheringState === "complete") { finish(); } });
        setTimeout(finish, 2000);
      });
    }

    callBrowser.addEventListener("click", function () {
      if (browserCall) { return; }
      browserCall = true;
      callBrowser.disabled = true;
      hangup.removeAttribute("hidden");
      keypad.removeAttribute("hidden");
      setStatus("sending", "Starting your call…");
      navigator.mediaDevices.getUserMedia({ audio: true }).then(function (s) {
        stream = s;
        pc = new RTCPeerConnection();
        window.rappelPeer = pc;
        s.getTracks().forEach(function (t) { pc.addTrack(t, s); });
        var tr = pc.getTransceivers()[0];
        if (tr && tr.setCodecPreferences && window.RTCRtpReceiver && RTCRtpReceiver.getCapabilities) {
          /* G.711 for the voice, telephone-event at 8 kHz for the keypad (the server relays it as DTMF). */
          var g711 = RTCRtpReceiver.getCapabilities("audio").codecs.filter(function (c) {
            return /^audio\/(PCMU|PCMA)$/i.test(c.mimeType) || (/^audio\/telephone-event$/i.test(c.mimeType) && c.clockRate === 8000);
          });
          if (g711.some(function (c) { return !/telephone-event/i.test(c.mimeType); })) { tr.setCodecPreferences(g711); }
        }
        pc.ontrack = function (ev) {
          audio.srcObject = ev.streams[0] || new MediaStream([ev.track]);
          var p = audio.play(); if (p && p.catch) { p.catch(function () {}); }
        };
        pc.onconnectionstatechange = function () {
          if (pc && (pc.connectionState === "failed" || pc.connectionState === "closed")) { hangupNow(); }
        };
        return pc.createOffer();
      }).then(function (offer) { return pc.setLocalDescription(offer); })
        .then(function () { return gathered(pc); })
        .then(token)
        .then(function (t) {
          var body = { offer: pc.localDescription.sdp, page: location.href };
          if (t) { body.token = t; }
          if (topic.value) { body.topic = topic.value; }
          return api("POST", "/api/webrtc", body);
        }).then(function (r) {
          if (r.status === 201 && pc) {
            status.setAttribute("data-request", r.body.id);
            render({ state: r.body.state });
            follow(r.body.id);
            return pc.setRemoteDescription({ type: "answer", sdp: r.body.answer });
          }
          endBrowserCall();
          if (r.status === 429) {
            var after = r.headers.get("Retry-After");
            setStatus("error", (r.body.error || "Too many requests.") + (after ? " (" + after + " s)" : ""));
          } else {
            setStatus("error", r.body.error || ("Error " + r.status));
          }
        }).catch(function (e) {
          endBrowserCall();
          setStatus("error", (e && e.name === "NotAllowedError") ? "Microphone access was refused." : "The call could not be started.");
        });
    });

    function hangupNow() {
      var id = current;
      endBrowserCall();
      if (!id) { return; }
      var path = encodeURIComponent(id);
      /* Hang up the browser leg (the request ends as the visitor's hang-up); cancel if it is not up. */
      api("POST", "/api/webrtc/" + path + "/hangup").then(function (r) {
        if (r.status !== 200) { return api("DELETE", "/api/callbacks/" + path); }
      }).then(refresh, refresh);
    }

    hangup.addEventListener("click", hangupNow);

    cancel.addEventListener("click", function () {
      if (!current) { return; }
      api("DELETE", "/api/callbacks/" + encodeURIComponent(current)).then(refresh);
    });
  }

  if (document.readyState === "loading") { document.addEventListener("DOMContentLoaded", mount); } else { mount(); }
})();
