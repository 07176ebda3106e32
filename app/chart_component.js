// The app's chart element (app/charts.py): one plotly figure, redrawn in place with Plotly.react.
//
// Streamlit calls this module's default export on every script run whose data for this element changed,
// with the same parentElement as long as the element keeps its key. Keeping one plot node and diffing the
// new figure into it is what makes a layer, head or query change cheap: st.plotly_chart re-creates the whole
// plot (Plotly.newPlot, ~0.2 s per chart here) because its element id includes the figure.
//
// data: {figure: plotly JSON string, config: plotly config, revision: content hash, clickable: bool,
//        plotlyUrl: path of the plotly.js bundle relative to the app's root (app/charts.plotly_bundle)}
// or {preload: true, plotlyUrl}: only start loading that bundle (app/charts.preload_plotly).
// The plot node carries data-want (the revision asked for) and data-drawn (the revision on screen), so tests
// and benchmarks can wait until every chart shows the current figure.

function appRoot() {
  // Streamlit's own bundle lives at <root>/static/js/index.*.js, whatever server.baseUrlPath is.
  const own = document.querySelector('script[src*="/static/js/index."]');
  return own ? new URL("../../", own.src) : new URL("./", document.baseURI);
}

function loadPlotly(relativeUrl) {
  // One load per bundle and page, shared by every chart element. Each bundle sets window.Plotly when it runs,
  // so the instance is taken at its onload and kept per bundle.
  const loads = (window.__refinerPlotly = window.__refinerPlotly || {});
  if (!loads[relativeUrl]) {
    loads[relativeUrl] = new Promise((resolve, reject) => {
      const script = document.createElement("script");
      script.src = new URL(relativeUrl, appRoot()).href;
      script.onload = () => resolve(window.Plotly);
      script.onerror = () => {
        delete loads[relativeUrl];  // a later run may try again
        reject(new Error("could not load plotly.js from " + script.src));
      };
      document.head.appendChild(script);
    });
  }
  return loads[relativeUrl];
}

export default function (component) {
  const { data, parentElement, setTriggerValue } = component;
  if (data.preload) {  // app/charts.preload_plotly: start the load, draw nothing
    loadPlotly(data.plotlyUrl).catch(() => undefined);
    // Take no room: an empty element would still get the page's gap above the title.
    const holder = parentElement.closest ? parentElement.closest('[data-testid="stElementContainer"]') : null;
    if (holder) holder.style.display = "none";
    return;
  }
  let node = parentElement.querySelector("div.refiner-chart");
  if (!node) {
    node = document.createElement("div");
    node.className = "refiner-chart";
    node.style.width = "100%";
    parentElement.appendChild(node);
  }
  node.dataset.want = data.revision;
  node.__trigger = setTriggerValue;  // the latest run's, used by the click handler bound once below
  if (node.dataset.drawn === data.revision) return;
  loadPlotly(data.plotlyUrl)
    .then((Plotly) => {
      if (node.dataset.want !== data.revision) return undefined;  // a newer figure arrived meanwhile
      const figure = JSON.parse(data.figure);
      if (node.__plotly && node.__plotly !== Plotly) {
        // This node was drawn by the other bundle (its figure's traces changed): start it afresh.
        node.__plotly.purge(node);
        node.__clickBound = false;
      }
      node.__plotly = Plotly;
      return Plotly.react(node, figure.data || [], figure.layout || {}, data.config || {}).then(() => {
        if (data.clickable && !node.__clickBound) {
          node.on("plotly_click", (event) => {
            const point = event.points && event.points[0];
            if (!point) return;
            node.__trigger("click", { curve_number: point.curveNumber, point_index: point.pointIndex,
                                      point_number: point.pointNumber });
          });
          node.__clickBound = true;
        }
        if (node.dataset.want === data.revision) node.dataset.drawn = data.revision;
      });
    })
    .catch((error) => {
      node.textContent = "This chart could not be drawn: " + error.message;
      node.dataset.drawn = "error";
    });
}
