"""Plotly figures of evaluation runs, shared by the Evaluate page and the HTML report."""

from __future__ import annotations

import plotly.graph_objects as go

from backends.apps.labels import QUALITY_METRICS as QUALITY
from backends.apps.labels import metric_label
from backends.apps.labels import SYSTEM_COLOURS as COLOURS
from backends.apps.labels import title
from backends.apps.runs import EvalRun, FreshnessResult
from backends.core.types import Timings


def _layout(figure: go.Figure, heading: str, **extra) -> go.Figure:
    figure.update_layout(title=heading, height=340, margin=dict(l=10, r=10, t=50, b=10), **extra)
    figure.update_xaxes(automargin=True)  # long tick labels and axis titles get room instead of being clipped
    figure.update_yaxes(automargin=True)
    return figure


def metrics_chart(run: EvalRun) -> go.Figure:
    """Quality metrics per system, side by side."""
    figure, shown = go.Figure(), run.headline(QUALITY)
    for system, metrics in run.metrics.items():
        figure.add_bar(name=title(system), x=[metric_label(m) for m in shown], y=[metrics.get(m) or 0 for m in shown],
                       marker_color=COLOURS.get(system))
    return _layout(figure, "Answer quality (higher is better)", barmode="group", yaxis=dict(range=[0, 1]))


def latency_chart(run: EvalRun) -> go.Figure:
    """Distribution of total and first-token latency per system."""
    figure = go.Figure()
    for system in run.metrics:
        rows = run.rows_of(system)
        for stage in ("first_token", "total"):
            figure.add_box(y=[r.seconds(stage) for r in rows], name=f"{title(system)} · {stage}",
                           marker_color=COLOURS.get(system), boxpoints="all", jitter=0.3)
    return _layout(figure, "Latency per question (seconds)", showlegend=False)


def scatter_chart(run: EvalRun, metric: str = "f1") -> go.Figure:
    """Per question: the metric of the first system against the second."""
    systems = list(run.metrics)[:2]
    by_question = {}
    for row in run.rows:
        by_question.setdefault(row.question, {})[row.system] = getattr(row, metric)
    points = [(q, v.get(systems[0], 0), v.get(systems[-1], 0)) for q, v in by_question.items()]
    figure = go.Figure(go.Scatter(x=[p[1] for p in points], y=[p[2] for p in points], mode="markers",
                                  text=[p[0] for p in points], hovertemplate="%{text}<br>%{x:.2f} vs %{y:.2f}",
                                  marker=dict(size=9, color="#0f6e8c", opacity=0.7)))
    figure.add_shape(type="line", x0=0, y0=0, x1=1, y1=1, line=dict(dash="dot", color="#999"))
    return _layout(figure, f"{metric} per question: {title(systems[0])} vs {title(systems[-1])}",
                   xaxis=dict(title=title(systems[0]), range=[-0.05, 1.05]),
                   yaxis=dict(title=title(systems[-1]), range=[-0.05, 1.05]))


def freshness_chart(result: FreshnessResult) -> go.Figure:
    """Updated facts answered with the new value vs still with the old one."""
    figure = go.Figure()
    systems = list(result.systems)
    figure.add_bar(name="new fact (right)", x=[title(s) for s in systems], y=[result.systems[s].new for s in systems],
                   marker_color="#1b7f3b")
    figure.add_bar(name="old fact (stale)", x=[title(s) for s in systems], y=[result.systems[s].old for s in systems],
                   marker_color="#b3261e")
    return _layout(figure, f"Freshness: {result.questions} updated facts", barmode="group", yaxis_title="answers")


def experiment_chart(rows: list[dict], intervals: dict) -> go.Figure:
    """Gold contained per arm with its paired-bootstrap 95% interval."""
    arms = [r["arm"] for r in rows]
    means = [r["contains"] for r in rows]
    upper = [intervals.get(a, {}).get("high", m) - m for a, m in zip(arms, means)]
    lower = [m - intervals.get(a, {}).get("low", m) for a, m in zip(arms, means)]
    figure = go.Figure(go.Bar(x=arms, y=means, marker_color="#3b6ea8",
                              error_y=dict(type="data", symmetric=False, array=upper, arrayminus=lower)))
    return _layout(figure, "Gold answer contained, with 95% intervals", yaxis=dict(range=[0, 1]))


def curve_chart(points: list[tuple[int, float]]) -> go.Figure:
    """The fine-tuned arm's accuracy against the paraphrases per fact."""
    figure = go.Figure(go.Scatter(x=[k for k, _ in points], y=[v for _, v in points], mode="lines+markers"))
    return _layout(figure, "Fine-tuned: gold contained against K paraphrases", xaxis_title="K",
                   yaxis=dict(range=[0, 1]))


def stress_chart(stress: dict) -> go.Figure:
    """The retrieving arms' gold contained under each retrieval condition."""
    figure = go.Figure()
    for arm, results in stress.items():
        figure.add_bar(name=arm, x=list(results), y=list(results.values()))
    return _layout(figure, "Retrieval stress test: gold contained", barmode="group", yaxis=dict(range=[0, 1]))


STAGE_NAMES = {"embed": "embed", "retrieve": "retrieve", "prompt": "prompt", "first_token": "to first token",
               "generate": "generate"}


def stage_spans(timings: Timings) -> list[tuple[str, float, float]]:
    """(stage, start, end) in seconds from the question, one after the other, the last ending at the total
    (docs/latency.md): embed, retrieve, prompt, the wait for the first token (queue and prefill), generate."""
    embed_end = timings.embed
    retrieve_end = embed_end + timings.retrieve
    prompt_end = min(retrieve_end + timings.prompt, timings.first_token or timings.total)
    first = max(prompt_end, timings.first_token)
    return [("embed", 0.0, embed_end), ("retrieve", embed_end, retrieve_end), ("prompt", retrieve_end, prompt_end),
            ("first_token", prompt_end, first), ("generate", first, max(first, timings.total))]


def timeline_chart(timings: Timings, colour: str, x_max: float) -> go.Figure:
    """A waterfall of the stages on the shared time axis: each bar from its start to its end."""
    spans = stage_spans(timings)
    figure = go.Figure(go.Bar(
        base=[start for _, start, _ in spans], x=[end - start for _, start, end in spans],
        y=[STAGE_NAMES[name] for name, _, _ in spans], orientation="h", marker_color=colour,
        text=[f"{(end - start) * 1000:.0f} ms" for _, start, end in spans], textposition="auto",
        hovertemplate="%{y}: %{base:.2f} s to %{customdata:.2f} s<extra></extra>", customdata=[e for _, _, e in spans]))
    figure.update_layout(height=220, margin=dict(l=10, r=10, t=10, b=10),
                         yaxis=dict(autorange="reversed"), xaxis=dict(range=[0, x_max], title="seconds from the question"))
    return figure
