"""What produced a run: the code (git commit, branch, dirty flag and diff of the launch directory),
the versions of what ran it, its devices and its installed packages.

MLflow records none of this for an installed console command (its git tags come
from the entry script's directory, here site-packages). Read without
subprocesses where it can be: a pip freeze through importlib.metadata takes
milliseconds, `pip freeze` a second.
"""

import os
import platform
import re
import shlex
import subprocess
import sys
from importlib import metadata

from runner.record.redaction import redact_override
from runner.record.tags import Tag

PACKAGES = ("runner", "tensorflow", "keras", "mlflow", "numpy", "hydra-core")
DIFF_LIMIT = 1 << 20  # an uncommitted diff larger than 1 MiB is cut (a data file checked in by mistake)


def git(cwd):
    """{'commit', 'branch', 'dirty', 'diff'} of the repository holding `cwd`, or {} outside one."""

    def run(*args):
        done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)
        return done.stdout if done.returncode == 0 else None

    try:
        commit = run("rev-parse", "HEAD")
    except (OSError, subprocess.SubprocessError):  # no git installed
        return {}
    if not commit:
        return {}
    diff = run("diff", "HEAD", "--no-color") or ""
    untracked = run("ls-files", "--others", "--exclude-standard") or ""
    return {
        "commit": commit.strip(),
        "branch": (run("rev-parse", "--abbrev-ref", "HEAD") or "").strip(),
        "dirty": bool(diff.strip() or untracked.strip()),
        "diff": diff[:DIFF_LIMIT] + (f"\n... cut at {DIFF_LIMIT} bytes\n" if len(diff) > DIFF_LIMIT else ""),
        "untracked": untracked.split(),
    }


def versions():
    """{package: version} of the packages that decide a result, and Python's."""
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "absent"
    return found


def devices():
    """The devices TensorFlow sees, when it is imported (it is, during a run); else none."""
    tf = sys.modules.get("tensorflow")
    if tf is None:
        return []
    return [f"{d.device_type}:{d.name.rsplit(':', 1)[-1]}" for d in tf.config.list_logical_devices()]


def pip_freeze():
    """Every installed distribution as `name==version`, sorted: what `pip freeze` lists, without pip.

    Read from the `name-version.dist-info` folder names (milliseconds); parsing
    every METADATA file costs half a second. Names are PEP 503 normalised.
    """
    seen = {}
    for dist in metadata.distributions():
        folder = getattr(dist, "_path", None)
        stem = folder.name if folder is not None else ""
        if stem.endswith(".dist-info") and "-" in stem:
            name, _, release = stem[: -len(".dist-info")].partition("-")
        else:  # an egg-info or an unusual layout: its metadata says
            name, release = dist.metadata["Name"] or "", dist.version
        key = re.sub(r"[-_.]+", "-", name).lower()
        if key and key not in seen:
            seen[key] = f"{key}=={release}"
    return "\n".join(sorted(seen.values())) + "\n"


def tags(cwd):
    """(tags, files): the record of what produced a run, as tag values and as artifact texts."""
    code = git(cwd)
    found = {Tag.VERSION + k: v for k, v in versions().items()}
    found[Tag.DEVICES] = ", ".join(devices()) or "unknown"
    found[Tag.COMMAND] = command()
    files = {"environment/requirements.txt": pip_freeze()}
    if code:
        found.update({Tag.GIT_COMMIT: code["commit"], Tag.GIT_BRANCH: code["branch"],
                      Tag.GIT_DIRTY: str(code["dirty"]).lower(), Tag.MLFLOW_GIT_COMMIT: code["commit"]})
        if code["diff"]:
            files["environment/uncommitted.diff"] = code["diff"]
    return found, files


def command():
    """The command line as the user typed it (the console script's name, not its full path)."""
    args = [os.path.basename(sys.argv[0]) if sys.argv else "runner", *sys.argv[1:]]
    if args[0] in ("__main__.py", "-m"):
        args[0] = "runner"
    return " ".join(shlex.quote(redact_override(a)) for a in args)
