/*
 * Charts of the Warmup Portal admin, drawn with Chart.js (served locally, static/vendor/chartjs).
 *
 * Each <canvas data-wp-chart="KIND" data-wp-source="ID"> reads its figures from the json_script
 * element with that id: "plan-volume" (daily quota vs sent), "plan-rates" (bounce and complaint
 * rates vs thresholds, with pause markers) and "capacity" (dashboard: sent per day and forecast).
 */
(function () {
  "use strict";

  var COLORS = {
    quota: "#417690",
    sent: "#79aec8",
    bounce: "#c0392b",
    complaint: "#8e44ad",
    capacity: "#2e7d32",
    pause: "#ba2121",
  };

  // Vertical dashed lines at the dates of pauses (options.plugins.wpPauseMarkers.markers).
  var pauseMarkers = {
    id: "wpPauseMarkers",
    afterDatasetsDraw: function (chart, args, options) {
      var markers = (options && options.markers) || [];
      if (!markers.length) return;
      var labels = chart.data.labels;
      var x = chart.scales.x;
      var area = chart.chartArea;
      var ctx = chart.ctx;
      ctx.save();
      ctx.strokeStyle = COLORS.pause;
      ctx.fillStyle = COLORS.pause;
      ctx.setLineDash([4, 3]);
      ctx.font = "11px sans-serif";
      markers.forEach(function (marker) {
        var index = labels.indexOf(marker.date);
        if (index < 0) return;
        var px = x.getPixelForValue(index);
        ctx.beginPath();
        ctx.moveTo(px, area.top);
        ctx.lineTo(px, area.bottom);
        ctx.stroke();
        ctx.fillText(marker.label, px + 3, area.top + 10);
      });
      ctx.restore();
    },
  };

  function line(label, data, color, extra) {
    var dataset = {
      label: label,
      data: data,
      borderColor: color,
      backgroundColor: color,
      pointRadius: 0,
      borderWidth: 2,
      spanGaps: false,
      tension: 0,
    };
    return Object.assign(dataset, extra || {});
  }

  function constant(value, length) {
    var values = [];
    for (var i = 0; i < length; i++) values.push(value);
    return values;
  }

  var builders = {
    "plan-volume": function (d) {
      return {
        type: "line",
        data: {
          labels: d.labels,
          datasets: [
            line("Daily quota", d.quota, COLORS.quota, { stepped: true }),
            { type: "bar", label: "Sent", data: d.sent, backgroundColor: COLORS.sent },
          ],
        },
        options: {
          animation: false,
          interaction: { mode: "index", intersect: false },
          scales: { y: { beginAtZero: true, title: { display: true, text: "messages" } } },
          plugins: { wpPauseMarkers: { markers: d.pauses } },
        },
      };
    },
    "plan-rates": function (d) {
      var n = d.labels.length;
      return {
        type: "line",
        data: {
          labels: d.labels,
          datasets: [
            line("Bounce rate %", d.bounce_rate, COLORS.bounce, { yAxisID: "y", pointRadius: 2 }),
            line("Bounce threshold %", constant(d.max_bounce_rate, n), COLORS.bounce, {
              yAxisID: "y", borderDash: [6, 4], borderWidth: 1,
            }),
            line("Complaint rate %", d.complaint_rate, COLORS.complaint, { yAxisID: "y1", pointRadius: 2 }),
            line("Complaint threshold %", constant(d.max_spam_rate, n), COLORS.complaint, {
              yAxisID: "y1", borderDash: [6, 4], borderWidth: 1,
            }),
          ],
        },
        options: {
          animation: false,
          interaction: { mode: "index", intersect: false },
          scales: {
            y: { beginAtZero: true, position: "left", title: { display: true, text: "bounce %" } },
            y1: {
              beginAtZero: true, position: "right", grid: { drawOnChartArea: false },
              title: { display: true, text: "complaint %" },
            },
          },
          plugins: { wpPauseMarkers: { markers: d.pauses } },
        },
      };
    },
    capacity: function (d) {
      return {
        type: "line",
        data: {
          labels: d.labels,
          datasets: [
            { type: "bar", label: "Sent per day (consolidated)", data: d.sent, backgroundColor: COLORS.sent },
            line("Forecast daily capacity (with planned additions)", d.capacity, COLORS.capacity, { stepped: true }),
          ],
        },
        options: {
          animation: false,
          interaction: { mode: "index", intersect: false },
          scales: { y: { beginAtZero: true, title: { display: true, text: "messages/day" } } },
        },
      };
    },
  };

  function draw() {
    if (typeof window.Chart === "undefined") return;
    window.Chart.register(pauseMarkers);
    document.querySelectorAll("canvas[data-wp-chart]").forEach(function (canvas) {
      var build = builders[canvas.dataset.wpChart];
      var source = document.getElementById(canvas.dataset.wpSource);
      if (!build || !source) return;
      new window.Chart(canvas, build(JSON.parse(source.textContent)));
    });
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", draw);
  } else {
    draw();
  }
})();
