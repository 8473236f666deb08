"""The jobs of a grid sweep: the product of the command line's values (Hydra's basic sweeper), or with
`sweep.points=FILE.yaml` exactly the file's points.

The file is a YAML list; each point is a list of overrides or a mapping of keys to values:

    - [optimizer=adam, optimizer.learning_rate=0.001]
    - {optimizer: sgd, optimizer.learning_rate: 0.01, loop.batch_size: 128}

The command line's other overrides apply to every point (a point's own value of a key wins). The
preflight (runner/sweep/callback.py) and the sweeper (hydra_plugins/runner_grid) read it here, so
what is checked is what runs, with any launcher.
"""

from pathlib import Path

from omegaconf import OmegaConf

from runner.errors import ConfigError
from runner.record.tags import override_key


def jobs(overrides, points_file=None, cwd="."):
    """Every job's overrides, in order: the grid of `overrides`, or the points of `points_file`."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    parsed = parser.parse_overrides(list(overrides))
    if not points_file:
        return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]
    swept = [o.key_or_group for o in parsed if o.is_sweep_override()]
    if swept:
        raise ConfigError(f"sweep.points: runs exactly the points of {points_file}, but the command line also "
                          f"varies {swept}; put those values in the file's points (sweep.seeds repeats each point).")
    base = {o.get_key_element(): f"{o.get_key_element()}={o.get_value_element_as_str()}" for o in parsed}
    found = []
    for i, point in enumerate(read(points_file, cwd), start=1):
        try:
            mine = parser.parse_overrides(point)
        except Exception as error:  # Hydra's grammar error: one line, where it is
            raise ConfigError(f"sweep.points: {points_file}, point {i}: {' '.join(str(error).split())}") from error
        if any(o.is_sweep_override() for o in mine):
            raise ConfigError(f"sweep.points: {points_file}, point {i} varies a value ({point}); a point is one "
                              "value per key: write each combination as its own point.")
        job = dict(base)
        job.update({o.get_key_element(): f"{o.get_key_element()}={o.get_value_element_as_str()}" for o in mine})
        found.append(list(job.values()))
    return found


def varying(found):
    """The keys whose values differ between the jobs `found` (lists of `key=value`), or that some set
    and others do not."""
    settings = [{override_key(o): o for o in job} for job in found]
    keys = dict.fromkeys(k for job in settings for k in job)
    return [k for k in keys if len({job.get(k) for job in settings}) > 1]


def read(points_file, cwd="."):
    """The file's points, each a list of override strings."""
    path = Path(cwd) / Path(points_file).expanduser()
    if not path.is_file():
        raise ConfigError(f"sweep.points: no file {path}; give a YAML list of points (docs/sweeps.md).")
    try:
        loaded = OmegaConf.to_container(OmegaConf.load(path))
    except Exception as error:
        raise ConfigError(f"sweep.points: {path} is not YAML: {' '.join(str(error).split())}") from error
    if not isinstance(loaded, list) or not loaded:
        raise ConfigError(f"sweep.points: {path} must hold a non-empty YAML list of points, each a list of "
                          "overrides or a mapping of keys to values.")
    points = []
    for i, point in enumerate(loaded, start=1):
        if isinstance(point, dict):
            point = [f"{key}={_value(value, path, i, key)}" for key, value in point.items()]
        if not isinstance(point, list) or not all(isinstance(o, str) for o in point):
            raise ConfigError(f"sweep.points: {path}, point {i}: expected a list of overrides "
                              f"([key=value, ...]) or a mapping {{key: value}}, got {point!r}.")
        points.append(point)
    return points


def _value(value, path, i, key):
    if isinstance(value, (dict, list)):
        raise ConfigError(f"sweep.points: {path}, point {i}: {key} holds a {type(value).__name__}; write this point "
                          f"as a list of overrides, with the value quoted as on the command line ('{key}=...').")
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
