"""The runner's default sweeper (conf/hydra/sweeper/grid.yaml): Hydra's basic sweeper, whose jobs are
runner.sweep.points.jobs: the grid of the command line, or exactly the points of `sweep.points=FILE`.

A Hydra sweeper must live in the `hydra_plugins` package (Hydra refuses any other), hence this module.
"""

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper


class GridSweeper(BasicSweeper):
    def setup(self, *, hydra_context, task_function, config):
        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)
        self.points_file, self.cwd = config.sweep.points, config.hydra.runtime.cwd

    def split_arguments(self, overrides, max_batch_size):
        from runner.sweep import points

        if not self.points_file:
            return BasicSweeper.split_arguments(overrides, max_batch_size)
        found = points.jobs([o.input_line for o in overrides], self.points_file, self.cwd)
        return list(BasicSweeper.split_overrides_to_chunks(found, max_batch_size))
