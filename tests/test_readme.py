"""What README shows, a test runs: every `runner` command in the code blocks of README.md and docs/*.md,
made cheap.

Each command runs as written, plus overrides that only shorten it (one epoch,
a few hundred examples) and the local paths this machine has in place of the
placeholders. A command that needs a cluster is run by its own test (named in
SKIP); anything else that README or docs/ show and that fails here fails this
test. A command shown in several files runs once, under the first file that
shows it (README first, then docs/ by name).
"""

import re
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import cli, runs


ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
MNIST = ROOT.parent / "shared" / "data" / "mnist.npz"
SHORT = ["loop.epochs=1", "dataset.limit=256", "loop.verbose=0"]
# Commands run elsewhere, with the real engine they need.
SKIP = {
    "hydra/launcher=slurm": "tests/test_slurm.py runs SLURM sweeps on a real slurmctld",
    "hydra/launcher=ray": "tests/test_ray.py runs Ray sweeps on a real Ray head",
    "loop.strategy=multi_worker": "tests/test_multi_worker.py runs two TF workers on 127.0.0.1",
    "mlflow.example": "a placeholder host",
}


def page_commands(page):
    """Every `runner` command in a page's code: indented blocks and ```bash fences alike."""
    commands, fenced = [], False
    for line in page.read_text().splitlines():
        if line.startswith("```"):
            fenced = line.strip() in ("```bash", "```sh", "```console", "```shell")
            continue
        code = line[4:] if line.startswith("    ") else line if fenced else None
        if code is not None and re.match(r"^(?:\w+=\S+ )*runner( .*)?$", code.strip()):
            commands.append(code.strip().split("  #")[0].strip())
    return list(dict.fromkeys(commands))


def shown_commands():
    """(page, command) for every command of README and docs/, each command once: where it is first shown."""
    first = {}
    for page in PAGES:
        for command in page_commands(page):
            first.setdefault(command, page.relative_to(ROOT).as_posix())
    return [(page, command) for command, page in first.items()]


SHOWN = shown_commands()
COMMANDS = [command for _, command in SHOWN]


def test_the_readme_shows_commands():
    assert len(page_commands(README)) >= 3 and "runner" in page_commands(README)
    assert len(COMMANDS) >= 30


def test_the_readme_is_a_front_door():
    """README stays short, shows CI's install and test commands, and links every page of docs/."""
    text = README.read_text()
    assert len(text.splitlines()) <= 200
    ci = (ROOT / ".ci" / "run").read_text()
    for command in ("pip install '.[test,cluster]'", "bash .ci/services.sh install", "python -m pytest"):
        assert command in ci and command in text, command
    for page in PAGES[1:]:
        assert f"](docs/{page.name})" in text, f"README does not link docs/{page.name}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_the_links_resolve(page):
    """Every relative link of README and docs/ names a file that exists, and a heading of it where it names one."""
    for target, anchor in re.findall(r"\]\(([^)#\s]*)(?:#([^)\s]*))?\)", page.read_text()):
        if re.match(r"^[a-z]+:", target):
            continue
        path = page.parent / target
        assert path.exists(), f"{page.name} links {target}, which does not exist"
        if anchor:
            assert anchor in _anchors(path), f"{page.name} links {target}#{anchor}: no such heading"


def _anchors(page):
    """GitHub's anchor of each heading: lower case, punctuation dropped, spaces as hyphens."""
    headings = re.findall(r"^#+ (.+)$", page.read_text(), flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


@pytest.mark.slow
@pytest.mark.parametrize("command", [pytest.param(c, id=f"{page}:{c}") for page, c in SHOWN])
def test_readme_command_runs(command, tmp_path, two_runs):
    reason = next((why for key, why in SKIP.items() if key in command), None)
    if reason:
        pytest.skip(reason)
    words = shlex.split(re.sub(r"<[^>]*>", "<id>", command))  # `<run id>`: one placeholder word
    env = dict(w.split("=", 1) for w in words if re.match(r"^[A-Z_]+=", w))
    words = [w for w in words[len(env) + 1:] if w not in ("...", "[...]")]
    if "<id>" in words or any(w.startswith("models:/") for w in words):  # run ids: two real runs of the digits
        ids = two_runs(tmp_path)
        words = [ids.pop(0) if w == "<id>" else _digits_input(w, tmp_path) for w in words]
        extra = []
    else:
        words = [_local(w, tmp_path) for w in words]
        if any(w in ("dataset=mnist", "experiment=seed_mnist") for w in words) and not any(
                w.startswith("dataset.path=") for w in words):
            words.append(f"dataset.path={_mnist()}")
        extra = ["loop.epochs=1", "loop.verbose=0"]
        if any("mnist" in w for w in words):
            extra.append("dataset.limit=2000")  # MNIST is the one large data set the README names
        if "hydra/sweeper=tune" in words:
            extra.append("hydra.sweeper.n_trials=2")
    done = cli(*words, *extra, cwd=tmp_path, env=env)
    assert done.returncode == 0, f"{command}\n{done.stderr[-3000:]}"
    if not words or words[0] not in ("compare", "reproduce", "register", "export", "predict"):
        assert "MLflow run " in done.stdout or "jobs FINISHED" in done.stdout


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """cwd -> the ids of two real runs, in a copy of their folder (./mlflow.db) put in `cwd`: what
    `runner compare` and `reproduce` take. The runs are made once (their artifacts stay where they are)."""
    made = {}

    def into(cwd):
        if not made:
            where = made["at"] = tmp_path_factory.mktemp("two_runs")
            for lr in ("0.001", "0.01"):
                done = cli("loop.epochs=1", "loop.verbose=0", f"optimizer.learning_rate={lr}", cwd=where)
                assert done.returncode == 0, done.stderr[-3000:]
            first = runs(where)[1][0].info.run_id  # models:/digits@champion, as docs/sweeps.md makes it
            assert cli("register", first, "digits", cwd=where).returncode == 0
        shutil.copytree(made["at"], cwd, dirs_exist_ok=True)
        return [r.info.run_id for r in runs(cwd)[1]]

    return into


def _digits_input(word, tmp_path):
    """What a command on the digits model names as input, made for it: a folder of 8x8 grey images
    (`photos/`), an .npz of digits (`new.npz`, `dataset.path=other.npz`)."""
    from sklearn.datasets import load_digits

    value = word.partition("=")[2] if word.startswith("dataset.path=") else word
    digits = load_digits()
    x = (digits.images * 255 / 16).astype(np.uint8)
    if value.endswith("/"):
        from PIL import Image

        (tmp_path / value).mkdir(parents=True, exist_ok=True)
        for i in range(12):
            Image.fromarray(x[i]).save(tmp_path / value / f"{i}.png")
    elif value.endswith(".npz"):
        np.savez(tmp_path / value, x=x[:50, ..., None], x_train=x[:100, ..., None], y_train=digits.target[:100],
                 x_test=x[1500:, ..., None], y_test=digits.target[1500:])
    return word


def _mnist():
    if not MNIST.is_file():
        pytest.skip(f"real MNIST not found at {MNIST}")
    return MNIST


def _local(word, tmp_path):
    """README placeholders -> data on this machine: MNIST where it names MNIST, else a small generated
    file of the kind the command names (.npz, .csv, or a folder of class folders of PNGs)."""
    key, _, value = word.partition("=")
    if key != "dataset.path":
        return word
    if "mnist" in value:
        return f"dataset.path={_mnist()}"
    rng = np.random.default_rng(0)
    target = tmp_path / value
    if value.endswith(".csv"):
        rows = [f"{rng.normal(i % 3, 0.3):.3f},{'abc'[i % 3]},{i % 3}\n" for i in range(300)]
        target.write_text("size,colour,label\n" + "".join(rows))
    elif value.endswith("/"):
        from PIL import Image

        for i in range(60):
            (target / f"class{i % 3}").mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(target / f"class{i % 3}" / f"{i}.png")
    else:
        x = rng.integers(0, 256, (400, 32, 32, 3), dtype=np.uint8)
        y = (np.arange(400) % 5).astype(np.uint8)
        np.savez(target, x_train=x[:340], y_train=y[:340], x_test=x[340:], y_test=y[340:])
    return word
