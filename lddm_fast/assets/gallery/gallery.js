// Renders window.LDDM_GALLERY (gallery/data.js) one page at a time. Every value from
// the data goes into textContent or a src attribute, never into HTML.
(function () {
  "use strict";
  const data = window.LDDM_GALLERY || { title: "", pageSize: 48, cards: [], contactSheets: {} };
  const $ = (id) => document.getElementById(id);

  function readState() {
    const params = new URLSearchParams(location.hash.slice(1));
    return {
      cls: params.get("class") || "all",
      status: params.get("status") || "all",
      page: Math.max(1, parseInt(params.get("page") || "1", 10) || 1),
      selftest: params.has("selftest"),
    };
  }

  function writeState(state) {
    const params = new URLSearchParams();
    params.set("class", state.cls);
    params.set("status", state.status);
    params.set("page", String(state.page));
    if (state.selftest) params.set("selftest", "1");
    location.hash = params.toString();
  }

  function el(tag, text, className) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (className) node.className = className;
    return node;
  }

  function media(card) {
    const box = el("div", null, "media");
    if (card.image) {
      const img = el("img");
      img.src = card.image;
      img.alt = "input image";
      img.title = "input image";
      box.appendChild(img);
    }
    if (card.mp4) {
      const video = el("video");
      // The media fragment makes the browser fetch and show the first frames.
      video.src = card.mp4 + "#t=0.05";
      video.muted = true;
      video.loop = true;
      video.controls = true;
      video.preload = "metadata";
      video.playsInline = true;
      if (card.gif) {
        // A browser without an H.264 decoder shows the gif instead.
        video.addEventListener("error", () => {
          const gif = el("img");
          gif.src = card.gif;
          gif.alt = "video (gif)";
          video.replaceWith(gif);
        });
      }
      box.appendChild(video);
    } else if (card.gif) {
      const gif = el("img");
      gif.src = card.gif;
      gif.alt = "video (gif)";
      box.appendChild(gif);
    }
    return box;
  }

  function renderCard(card) {
    const node = el("article", null, "card " + card.status);
    node.dataset.status = card.status;
    node.dataset.cls = card["class"] || "unlabeled";
    node.appendChild(media(card));
    const name = card.k === null || card.k === undefined ? card.input : card.input + "  k=" + card.k;
    node.appendChild(el("p", name, "name"));
    node.appendChild(el("p", "class: " + (card["class"] || "none"), "meta"));
    if (card.status === "finished") {
      node.appendChild(el("p", "seed: " + card.seed, "meta"));
      const model = el("p", "model: " + card.model.replace(/^(sha256:[0-9a-f]{12})[0-9a-f]+$/, "$1…"), "meta");
      model.title = card.model;
      node.appendChild(model);
      node.appendChild(el("p", card.settings, "meta"));
      const links = el("p", null, "meta");
      for (const file of card.files) {
        const a = el("a", decodeURIComponent(file.split("/").pop()));
        a.href = file;
        links.appendChild(a);
        links.appendChild(document.createTextNode(" "));
      }
      node.appendChild(links);
    } else {
      node.appendChild(el("p", card.status + " (" + card.settings + "): " + card.reason, "meta reason"));
    }
    return node;
  }

  function matches(card, state) {
    const cls = card["class"] || "unlabeled";
    return (state.cls === "all" || cls === state.cls) &&
      (state.status === "all" || card.status === state.status);
  }

  function render() {
    const state = readState();
    const chosen = data.cards.filter((c) => matches(c, state));
    const pages = Math.max(1, Math.ceil(chosen.length / data.pageSize));
    state.page = Math.min(state.page, pages);
    const start = (state.page - 1) * data.pageSize;
    const cards = $("cards");
    cards.replaceChildren(...chosen.slice(start, start + data.pageSize).map(renderCard));
    $("class-filter").value = state.cls;
    $("status-filter").value = state.status;
    $("page-label").textContent = "page " + state.page + " of " + pages + " (" + chosen.length + " cards)";
    $("prev").disabled = state.page <= 1;
    $("next").disabled = state.page >= pages;
    document.body.dataset.page = String(state.page);
    document.body.dataset.shown = String(cards.children.length);
    if (state.selftest) selftest();
  }

  // For tests in a headless browser: play the first video and record the outcome.
  function selftest() {
    const video = document.querySelector("video");
    if (!video) { document.body.dataset.played = "no video"; return; }
    video.addEventListener("timeupdate", () => {
      if (video.currentTime > 0) document.body.dataset.played = "yes";
    });
    video.addEventListener("error", () => {
      document.body.dataset.played = "error " + (video.error ? video.error.code : "?");
    });
    video.play().catch((e) => { document.body.dataset.played = "refused " + e.name; });
  }

  function setup() {
    $("title").textContent = "lddm_fast gallery: " + data.title;
    const finished = data.cards.filter((c) => c.status === "finished").length;
    $("summary").textContent = finished + " videos, " + (data.cards.length - finished) + " failures";
    const classes = Array.from(new Set(data.cards.map((c) => c["class"] || "unlabeled"))).sort();
    const select = $("class-filter");
    for (const value of ["all", ...classes]) {
      const option = el("option", value);
      option.value = value;
      select.appendChild(option);
    }
    for (const [label, url] of Object.entries(data.contactSheets)) {
      const figure = el("figure");
      const img = el("img");
      img.src = url;
      img.alt = "contact sheet " + label;
      figure.appendChild(img);
      figure.appendChild(el("figcaption", "contact sheet: " + label));
      $("sheets").appendChild(figure);
    }
    const change = (patch) => writeState({ ...readState(), ...patch });
    select.addEventListener("change", () => change({ cls: select.value, page: 1 }));
    $("status-filter").addEventListener("change", () => change({ status: $("status-filter").value, page: 1 }));
    $("prev").addEventListener("click", () => change({ page: readState().page - 1 }));
    $("next").addEventListener("click", () => change({ page: readState().page + 1 }));
    window.addEventListener("hashchange", render);
    render();
  }

  setup();
})();
