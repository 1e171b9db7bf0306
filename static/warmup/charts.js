/*
 * Charts of the Warmup Portal admin, drawn with Chart.js (served locally, static/vendor/chartjs).
 *
 * Each <canvas data-wp-chart="KIND" data-wp-source="ID"> reads its figures from the json_script
 * element with that id: "plan-volume" (daily quota vs sent), "plan-rates" (bounce and complaint
 * rates vs thresholds, with pause markers), and on the dashboard "history" (sent per consolidated day)
 * and "capacity" (forecast daily capacity). The plan charts' last date is today.
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
  // Up to this many dates every point is marked: a line of one or two points is otherwise invisible.
  var FEW_DATES = 14;
  // Each rate axis reaches past its threshold, by a different factor so that the two dashed threshold
  // lines never lie on the same height (nor on the chart's top edge).
  var BOUNCE_AXIS_FACTOR = 2;
  var COMPLAINT_AXIS_FACTOR = 1.5;

  function font() {
    var family = (window.Chart.defaults.font && window.Chart.defaults.font.family) || "sans-serif";
    return "11px " + family;
  }

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
      ctx.font = font();
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

  // A caption written on a horizontal line, just above it (dataset.wpLineLabel = {text, value, align}).
  var lineLabels = {
    id: "wpLineLabels",
    afterDatasetsDraw: function (chart) {
      var ctx = chart.ctx;
      var area = chart.chartArea;
      chart.data.datasets.forEach(function (dataset, index) {
        var caption = dataset.wpLineLabel;
        if (!caption || !chart.isDatasetVisible(index)) return;
        var y = chart.scales[dataset.yAxisID || "y"].getPixelForValue(caption.value);
        if (y < area.top || y > area.bottom) return;
        var right = caption.align === "right";
        ctx.save();
        ctx.fillStyle = dataset.borderColor;
        ctx.font = font();
        ctx.textAlign = right ? "right" : "left";
        ctx.textBaseline = "bottom";
        ctx.fillText(caption.text, right ? area.right - 6 : area.left + 6, y - 3);
        ctx.restore();
      });
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

  // The plan charts end today, whose figures are live rather than consolidated: say so on the axis.
  function planDateAxis(n) {
    return {
      offset: true,
      ticks: {
        callback: function (value) {
          var label = this.getLabelForValue(value);
          return value === n - 1 ? label + " (today)" : label;
        },
      },
    };
  }

  var builders = {
    "plan-volume": function (d) {
      var n = d.labels.length;
      var few = n <= FEW_DATES;
      return {
        type: "line",
        data: {
          labels: d.labels,
          datasets: [
            line("Daily quota", d.quota, COLORS.quota, {
              // "middle": a quota changes between two days' bars, never through one.
              stepped: "middle",
              // Every day marked when there are few; otherwise today's quota, the one in force now.
              pointRadius: function (context) {
                return few || context.dataIndex === n - 1 ? 4 : 0;
              },
              pointHoverRadius: 5,
              order: 0,
            }),
            {
              type: "bar", label: "Sent", data: d.sent, backgroundColor: COLORS.sent, order: 1,
              maxBarThickness: 48, minBarLength: 2,
            },
          ],
        },
        options: {
          animation: false,
          interaction: { mode: "index", intersect: false },
          scales: {
            x: planDateAxis(n),
            // Headroom above the highest quota, so that today's point is not drawn on the top edge.
            y: { beginAtZero: true, grace: "8%", title: { display: true, text: "messages" } },
          },
          plugins: { wpPauseMarkers: { markers: d.pauses } },
        },
      };
    },
    "plan-rates": function (d) {
      var n = d.labels.length;
      var points = n <= FEW_DATES ? 4 : 2;
      var bounceLimit = "Bounce threshold (" + d.max_bounce_rate + "%)";
      var complaintLimit = "Complaint threshold (" + d.max_spam_rate + "%)";
      return {
        type: "line",
        data: {
          labels: d.labels,
          datasets: [
            line("Bounce rate %", d.bounce_rate, COLORS.bounce, { yAxisID: "y", pointRadius: points }),
            line(bounceLimit, constant(d.max_bounce_rate, n), COLORS.bounce, {
              yAxisID: "y", borderDash: [6, 4], borderWidth: 1.5,
              wpLineLabel: { text: bounceLimit + ", left axis", value: d.max_bounce_rate, align: "left" },
            }),
            line("Complaint rate %", d.complaint_rate, COLORS.complaint, { yAxisID: "y1", pointRadius: points }),
            line(complaintLimit, constant(d.max_spam_rate, n), COLORS.complaint, {
              yAxisID: "y1", borderDash: [6, 4], borderWidth: 1.5,
              wpLineLabel: { text: complaintLimit + ", right axis", value: d.max_spam_rate, align: "right" },
            }),
          ],
        },
        options: {
          animation: false,
          interaction: { mode: "index", intersect: false },
          scales: {
            x: planDateAxis(n),
            y: {
              beginAtZero: true, position: "left", suggestedMax: d.max_bounce_rate * BOUNCE_AXIS_FACTOR,
              title: { display: true, text: "bounce %", color: COLORS.bounce },
              ticks: { color: COLORS.bounce },
            },
            y1: {
              beginAtZero: true, position: "right", suggestedMax: d.max_spam_rate * COMPLAINT_AXIS_FACTOR,
              grid: { drawOnChartArea: false },
              title: { display: true, text: "complaint %", color: COLORS.complaint },
              ticks: { color: COLORS.complaint },
            },
          },
          plugins: {
            wpPauseMarkers: { markers: d.pauses },
            // Lines in the legend, dashed for the thresholds, rather than filled boxes.
            legend: { labels: { usePointStyle: true, pointStyle: "line", pointStyleWidth: 28 } },
          },
        },
      };
    },
    history: function (d) {
      return {
        type: "bar",
        data: {
          labels: d.history_labels,
          datasets: [
            {
              type: "bar", label: "Sent per day (consolidated)", data: d.sent, backgroundColor: COLORS.sent,
              maxBarThickness: 32, minBarLength: 2,
            },
          ],
        },
        options: {
          animation: false,
          interaction: { mode: "index", intersect: false },
          scales: { y: { beginAtZero: true, title: { display: true, text: "messages/day" } } },
          aspectRatio: 1.6,  // half the dashboard's width each: a little taller than Chart.js's default
          plugins: { legend: { display: false } },  // one dataset, named by the heading above the chart
        },
      };
    },
    capacity: function (d) {
      return {
        type: "line",
        data: {
          labels: d.forecast_labels,
          datasets: [
            line("Forecast daily capacity (with planned additions)", d.capacity, COLORS.capacity, {
              stepped: true, pointRadius: d.forecast_labels.length <= FEW_DATES ? 4 : 0,
            }),
          ],
        },
        options: {
          animation: false,
          interaction: { mode: "index", intersect: false },
          scales: { y: { beginAtZero: true, grace: "5%", title: { display: true, text: "messages/day" } } },
          aspectRatio: 1.6,  // half the dashboard's width each: a little taller than Chart.js's default
          plugins: { legend: { display: false } },  // one dataset, named by the heading above the chart
        },
      };
    },
  };

  function draw() {
    if (typeof window.Chart === "undefined") return;
    window.Chart.register(pauseMarkers, lineLabels);
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
