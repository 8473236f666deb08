"""The runner's default sweeper (conf/hydra/sweeper/grid.yaml): Hydra's basic sweeper, whose jobs are
runner.sweep.points.jobs (the grid of the command line, or exactly the points of `sweep.points=FILE`),
and which stops launching once `sweep.max_failures` jobs failed.

A Hydra sweeper must live in the `hydra_plugins` package (Hydra refuses any other), hence this module.
"""

import os

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.utils import JobStatus


class GridSweeper(BasicSweeper):
    def setup(self, *, hydra_context, task_function, config):
        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)
        self.points_file, self.cwd = config.sweep.points, config.hydra.runtime.cwd
        self.max_failures, self.failed = config.sweep.max_failures, 0
        if self.max_failures is not None:
            # Launched a batch at a time (the launcher's n_jobs, else one job), so the count is known
            # before the next batch starts.
            n_jobs = config.hydra.launcher.get("n_jobs") or 1
            self.max_batch_size = self.max_batch_size or (os.cpu_count() if n_jobs < 0 else n_jobs)
            launch = self.launcher.launch

            def counted(batch, initial_job_idx):
                results = launch(batch, initial_job_idx=initial_job_idx)
                # a job whose runs all failed returns None (runner.main); one that raised is FAILED
                self.failed += sum(r.status == JobStatus.FAILED or r._return_value is None for r in results)
                return results

            self.launcher.launch = counted

    def split_arguments(self, overrides, max_batch_size):
        from runner.sweep import points

        if not self.points_file:
            return BasicSweeper.split_arguments(overrides, max_batch_size)
        found = points.jobs([o.input_line for o in overrides], self.points_file, self.cwd)
        return list(BasicSweeper.split_overrides_to_chunks(found, max_batch_size))

    def is_done(self):
        return super().is_done() or (self.max_failures is not None and self.failed >= self.max_failures)
