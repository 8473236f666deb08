"""The pictures a person looks at to judge a run, logged with `mlflow.log_figure`: learning curves,
the confusion matrix and misclassified test images, the per-class precision / recall / F1 as an
MLflow table, the model graph; and on a sweep's parent, every job's validation curve overlaid.

matplotlib's object API (`Figure`), not pyplot: no global state, no GUI backend,
and a figure is freed when it goes out of scope.
"""

import io
import shutil
from pathlib import Path

import mlflow
import numpy as np
from matplotlib.figure import Figure

GRID = 25  # misclassified images shown (5 x 5)
DPI = 80  # enough to read on a screen; each figure costs about a tenth of a second to draw


def draw_run_figures(history, images, y, probs, model, directory):
    """Draw every figure of one finished run as files under `directory`/figures; return the per-class
    table. No MLflow call: it runs in a thread beside the model's logging (MLflow's active run is
    per thread), and the caller logs the folder and the table."""
    predicted = probs.argmax(axis=-1)
    classes = probs.shape[-1]
    folder = Path(directory) / "figures"
    folder.mkdir(parents=True, exist_ok=True)
    if history:
        learning_curves(history).savefig(folder / "learning_curves.png")
    matrix = confusion(y, predicted, classes)
    confusion_figure(matrix).savefig(folder / "confusion_matrix.png")
    wrong = [i for i in np.flatnonzero(predicted != y)[:GRID] if i in images]  # {index: example} kept
    if wrong and images[wrong[0]].ndim >= 2:  # images: a grid; a table's rows are not pictures
        misclassified(np.stack([images[i] for i in wrong]), y[wrong], predicted[wrong]).savefig(
            folder / "misclassified.png")
    draw_graph(model, folder)
    return per_class(matrix)


def warm_up():
    """Draw one small figure with text: matplotlib loads its fonts and caches on the first drawing of
    a process (about 0.4 s), which `log_start` moves off the end of the run."""
    fig = Figure(figsize=(2, 1), dpi=DPI)
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], label="warm")
    ax.set(xlabel="x", title="t")
    ax.legend()
    fig.savefig(io.BytesIO(), format="png")


def log_drawn(directory, table):
    """Log what `draw_run_figures` drew, and the per-class table (MLflow shows it in the artifacts)."""
    mlflow.log_artifacts(str(directory))
    mlflow.log_table(table, "per_class.json")


def learning_curves(history):
    """Loss and accuracy per epoch, train and validation, side by side."""
    fig = Figure(figsize=(9, 3.4), dpi=DPI)
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.15, top=0.9, wspace=0.2)
    epochs = np.arange(1, len(history) + 1)
    for ax, name in zip(fig.subplots(1, 2), ("loss", "accuracy")):
        for key, style in ((name, "-o"), (f"val_{name}", "--s")):
            values = [h.get(key) for h in history]
            if any(v is not None for v in values):
                ax.plot(epochs, [np.nan if v is None else v for v in values], style, label=key, markersize=4)
        ax.set(xlabel="epoch", title=name)
        ax.grid(alpha=0.3)
        ax.legend()
    return fig


def confusion(y, predicted, classes):
    matrix = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(matrix, (y.astype(int), predicted.astype(int)), 1)
    return matrix


def confusion_figure(matrix):
    """Counts on the test split: rows the true class, columns the predicted one."""
    n = len(matrix)
    fig = Figure(figsize=(min(3 + 0.35 * n, 14), min(3 + 0.35 * n, 14)), dpi=DPI)
    ax = fig.subplots()
    ax.imshow(matrix, cmap="Blues")  # no colour bar: the counts are written in the cells
    if n <= 20:  # beyond, numbers would overlap
        for (i, j), count in np.ndenumerate(matrix):
            ax.text(j, i, str(count), ha="center", va="center", fontsize=7,
                    color="white" if count > matrix.max() / 2 else "black")
    ax.set(xlabel="predicted", ylabel="true", title=f"confusion matrix (test, {matrix.sum()} examples)")
    if n <= 20:
        ax.set(xticks=range(n), yticks=range(n))
    return fig


def misclassified(x, y, predicted, cols=5):
    """The misclassified test images `x` in one mosaic, each labelled `true → predicted`.

    One axes and one image: a grid of 25 axes costs half a second to draw.
    """
    indices = range(len(x))
    images = x.reshape(len(x), *x.shape[1:3], -1)[..., :3]
    images = images[..., 0] if images.shape[-1] != 3 else images
    height, width = images.shape[1:3]
    rows, pad = -(-len(indices) // cols), max(2, height // 8)
    top = max(6, height // 3)  # room for the label above each image
    mosaic = np.ones((rows * (height + top + pad), cols * (width + pad), *images.shape[3:]), dtype=np.float32)
    for n, image in enumerate(images):
        r, c = divmod(n, cols)
        mosaic[r * (height + top + pad) + top:][:height, c * (width + pad):][:, :width] = image
    fig = Figure(figsize=(cols * 1.4, rows * 1.6), dpi=DPI)
    ax = fig.add_axes((0, 0, 1, 0.93))
    ax.imshow(mosaic, cmap="gray" if mosaic.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
    for n, i in enumerate(indices):
        r, c = divmod(n, cols)
        ax.text(c * (width + pad) + width / 2, r * (height + top + pad) + top - 1, f"{y[i]} → {predicted[i]}",
                ha="center", va="bottom", fontsize=9, color="tab:red")
    ax.axis("off")
    fig.suptitle("misclassified test images: true → predicted", fontsize=10)
    return fig


def per_class(matrix):
    """{column: values}: precision, recall, F1 and support of each class (an MLflow table)."""
    true_positive = np.diag(matrix).astype(float)
    support, predicted = matrix.sum(axis=1), matrix.sum(axis=0)
    precision = np.divide(true_positive, predicted, out=np.zeros_like(true_positive), where=predicted > 0)
    recall = np.divide(true_positive, support, out=np.zeros_like(true_positive), where=support > 0)
    denominator = precision + recall
    f1 = np.divide(2 * precision * recall, denominator, out=np.zeros_like(true_positive), where=denominator > 0)
    return {"class": list(range(len(matrix))), "precision": np.round(precision, 4).tolist(),
            "recall": np.round(recall, 4).tolist(), "f1": np.round(f1, 4).tolist(), "support": support.tolist()}


def draw_graph(model, folder):
    """The model graph as a picture with Keras' plot_model where Graphviz and pydot are installed;
    otherwise a one-line note beside the text summary."""
    import importlib.util

    if not shutil.which("dot") or importlib.util.find_spec("pydot") is None:
        (Path(folder) / "model_graph.txt").write_text(
            "No model graph picture: install Graphviz (apt-get install graphviz) and pydot "
            "(pip install pydot). The layers are in model_summary.txt.\n")
        return
    import keras

    keras.utils.plot_model(model, to_file=str(Path(folder) / "model_graph.png"), show_shapes=True,
                           show_layer_names=True, dpi=72)


def sweep_curves(histories, metric):
    """{label: [[metric per epoch] of each seed]}: one line per point, the mean over its seeds, with a
    band of ± one standard deviation where it has several."""
    fig = Figure(figsize=(7, 4), dpi=DPI, layout="constrained")
    ax = fig.subplots()
    for label, runs in histories.items():
        runs = [r for r in runs if r]
        length = max((len(r) for r in runs), default=0)
        if not length:
            continue
        values = np.full((len(runs), length), np.nan)  # a seed stopped early (pruned, early stopping) ends its row
        for i, r in enumerate(runs):
            values[i, :len(r)] = r
        epochs, mean = np.arange(1, length + 1), np.nanmean(values, axis=0)
        (line,) = ax.plot(epochs, mean, "-o", markersize=3, label=f"{label[:60] or '(no overrides)'} (n={len(runs)})")
        if len(runs) > 1:
            columns = [c[~np.isnan(c)] for c in values.T]
            std = np.array([c.std(ddof=1) if len(c) > 1 else 0.0 for c in columns])
            ax.fill_between(epochs, mean - std, mean + std, color=line.get_color(), alpha=0.2)
    ax.set(xlabel="epoch", ylabel=metric, title=f"{metric} of every point: mean over its seeds ± 1 std")
    ax.grid(alpha=0.3)
    if ax.get_lines():
        ax.legend(fontsize=7)
    return fig


def sweep_points(rows, metric):
    """Each point's objective: its seeds as dots, their mean ± 1 std as a bar, best first from the top."""
    fig = Figure(figsize=(7, 1.2 + 0.35 * len(rows)), dpi=DPI, layout="constrained")
    ax = fig.subplots()
    for y, row in enumerate(rows):
        samples = row.get("samples") or []
        ax.plot(samples, [y] * len(samples), "o", color="0.6", markersize=4)
        if row.get(metric) is not None:
            ax.errorbar(row[metric], y, xerr=row.get(f"{metric}_std") or 0, fmt="D", color="C0", capsize=4)
    ax.set_yticks(range(len(rows)), [(r["overrides"] or "(no overrides)")[:50] for r in rows], fontsize=7)
    ax.invert_yaxis()
    ax.set(xlabel=metric, title=f"{metric} per point: seeds (dots), mean ± 1 std")
    ax.grid(alpha=0.3, axis="x")
    return fig


def parallel_coordinates(rows, keys, metric):
    """One line per job across the varied keys (each on its own axis: numbers in order, on a log scale
    when they span more than a decade, other values evenly spaced) to the objective, coloured by it."""
    axes = [*keys, metric]
    columns = []
    for key in keys:
        raw = [found.get(key) for found, _ in rows]
        columns.append(_positions(raw))
    values = [v for _, v in rows]
    columns.append(_positions(values))
    fig = Figure(figsize=(max(5, 1.6 * len(axes)), 4), dpi=DPI, layout="constrained")
    ax = fig.subplots()
    low, high = min(values), max(values)
    cmap = matplotlib_colormap()
    for j, value in enumerate(values):
        shade = (value - low) / (high - low) if high > low else 0.5
        ax.plot(range(len(axes)), [column[0][j] for column in columns], "-o", color=cmap(shade), alpha=0.7,
                markersize=3)
    for x, (positions, labels) in enumerate(columns):
        ax.axvline(x, color="0.7", linewidth=0.8)
        for y, label in labels:
            ax.text(x + 0.03, y, label, fontsize=6, va="center")
    ax.set_xticks(range(len(axes)), [a[-30:] for a in axes], fontsize=7)
    ax.set_yticks([])
    ax.set(title=f"every job: the varied keys against {metric}")
    return fig


def matplotlib_colormap():
    import matplotlib

    return matplotlib.colormaps["viridis"]


def _positions(raw):
    """(a position in [0, 1] per value, [(position, label)] to show) of one axis."""
    numbers = []
    for value in raw:
        try:
            numbers.append(float(value))
        except (TypeError, ValueError):
            numbers = None
            break
    if numbers is not None:
        scale = np.log10 if min(numbers) > 0 and max(numbers) > 10 * min(numbers) else (lambda v: v)
        scaled = [float(scale(v)) for v in numbers]
        low, high = min(scaled), max(scaled)
        spot = [(v - low) / (high - low) if high > low else 0.5 for v in scaled]
        shown = {n: p for n, p in zip(numbers, spot)}
        return spot, [(p, f"{n:.4g}") for n, p in sorted(shown.items())]
    levels = sorted({str(v) for v in raw})
    spot = {v: (i / (len(levels) - 1) if len(levels) > 1 else 0.5) for i, v in enumerate(levels)}
    return [spot[str(v)] for v in raw], [(spot[v], v[:20]) for v in levels]


def pareto(rows, names):
    """Two objectives: every point, the Pareto front joined and marked."""
    fig = Figure(figsize=(6, 4), dpi=DPI, layout="constrained")
    ax = fig.subplots()
    done = [r for r in rows if r.get(names[0]) is not None and r.get(names[1]) is not None]
    ax.plot([r[names[0]] for r in done], [r[names[1]] for r in done], "o", color="0.6", label="points")
    front = sorted((r for r in done if r.get("front") == "yes"), key=lambda r: r[names[0]])
    ax.plot([r[names[0]] for r in front], [r[names[1]] for r in front], "-D", color="C3", label="Pareto front")
    for r in front:
        ax.annotate((r["overrides"] or "(no overrides)")[:30], (r[names[0]], r[names[1]]), fontsize=6)
    ax.set(xlabel=names[0], ylabel=names[1], title="the Pareto front of the two objectives")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return fig


def log_sweep(client, parent_id, rows, columns, names, jobs_table=None, keys=()):
    """On a sweep's parent run: each point's objective with its spread, its mean curve over the seeds
    (an epoch metric), the Pareto front of two objectives, the varied keys against the objective
    (`jobs_table`: [(settings, value)] of the jobs), and the leaderboard as an MLflow table."""
    metric = names[0]
    if len(names) == 2:
        client.log_figure(parent_id, pareto(rows, names), "figures/pareto.png")
    if jobs_table and keys:
        client.log_figure(parent_id, parallel_coordinates(jobs_table, keys, metric), "figures/parallel_coordinates.png")
    client.log_figure(parent_id, sweep_points(rows, metric), f"figures/{metric}_per_point.png")
    if metric.startswith(("val_", "loss", "accuracy")):
        histories = {}
        for row in rows:
            histories[row["overrides"]] = [
                [v for _, v in sorted((m.step, m.value) for m in client.get_metric_history(job["run_id"], metric))]
                for job in row.get("ended", row["jobs"]) if job.get("run_id")]  # the seeds that ended well
        client.log_figure(parent_id, sweep_curves(histories, metric), f"figures/{metric}.png")
    client.log_table(parent_id, {c: [row.get(c) for row in rows] for c in columns}, "leaderboard.json")
