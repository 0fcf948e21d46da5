// Shared by the hub pages: the token (kept in this browser only) and a fetch wrapper.
const Hub = {
  token() { return localStorage.getItem("hubToken") || ""; },
  setToken(v) { localStorage.setItem("hubToken", v.trim()); },
  async api(path, opts = {}) {
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
    for (const [href, label] of [["/", "Generate"], ["/influencer", "Insights"], ["/pipeline", "Pipeline"], ["/docs", "API"]])
      nav.appendChild(Hub.el("a", { href }, label));
    const label = Hub.el("label", {}, "hub token ");
    label.appendChild(Hub.el("input", { id: "token", type: "password", size: "24", autocomplete: "off" }));
    nav.appendChild(label);
    Hub.initToken();
  },
  initToken() {
    const input = document.getElementById("token");
    input.value = Hub.token();
    input.addEventListener("change", () => Hub.setToken(input.value));
  },
};
