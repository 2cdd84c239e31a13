// The tenant H5 page: fills the server's shell from the tenant API (/api/v1/tenant/...) and pays.
// The payer token is an HttpOnly cookie this script never sees; every call carries the page header
// the API requires with that cookie (cloud/tenant_web/pages.py says why). Text goes in with
// textContent only. Money is integer fen throughout; yuan are only ever shown or parsed as text.
(function () {
  "use strict";

  var cfg = JSON.parse(document.getElementById("mf-config").textContent);
  var T = JSON.parse(document.getElementById("mf-texts").textContent);
  var POLL_MS = 1500;
  var WATCH_MS = 120000; // after a payment, follow the account this long for the credit and the relay
  var watchUntil = 0;
  var pollTimer = null;
  var $ = function (id) { return document.getElementById(id); };

  function ApiError(status, detail) { this.status = status; this.message = detail; }

  function api(method, path, body) {
    var headers = {};
    headers[cfg.header] = "1";
    var options = { method: method, credentials: "same-origin", headers: headers };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      options.body = JSON.stringify(body);
    }
    return fetch(cfg.api + path, options).then(function (r) {
      if (r.status === 204) { return null; }
      return r.json().catch(function () { return null; }).then(function (data) {
        if (!r.ok) {
          var detail = data && typeof data.detail === "string" ? data.detail : "HTTP " + r.status;
          throw new ApiError(r.status, detail);
        }
        return data;
      });
    });
  }

  function yuan(fen) {
    var sign = fen < 0 ? "-" : "";
    var abs = Math.abs(fen);
    var cents = String(abs % 100);
    return sign + String(Math.floor(abs / 100)) + "." + (cents.length < 2 ? "0" + cents : cents);
  }

  function toFen(text) {
    // "12", "12.5", "12.34" yuan -> fen, by digits (no floating point); null when not an amount
    var m = /^\s*(\d{1,4})(?:\.(\d{1,2}))?\s*$/.exec(text);
    if (!m) { return null; }
    var frac = m[2] ? (m[2].length === 1 ? Number(m[2]) * 10 : Number(m[2])) : 0;
    var fen = Number(m[1]) * 100 + frac;
    return fen >= 100 && fen <= 500000 ? fen : null;
  }

  function when(iso) {
    var d = new Date(iso);
    var pad = function (n) { return (n < 10 ? "0" : "") + n; };
    return d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) + " " +
      pad(d.getHours()) + ":" + pad(d.getMinutes());
  }

  function status(text) { $("status").textContent = text; $("status").hidden = !text; }

  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) { node.className = cls; }
    if (text !== undefined) { node.textContent = text; }
    return node;
  }

  // --- the account card -------------------------------------------------------------------------

  function cardOf(id) { return document.querySelector('article[data-account="' + id + '"]'); }

  function fillAccount(card, a) {
    card.querySelector(".number").textContent = a.number;
    card.querySelector(".project").textContent = a.project;
    card.querySelector(".balance").textContent = yuan(a.balance_fen);
    card.dataset.balance = String(a.balance_fen);
    card.querySelector(".days").textContent =
      a.days_left === null ? T.days_unknown : T.days_left.replace("{n}", String(a.days_left));
    var list = card.querySelector(".meters");
    list.textContent = "";
    a.meters.forEach(function (m) {
      var item = el("li", "meter");
      item.dataset.supply = m.supply;
      item.appendChild(el("span", "device", m.device_id + " · " + T.supply + ": "));
      item.appendChild(el("strong", "supply supply-" + m.supply, T["supply_" + m.supply] || T.supply_unknown));
      list.appendChild(item);
    });
  }

  function drawUsage(card, periods) {
    var box = card.querySelector(".chart");
    box.textContent = "";
    if (!periods.length) { box.appendChild(el("p", "hint", T.empty)); return; }
    var ns = "http://www.w3.org/2000/svg";
    var w = 300, h = 100, gap = 2;
    var max = Math.max.apply(null, periods.map(function (p) { return p.charged_fen; }).concat([1]));
    var svg = document.createElementNS(ns, "svg");
    svg.setAttribute("viewBox", "0 0 " + w + " " + (h + 14));
    svg.setAttribute("class", "usage");
    svg.setAttribute("role", "img");
    var bw = w / periods.length;
    periods.forEach(function (p, i) {
      var bh = Math.round((p.charged_fen / max) * h);
      var r = document.createElementNS(ns, "rect");
      r.setAttribute("x", String(i * bw + gap / 2));
      r.setAttribute("y", String(h - bh));
      r.setAttribute("width", String(Math.max(1, bw - gap)));
      r.setAttribute("height", String(bh));
      var tip = document.createElementNS(ns, "title");
      tip.textContent = p.period + ": " + yuan(p.charged_fen);
      r.appendChild(tip);
      svg.appendChild(r);
    });
    [[0, "start"], [periods.length - 1, "end"]].forEach(function (pair) {
      var t = document.createElementNS(ns, "text");
      t.setAttribute("x", pair[1] === "start" ? "0" : String(w));
      t.setAttribute("y", String(h + 12));
      t.setAttribute("text-anchor", pair[1]);
      t.textContent = periods[pair[0]].period;
      svg.appendChild(t);
    });
    box.appendChild(svg);
  }

  function fillRows(list, rows, render) {
    list.textContent = "";
    if (!rows.length) { list.appendChild(el("li", "hint", T.empty)); return; }
    rows.forEach(function (row) { list.appendChild(render(row)); });
  }

  function statementRow(e) {
    var li = el("li");
    li.appendChild(el("span", "at", when(e.at)));
    li.appendChild(el("span", "what", (T["kind_" + e.kind] || e.kind) + (e.memo ? " · " + e.memo : "")));
    li.appendChild(el("span", "amount" + (e.amount_fen < 0 ? " out" : " in"), yuan(e.amount_fen)));
    return li;
  }

  function orderRow(o) {
    var li = el("li");
    li.dataset.order = o.out_trade_no;
    li.dataset.state = o.state;
    li.appendChild(el("span", "at", when(o.created_at)));
    li.appendChild(el("span", "what", T["state_" + o.state] || o.state));
    li.appendChild(el("span", "amount in", yuan(o.amount_fen)));
    return li;
  }

  function refreshDetails(card, id) {
    return Promise.all([
      api("GET", "/accounts/" + id + "/usage?by=day&periods=30").then(function (u) { drawUsage(card, u); }),
      api("GET", "/accounts/" + id + "/statement?limit=20").then(function (rows) {
        fillRows(card.querySelector(".statement"), rows, statementRow);
      }),
      api("GET", "/accounts/" + id + "/orders?limit=10").then(function (rows) {
        fillRows(card.querySelector(".orders"), rows, orderRow);
      }),
    ]);
  }

  function makeCard(a) {
    var card = $("account-card").content.firstElementChild.cloneNode(true);
    card.dataset.account = String(a.id);
    fillAccount(card, a);
    card.querySelector("form.recharge").addEventListener("submit", function (ev) {
      ev.preventDefault();
      recharge(card, a.id, ev.target);
    });
    card.querySelector(".unbind").addEventListener("click", function () {
      if (!window.confirm(T.unbind + " " + a.number + "?")) { return; }
      api("DELETE", "/accounts/" + a.id + "/binding").then(load, fail);
    });
    return card;
  }

  // --- paying ---------------------------------------------------------------------------------------

  function bridge() {
    // inside WeChat the JS bridge may arrive after the page: wait for it (a normal browser has none)
    if (window.WeixinJSBridge) { return Promise.resolve(window.WeixinJSBridge); }
    if (!/MicroMessenger/i.test(navigator.userAgent)) { return Promise.resolve(null); }
    return new Promise(function (resolve) {
      document.addEventListener("WeixinJSBridgeReady", function () { resolve(window.WeixinJSBridge); }, false);
    });
  }

  function pay(params) {
    // "ok", "cancel", or a failure text
    return bridge().then(function (jsBridge) {
      if (jsBridge) {
        return new Promise(function (resolve) {
          jsBridge.invoke("getBrandWCPayRequest", params, function (res) {
            var msg = String((res && res.err_msg) || "");
            resolve(/:ok$/.test(msg) ? "ok" : /:cancel$/.test(msg) ? "cancel" : msg || "fail");
          });
        });
      }
      if (!cfg.sim_pay) { return T.pay_unavailable; }
      // a normal browser against the WeChat Pay simulator: what the phone's cashier would do
      return fetch(cfg.sim_pay, {
        method: "POST", credentials: "omit", headers: { "Content-Type": "application/json" },
        body: JSON.stringify(params),
      }).then(function (r) {
        return r.ok ? "ok" : r.json().then(function (d) { return (d && d.message) || "HTTP " + r.status; });
      });
    });
  }

  function recharge(card, id, form) {
    var line = form.querySelector(".pay-status");
    var button = form.querySelector("button.pay");
    var custom = form.elements.custom.value;
    var fen = custom ? toFen(custom) : Number(form.querySelector("input[name=amount]:checked").value);
    if (fen === null) { line.textContent = T.amount_invalid; return; }
    button.disabled = true;
    line.textContent = T.paying;
    api("POST", "/accounts/" + id + "/orders", { amount_fen: fen })
      .then(function (order) {
        return pay(order.pay).then(function (outcome) {
          if (outcome === "ok") {
            line.textContent = T.pay_waiting;
            card.dataset.waiting = order.out_trade_no;
            watchUntil = Date.now() + WATCH_MS;
            schedule(300);
          } else if (outcome === "cancel") {
            line.textContent = T.pay_cancelled;
          } else {
            line.textContent = T.pay_failed + outcome;
          }
        });
      })
      .catch(function (e) { line.textContent = T.error + e.message; })
      .then(function () { button.disabled = false; });
  }

  // --- following the account while something is in flight -------------------------------------------

  function busy() {
    if (document.querySelector(".meter[data-supply=restoring], .meter[data-supply=cutting]")) { return true; }
    if (Date.now() >= watchUntil) { return false; }
    return Boolean(document.querySelector("article[data-waiting]")) ||
      Boolean(document.querySelector(".meter[data-supply=off]"));
  }

  function schedule(ms) {
    if (pollTimer) { clearTimeout(pollTimer); }
    pollTimer = setTimeout(poll, ms);
  }

  function poll() {
    pollTimer = null;
    var cards = Array.prototype.slice.call(document.querySelectorAll("article[data-account]"));
    Promise.all(cards.map(function (card) {
      var id = card.dataset.account;
      return api("GET", "/accounts/" + id).then(function (a) {
        fillAccount(card, a);
        var waiting = card.dataset.waiting;
        if (!waiting) { return null; }
        return api("GET", "/accounts/" + id + "/orders?limit=10").then(function (rows) {
          fillRows(card.querySelector(".orders"), rows, orderRow);
          var mine = rows.filter(function (o) { return o.out_trade_no === waiting; })[0];
          if (mine && mine.state === "paid") {
            delete card.dataset.waiting;
            card.querySelector(".pay-status").textContent = T.paid;
            return refreshDetails(card, id);
          }
          return null;
        });
      });
    })).then(function () {
      if (busy()) { schedule(POLL_MS); }
    }, function (e) {
      status(T.error + e.message);
      schedule(POLL_MS * 4);
    });
  }

  // --- logging in and binding ----------------------------------------------------------------------

  function fail(e) { status(T.error + (e && e.message ? e.message : String(e))); }

  function show(section, visible) { $(section).hidden = !visible; }

  // a room code scanned before logging in travels through the login and is bound right after it
  function loginUrl() { return cfg.bind ? "login?bind=" + encodeURIComponent(cfg.bind) : "login"; }

  function load() {
    status(T.loading);
    return api("GET", "/accounts").then(function (accounts) {
      status("");
      show("login", false);
      $("logout").hidden = false;
      if (cfg.bind) {
        var code = cfg.bind;
        cfg.bind = "";
        return api("POST", "/bindings/qr", { code: code }).then(load, fail);
      }
      var box = $("accounts");
      box.textContent = "";
      accounts.forEach(function (a) {
        var card = makeCard(a);
        box.appendChild(card);
        refreshDetails(card, a.id).catch(fail);
      });
      box.hidden = accounts.length === 0;
      show("bind", accounts.length === 0);
      $("add-account").hidden = accounts.length === 0;
      if (busy()) { schedule(POLL_MS); }
      return null;
    }, function (e) {
      if (e.status !== 401) { fail(e); return; }
      status(cfg.login_error ? T.error + T.login : "");
      $("login-link").setAttribute("href", loginUrl());
      show("login", true);
      if (!cfg.login_error && /MicroMessenger/i.test(navigator.userAgent)) {
        window.location.assign(loginUrl()); // inside WeChat: straight to the silent authorisation
      }
    });
  }

  function formJson(form) {
    var out = {};
    Array.prototype.forEach.call(form.elements, function (input) {
      if (input.name) { out[input.name] = input.value.trim(); }
    });
    return out;
  }

  function bindWith(path) {
    return function (ev) {
      ev.preventDefault();
      api("POST", path, formJson(ev.target)).then(function () { ev.target.reset(); return load(); }, fail);
    };
  }

  document.addEventListener("DOMContentLoaded", function () {
    $("bind-qr").addEventListener("submit", bindWith("/bindings/qr"));
    $("bind-phone").addEventListener("submit", bindWith("/bindings/phone"));
    $("add-account").addEventListener("click", function () { show("bind", true); });
    $("logout").addEventListener("click", function () {
      var headers = {};
      headers[cfg.header] = "1";
      fetch("logout", { method: "POST", credentials: "same-origin", headers: headers })
        .then(function () { window.location.reload(); });
    });
    load();
  });
})();
