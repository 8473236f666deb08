"""The leaderboard's arithmetic on jobs as MLflow returns them: points, seeds, spread, the noise test, what
mattered. The sweeps that produce them for real are in tests/test_sweep.py."""

import statistics

import pytest

from runner.sweep import importance, leaderboard


def job(overrides, point, val, test, status="FINISHED", run_id=None, **extra):
    metrics = {"val_accuracy": val, "test_accuracy": test, "test_loss": None if test is None else 1 - test, **extra}
    return {"overrides": overrides, "point": point, "status": status, "metrics": metrics if val is not None else {},
            "run_id": run_id or f"{point}-{val}", "epochs": 2, "wall_s": 1.0}


def test_points_rank_by_the_objectives_mean_over_seeds_never_by_the_test_split():
    jobs = [job("lr=0.1 seed=1", "a", 0.90, 0.99), job("lr=0.1 seed=2", "a", 0.92, 0.99),
            job("lr=0.2 seed=1", "b", 0.95, 0.80), job("lr=0.2 seed=2", "b", 0.97, 0.80)]
    rows = leaderboard.point_rows(jobs, [("val_accuracy", "max")])
    assert [r["overrides"] for r in rows] == ["lr=0.2", "lr=0.1"]  # b wins on validation though a tests better
    top = rows[0]
    assert top["n"] == 2 and top["val_accuracy"] == pytest.approx(0.96)
    assert top["val_accuracy_std"] == pytest.approx(statistics.stdev([0.95, 0.97]))
    assert top["test_accuracy"] == pytest.approx(0.80) and top["run_id"] == "b-0.97"  # its best seed's run
    table = leaderboard.leaderboard(rows, ["val_accuracy"])
    assert "| 1 | lr=0.2 | FINISHED | 2 | 0.9600 ± 0.0141 | 0.8000 ± 0.0000 |" in table


def test_a_loss_objective_ranks_lowest_first_and_failed_jobs_do_not_count():
    jobs = [job("x=1", "a", 0.5, 0.5, val_loss=0.3), job("x=2", "b", 0.9, 0.9, val_loss=0.2),
            job("x=2", "b", None, None, status="FAILED"), job("x=3", "c", None, None, status="MISSING")]
    rows = leaderboard.point_rows(jobs, [("val_loss", "min")])
    assert [r["overrides"] for r in rows] == ["x=2", "x=1", "x=3"]
    assert rows[0]["status"] == "1 FAILED, 1 FINISHED" and rows[0]["n"] == 1
    assert rows[2]["val_loss"] is None and rows[2]["status"] == "MISSING"


def test_the_lead_is_judged_against_the_seed_noise_by_welchs_test():
    clear = [job(f"lr=0.1 seed={s}", "a", v, 0.9) for s, v in enumerate([0.95, 0.951, 0.949, 0.952])] + \
            [job(f"lr=0.2 seed={s}", "b", v, 0.9) for s, v in enumerate([0.90, 0.901, 0.899, 0.902])]
    assert leaderboard.point_rows(clear, [("val_accuracy", "max")])[0]["lead"].startswith("yes (Welch p=0.000")
    noisy = [job(f"lr=0.1 seed={s}", "a", v, 0.9) for s, v in enumerate([0.95, 0.80, 0.97, 0.85])] + \
            [job(f"lr=0.2 seed={s}", "b", v, 0.9) for s, v in enumerate([0.93, 0.82, 0.96, 0.84])]
    verdict = leaderboard.point_rows(noisy, [("val_accuracy", "max")])[0]["lead"]
    assert verdict.startswith("no: within the seed noise (Welch p=0.")
    one_seed = [job("lr=0.1", "a", 0.9, 0.9), job("lr=0.2", "b", 0.8, 0.8)]
    assert leaderboard.point_rows(one_seed, [("val_accuracy", "max")])[0]["lead"].startswith("unknown: needs 2+ seeds")
    runner_up_failed = [job("lr=0.1 seed=1", "a", 0.9, 0.9), job("lr=0.1 seed=2", "a", 0.91, 0.9),
                        job("lr=0.2 seed=1", "b", None, None, status="FAILED")]
    assert leaderboard.point_rows(runner_up_failed, [("val_accuracy", "max")])[0]["lead"] == \
        "unknown: the runner-up has no seed that ended well"


def test_two_objectives_mark_the_pareto_front_and_rank_it_first():
    jobs = [job("f=4", "a", 0.80, 0.8, num_params=100.0), job("f=8", "b", 0.90, 0.9, num_params=200.0),
            job("f=16", "c", 0.85, 0.9, num_params=400.0)]
    rows = leaderboard.point_rows(jobs, [("val_accuracy", "max"), ("params", "min")])
    assert [(r["overrides"], r["front"]) for r in rows] == [("f=8", "yes"), ("f=4", "yes"), ("f=16", "no")]
    table = leaderboard.leaderboard(rows, ["val_accuracy", "params"])
    assert "| front |" in table and "| lead |" not in table and "| 200 |" in table
    assert leaderboard.to_csv(rows, ["val_accuracy", "params"]).splitlines()[0].startswith(
        "rank,overrides,status,n,val_accuracy,val_accuracy_std,params,params_std,test_accuracy")


def test_importance_is_the_share_of_variance_each_varied_key_explains():
    jobs = [job(f"lr={lr} bs={bs} seed={s}", f"{lr}-{bs}", (0.9 if lr == "0.1" else 0.5) + 0.001 * s, 0.9)
            for lr in ("0.1", "0.2") for bs in ("32", "64") for s in (1, 2)]
    shares = importance.importance(jobs, "val_accuracy")
    assert list(shares)[0] == "lr" and shares["lr"] == pytest.approx(1.0, abs=1e-3)
    assert shares["bs"] == pytest.approx(0.0, abs=1e-3) and 0 < shares[importance.NOISE] < 1e-3
    assert "| lr | 1.000 |" in importance.markdown(shares, "val_accuracy")
    assert importance.importance(jobs[:2], "val_accuracy") == {}  # too few jobs to say


def test_a_key_whose_values_each_ran_once_is_not_estimable():
    jobs = [job(f"lr={lr}", f"p{lr}", 0.5 + lr, 0.9) for lr in (0.01, 0.02, 0.03, 0.04)]
    shares = importance.importance(jobs, "val_accuracy")
    assert shares == {"lr": None}  # eta squared would be 1 by construction
    assert "| lr | not estimable: each of its values ran once" in importance.markdown(shares, "val_accuracy")
