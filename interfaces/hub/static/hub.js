// Shared by the hub pages: the token (kept in this browser only) and a fetch wrapper.
// Every /api and /files call needs the token: fetches send it as a header; images and links get it
// from the HttpOnly cookie POST /api/session sets. Pages reload their data on the "hubtoken" event.
const Hub = {
  token() { return localStorage.getItem("hubToken") || ""; },
  async setToken(v) {
    localStorage.setItem("hubToken", v.trim());
    Hub.session = Hub.api("/api/session", { method: "POST" });
    await Hub.session;
    document.dispatchEvent(new Event("hubtoken"));
  },
  session: Promise.resolve(),
  async api(path, opts = {}) {
    if (path !== "/api/session") await Hub.session;  // the cookie the page's images need is set first
    const headers = Object.assign({}, opts.headers || {});
    if (Hub.token()) headers["Authorization"] = "Bearer " + Hub.token();
    const res = await fetch(path, Object.assign({}, opts, { headers }));
    let body = null;
    try { body = await res.json(); } catch (e) { body = null; }
    return { status: res.status, ok: res.ok, body };
  },
  detail(r) {
    if (!r.body) return "HTTP " + r.status;
    if (r.body.error) return r.body.error.code + ": " + r.body.error.message;
    const d = r.body.detail;
    return typeof d === "string" ? d : JSON.stringify(d);
  },
  el(tag, attrs = {}, text = "") {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    if (text !== "") e.textContent = text;
    return e;
  },
  // One navigation bar for every page, with the token box the page scripts read.
  renderNav() {
    const nav = document.getElementById("nav");
    for (const [href, label] of [["/", "Generate"], ["/influencer", "Insights"], ["/pipeline", "Pipeline"], ["/review", "Review"], ["/docs", "API"]])
      nav.appendChild(Hub.el("a", { href }, label));
    const label = Hub.el("label", {}, "hub token ");
    label.appendChild(Hub.el("input", { id: "token", type: "password", size: "24", autocomplete: "off" }));
    nav.appendChild(label);
    Hub.initToken();
  },
  // Form fields marked data-option="stage.field" get the option's default (as value, or with
  // data-fill="placeholder" as the hint of an empty field that means "the default"), bounds and help
  // from GET /api/options: the options models are their one place.
  async fillOptions() {
    const res = await fetch("/api/options");
    if (!res.ok) return;
    const stages = await res.json();
    for (const input of document.querySelectorAll("[data-option]")) {
      const [stage, field] = input.dataset.option.split(".");
      const o = (stages[stage] || {})[field];
      if (!o) continue;
      const shown = o.default === null ? "none" : String(o.default);
      if (input.dataset.fill === "placeholder") input.placeholder = shown;
      else if (input.value === "") input.value = shown;
      if (o.minimum !== undefined) input.min = o.minimum;
      if (o.maximum !== undefined) input.max = o.maximum;
      if (o.help) input.title = o.help;
    }
    document.dispatchEvent(new Event("huboptions"));
  },
  initToken() {
    const input = document.getElementById("token");
    input.value = Hub.token();
    input.addEventListener("change", () => Hub.setToken(input.value));
    if (Hub.token()) Hub.session = Hub.api("/api/session", { method: "POST" });
  },
};
