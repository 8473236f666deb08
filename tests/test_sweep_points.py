"""sweep.points=FILE.yaml: exactly the file's points, the command line's other overrides on each; what a
bad file says."""

import pytest

from runner.errors import ConfigError
from runner.sweep import points


def test_a_points_file_is_run_exactly_with_the_command_lines_other_overrides(tmp_path):
    (tmp_path / "p.yaml").write_text("- [optimizer=adam, optimizer.learning_rate=0.001]\n"
                                     "- {optimizer: sgd, optimizer.learning_rate: 0.05, loop.batch_size: 64, loop.eager: true}\n")
    jobs = points.jobs(["sweep.points=p.yaml", "loop.epochs=3", "loop.batch_size=16"], "p.yaml", tmp_path)
    assert jobs == [
        ["sweep.points=p.yaml", "loop.epochs=3", "loop.batch_size=16", "optimizer=adam", "optimizer.learning_rate=0.001"],
        ["sweep.points=p.yaml", "loop.epochs=3", "loop.batch_size=64", "optimizer=sgd", "optimizer.learning_rate=0.05",
         "loop.eager=True"],  # as Hydra's grid writes a bool
    ]
    assert points.varying(jobs) == ["loop.batch_size", "optimizer", "optimizer.learning_rate", "loop.eager"]


def test_without_a_file_the_jobs_are_hydras_grid():
    assert points.jobs(["a=1,2", "b=x"]) == [["a=1", "b=x"], ["a=2", "b=x"]]


@pytest.mark.parametrize("text, overrides, message", [
    (None, [], "no file .*nope.yaml; give a YAML list of points"),
    ("a: 1\n", [], "must hold a non-empty YAML list of points"),
    ("[]\n", [], "must hold a non-empty YAML list of points"),
    ("- [a=1]\n- 7\n", [], r"point 2: expected a list of overrides \(\[key=value, ...\]\) or a mapping"),
    ("- {optimizer.learning_rate: [1, 2]}\n", [], "point 1: optimizer.learning_rate holds a list; write this point"),
    ("- ['a=1,2']\n", [], r"point 1 varies a value \(\['a=1,2'\]\); a point is one value per key"),
    ("- ['a=[1']\n", [], "point 1: .*"),
    ("- [a=1]\n", ["b=1,2"], r"the command line also varies \['b'\]; put those values in the file"),
])
def test_a_bad_points_file_is_one_error_that_names_the_file_and_the_point(tmp_path, text, overrides, message):
    name = "nope.yaml" if text is None else "p.yaml"
    if text is not None:
        (tmp_path / name).write_text(text)
    with pytest.raises(ConfigError, match=f"sweep.points: .*{message}"):
        points.jobs(overrides, name, tmp_path)
