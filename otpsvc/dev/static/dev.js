// The otpsvc dev inbox: calls arrive by server-sent events (/dev/stream), no reload.
// The page's actions go to /dev/page/*, which act as the dev client on the server side.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const seen = new Set();
  let firstRender = true;
  const LANGUAGES = {
    en: "English", fr: "French", de: "German", uk: "Ukrainian", ar: "Arabic", pt: "Portuguese", es: "Spanish",
  };

  async function send(method, url, body) {
    const options = { method, headers: { Accept: "application/json" } };
    if (body !== undefined) {
      options.headers["Content-Type"] = "application/json";
      options.body = JSON.stringify(body);
    }
    const response = await fetch(url, options);
    const text = await response.text();
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch (e) { data = null; }
    return { status: response.status, data };
  }

  function show(element, ok, text) {
    element.textContent = text;
    element.className = "result " + (ok ? "ok" : "bad");
  }

  function problemText(result) {
    const data = result.data || {};
    let text = `${result.status} ${data.code || ""}: ${data.detail || "request failed"}`;
    if (data.errors) {
      text += " (" + Object.entries(data.errors).map(([f, m]) => `${f}: ${m.join(", ")}`).join("; ") + ")";
    }
    return text;
  }

  $("start-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = { phone: $("start-phone").value.trim(), mode: $("start-mode").value };
    if ($("start-locale").value) body.locale = $("start-locale").value;
    const out = $("start-result");
    out.textContent = "calling…";
    out.className = "result";
    const result = await send("POST", "/dev/page/start", body);
    if (result.status === 200 || result.status === 201) {
      const v = result.data;
      const verb = result.status === 201 ? "started" : "resent";
      const delivery = v.delivery && v.delivery.status ? `, delivery ${v.delivery.status}` : "";
      const digits = v.match ? `; show the person ${v.match}` : "";
      show(out, true, `${result.status}: verification ${v.id} ${verb} (${v.status}${delivery})${digits}`);
      $("check-id").value = v.id;
    } else {
      show(out, false, problemText(result));
    }
  });

  $("check-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const out = $("check-result");
    const body = { id: $("check-id").value.trim(), code: $("check-code").value.trim() };
    const result = await send("POST", "/dev/page/check", body);
    if (result.status === 200) {
      const v = result.data;
      if (v.valid) {
        show(out, true, `approved: ${v.id}`);
      } else {
        show(out, false, `${v.status}: wrong code, ${v.attempts_remaining} attempt(s) left`);
      }
    } else {
      show(out, false, problemText(result));
    }
  });

  $("fault-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const out = $("fault-result");
    const body = { fault: $("fault-kind").value };
    const scope = document.querySelector('input[name="scope"]:checked').value;
    if (scope === "number") body.phone = $("fault-phone").value.trim();
    const result = await send("POST", "/dev/page/faults", body);
    if (result.status === 200) {
      show(out, true, scope === "number" ? `every call to ${body.phone}: ${body.fault}` : `the next call: ${body.fault}`);
    } else {
      show(out, false, problemText(result));
    }
  });

  $("fault-clear").addEventListener("click", async () => {
    const result = await send("DELETE", "/dev/page/faults");
    show($("fault-result"), result.status === 204, result.status === 204 ? "no faults" : problemText(result));
  });

  function speak(call) {
    if (!("speechSynthesis" in window)) return;
    window.speechSynthesis.cancel();
    const utterance = new SpeechSynthesisUtterance(call.text);
    utterance.lang = call.lang;
    const voice = window.speechSynthesis.getVoices().find((v) => v.lang && v.lang.startsWith(call.locale));
    if (voice) utterance.voice = voice;
    utterance.rate = 0.9;
    window.speechSynthesis.speak(utterance);
  }

  function button(label, onClick, extraClass) {
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = label;
    if (extraClass) b.className = extraClass;
    b.addEventListener("click", onClick);
    return b;
  }

  function element(tag, className, text) {
    const e = document.createElement(tag);
    if (className) e.className = className;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function card(call) {
    const key = `${call.verification_id}:${call.send}:${call.at}`;
    const li = element("li", "call");
    li.dataset.id = call.verification_id;
    li.dataset.status = call.status;
    if (!firstRender && !seen.has(key)) li.classList.add("new");
    seen.add(key);

    const head = element("div", "call-head");
    head.append(element("span", "phone", call.phone));
    head.append(element("span", `badge status ${call.status}`, call.status.replace(/_/g, " ")));
    if (call.fault) head.append(element("span", "badge fault", `fault: ${call.fault}`));
    if (call.delivery) head.append(element("span", "meta delivery", `delivery: ${call.delivery}`));
    const when = new Date(call.at).toLocaleTimeString();
    const language = LANGUAGES[call.locale] || call.locale;
    head.append(element("span", "meta", `${language} · ${call.channel === "sms" ? "SMS" : call.mode} · ${when} · send ${call.send} · client ${call.client} · script: ${call.template || "built-in"}`));
    li.append(head);

    const row = element("div", call.current ? "code-row" : "code-row older");
    if (call.mode === "code") {
      const code = element("span", "code", call.code);
      code.setAttribute("aria-label", `code ${call.code.split("").join(" ")}`);
      row.append(code);
      row.append(button("Copy code", async (event) => {
        try {
          await navigator.clipboard.writeText(call.code);
          event.target.textContent = "Copied";
        } catch (e) {
          event.target.textContent = "Copy failed";
        }
      }));
      row.append(button("Use in check form", () => {
        $("check-id").value = call.verification_id;
        $("check-code").value = call.code;
        $("check-code").focus();
      }, "secondary"));
    } else {
      const pressed = element("span", "meta press-result", call.pressed ? `pressed ${call.pressed}` : "");
      pressed.setAttribute("role", "status");
      const press = (key) => async () => {
        const result = await send("POST", "/dev/page/press", { id: call.verification_id, key });
        pressed.textContent = result.status === 200 ? `pressed ${key}: ${result.data.result}` : problemText(result);
      };
      if (call.mode === "match") {
        // The digits the app shows, and a keypad to key them as the person would on the call.
        if (call.match) {
          const shown = element("span", "code", call.match);
          shown.setAttribute("aria-label", `digits on screen ${call.match.split("").join(" ")}`);
          shown.title = "the digits the app shows on its screen";
          row.append(shown);
        }
        const keyed = element("input", "keypad");
        const id = `keypad-${call.verification_id}-${call.send}`;
        keyed.id = id;
        keyed.inputMode = "numeric";
        keyed.maxLength = 2;
        keyed.autocomplete = "off";
        keyed.pattern = "[0-9]{2}";
        const label = element("label", "meta", "Keys");
        label.htmlFor = id;
        row.append(label, keyed);
        row.append(button("Key digits", async () => press(keyed.value.trim())()));
      } else {
        row.append(button("Press 1 (it was me)", press("1")));
      }
      row.append(button("Press 9 (it was not me)", press("9"), "secondary"));
      row.append(pressed);
    }
    const listen = button("Listen", () => speak(call), "secondary listen");
    if (!("speechSynthesis" in window)) {
      listen.disabled = true;
      listen.title = "this browser has no speech synthesis";
    }
    row.append(listen);
    li.append(row);

    const spoken = element("p", "spoken", call.text);
    spoken.lang = call.lang;
    li.append(spoken);
    li.append(element("p", "meta", `verification ${call.verification_id}${call.current ? "" : " (an older send: its code no longer works)"}`));
    return li;
  }

  function render(snapshot) {
    const list = $("calls");
    const cards = snapshot.calls.map(card);
    list.replaceChildren(...cards);
    $("no-calls").hidden = cards.length > 0;
    $("calls-count").textContent = cards.length ? `(${cards.length})` : "";
    if (snapshot.client) $("client-name").textContent = snapshot.client;
    firstRender = false;
  }

  function connect() {
    const live = $("live");
    const source = new EventSource("/dev/stream");
    source.addEventListener("open", () => {
      live.classList.add("on");
      $("live-text").textContent = "live";
    });
    source.addEventListener("error", () => {
      live.classList.remove("on");
      $("live-text").textContent = "reconnecting…";
    });
    source.addEventListener("calls", (event) => render(JSON.parse(event.data)));
  }

  connect();
})();
