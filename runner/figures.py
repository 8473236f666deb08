"""The pictures a person looks at to judge a run, logged with `mlflow.log_figure`: learning curves,
the confusion matrix and misclassified test images, the per-class precision / recall / F1 as an
MLflow table, the model graph; and on a sweep's parent, every job's validation curve overlaid.

matplotlib's object API (`Figure`), not pyplot: no global state, no GUI backend,
and a figure is freed when it goes out of scope.
"""

import shutil

import mlflow
import numpy as np
from matplotlib.figure import Figure

GRID = 25  # misclassified images shown (5 x 5)


def log_run_figures(history, x, y, probs, model):
    """Every figure and the per-class table of one finished run."""
    predicted = probs.argmax(axis=-1)
    classes = probs.shape[-1]
    if history:
        mlflow.log_figure(learning_curves(history), "figures/learning_curves.png")
    matrix = confusion(y, predicted, classes)
    mlflow.log_figure(confusion_figure(matrix), "figures/confusion_matrix.png")
    wrong = np.flatnonzero(predicted != y)
    if len(wrong) and x.ndim >= 3:  # images: a grid; a table's rows are not pictures
        mlflow.log_figure(misclassified(x, y, predicted, wrong[:GRID]), "figures/misclassified.png")
    mlflow.log_table(per_class(matrix), "per_class.json")
    log_graph(model)


def learning_curves(history):
    """Loss and accuracy per epoch, train and validation, side by side."""
    fig = Figure(figsize=(9, 3.4), layout="constrained")
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
    fig = Figure(figsize=(min(4 + 0.35 * n, 14), min(3.5 + 0.35 * n, 13)), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(matrix, cmap="Blues")
    fig.colorbar(image, ax=ax, shrink=0.8)
    if n <= 20:  # beyond, numbers would overlap
        for (i, j), count in np.ndenumerate(matrix):
            ax.text(j, i, str(count), ha="center", va="center", fontsize=7,
                    color="white" if count > matrix.max() / 2 else "black")
    ax.set(xlabel="predicted", ylabel="true", title=f"confusion matrix (test, {matrix.sum()} examples)")
    return fig


def misclassified(x, y, predicted, indices):
    """The first misclassified test images, titled `true -> predicted`."""
    cols = 5
    rows = -(-len(indices) // cols)
    fig = Figure(figsize=(cols * 1.6, rows * 1.7), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    for ax in axes:
        ax.axis("off")
    for ax, i in zip(axes, indices):
        image = x[i].squeeze()
        ax.imshow(image, cmap="gray" if image.ndim == 2 else None)
        ax.set_title(f"{y[i]} → {predicted[i]}", fontsize=9, color="tab:red")
    fig.suptitle("misclassified test images: true → predicted")
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


def log_graph(model):
    """The model graph as a picture with Keras' plot_model where Graphviz and pydot are installed;
    otherwise a one-line note beside the text summary."""
    import importlib.util
    import tempfile

    if not shutil.which("dot") or importlib.util.find_spec("pydot") is None:
        mlflow.log_text("No model graph picture: install Graphviz (apt-get install graphviz) and pydot "
                        "(pip install pydot). The layers are in model_summary.txt.\n", "figures/model_graph.txt")
        return
    import keras

    with tempfile.TemporaryDirectory() as tmp:
        path = f"{tmp}/model_graph.png"
        keras.utils.plot_model(model, to_file=path, show_shapes=True, show_layer_names=True, dpi=72)
        mlflow.log_artifact(path, artifact_path="figures")


def sweep_curves(histories):
    """{label: [val_accuracy per epoch]} of a sweep's jobs, overlaid in one figure."""
    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.subplots()
    for label, values in histories.items():
        if values:
            ax.plot(np.arange(1, len(values) + 1), values, "-o", markersize=3, label=label[:60] or "(no overrides)")
    ax.set(xlabel="epoch", ylabel="val_accuracy", title="validation accuracy of every job")
    ax.grid(alpha=0.3)
    if histories:
        ax.legend(fontsize=7)
    return fig
