// Meterflow console: select-all on the room monitor and the usage curve (ECharts). Pages work without it.
document.addEventListener("DOMContentLoaded", () => {
  const all = document.getElementById("select-all");
  if (all) {
    all.addEventListener("change", () => {
      document.querySelectorAll("input.pick").forEach((box) => { box.checked = all.checked; });
    });
  }
  const curve = document.getElementById("curve");
  if (curve && window.echarts) {
    const series = JSON.parse(curve.dataset.series || "[]");
    const chart = window.echarts.init(curve);
    chart.setOption({
      tooltip: { trigger: "axis" },
      xAxis: { type: "time" },
      yAxis: { type: "value", scale: true },
      series: [{ type: "line", showSymbol: false, data: series.map(([t, v]) => [t, Number(v)]) }],
    });
    window.addEventListener("resize", () => chart.resize());
  }
});
