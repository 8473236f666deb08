"""Image folders: one sub-folder per class, decoded and resized per batch, streamed from disk."""

import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

from runner import data
from runner.data.folders import Files
from runner.errors import ConfigError
from runner.train import run
from test_data import cli, dataset_cfg


def write_images(root, per_class=6, size=(12, 10), classes=("bright", "dark"), mode="RGB"):
    """Class `bright` is light, `dark` is dark: a model can tell them apart in one epoch."""
    rng = np.random.default_rng(0)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            level = 200 if name == "bright" else 40
            shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
            pixels = np.clip(rng.normal(level, 20, shape), 0, 255).astype(np.uint8)
            Image.fromarray(pixels, mode).save(root / name / f"{i:03d}.png")
    return root


def folder_cfg(path, **overrides):
    return dataset_cfg(path, name="image_folder", validation_split=0.2, test_split=0.25, **overrides)


def test_classes_shape_and_counts_come_from_the_folders(tmp_path):
    info = data.inspect(folder_cfg(write_images(tmp_path / "img")))
    assert info.class_names == ["bright", "dark"] and info.num_classes == 2
    assert info.input_shape == (10, 12, 3)  # the first image's height, width, RGB
    assert info.examples == {"train": 7, "validation": 2, "test": 3}
    assert sum(sum(c) for c in info.class_counts.values()) == 12


def test_grey_images_have_one_channel(tmp_path):
    assert data.inspect(folder_cfg(write_images(tmp_path / "img", mode="L"))).input_shape == (10, 12, 1)


def test_a_changed_image_changes_the_digest(tmp_path):
    root = write_images(tmp_path / "img")
    before = data.inspect(folder_cfg(root)).digest
    Image.new("RGB", (12, 10)).save(root / "dark" / "000.png")
    assert data.inspect(folder_cfg(root)).digest != before


def test_images_are_streamed_resized_and_scaled(tmp_path):
    splits = data.load(folder_cfg(write_images(tmp_path / "img"), input_shape=[8, 8, 3]))
    assert isinstance(splits.train[0], Files) and len(splits.train[0]) == 7  # paths, not pixels
    train, steps = data.train_pipeline(*splits.train, 4, seed=1, first_epoch=0, epochs=2)
    batches = list(train)
    assert steps == 2 and [len(b[1]) for b in batches] == [4, 3, 4, 3]  # no batch spans two epochs
    x, _ = batches[0]
    assert x.shape == (4, 8, 8, 3) and x.dtype == "float32" and 0 <= float(np.min(x)) and float(np.max(x)) <= 1
    resumed, _ = data.train_pipeline(*splits.train, 4, seed=1, first_epoch=1, epochs=2)
    assert [b[1].numpy().tolist() for b in resumed] == [b[1].numpy().tolist() for b in batches[2:]]
    (test_x, test_y), = list(data.pipeline(*splits.test, 8))
    assert test_x.shape == (3, 8, 8, 3)
    assert (np.asarray(test_x).mean(axis=(1, 2, 3)) > 0.5).tolist() == (test_y.numpy() == 0).tolist()  # bright = 0


def test_memory_and_disk_caches_hold_the_same_pixels(tmp_path, monkeypatch):
    monkeypatch.setenv("RUNNER_CACHE_DIR", str(tmp_path / "cache"))
    root = write_images(tmp_path / "img")
    streamed, memory, disk = (data.load(folder_cfg(root, input_shape=[8, 8, 3], cache=c)) for c in ("none", "memory", "disk"))
    assert isinstance(memory.train[0], np.ndarray) and isinstance(disk.train[0], np.memmap)
    first = [np.asarray(next(iter(data.pipeline(*s.val, 8)))[0]) for s in (streamed, memory, disk)]
    np.testing.assert_allclose(first[0], first[1]) and np.testing.assert_allclose(first[1], first[2])
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 3  # train, validation, test: reused by the next run
    again = data.load(folder_cfg(root, input_shape=[8, 8, 3], cache="disk"))
    np.testing.assert_array_equal(again.train[0], disk.train[0])


@pytest.mark.parametrize("setup, overrides, message", [
    (lambda r: (r / "a").mkdir(parents=True), {}, r"dataset.path: '.*img' has 1 class folder\(s\) \['a'\]"),
    (lambda r: (write_images(r), (r / "empty").mkdir()), {}, r"dataset.path: class folder '.*empty' holds no images"),
    (lambda r: (write_images(r), write_images(r.parent / "test", classes=("bright", "grey"))),
     {"test_path": "TEST"}, r"dataset.test_path: class folders \['grey'\] are not among the training classes"),
    (write_images, {"input_shape": [8, 8]}, r"dataset.input_shape: \[8, 8\] for images must be \[height, width, 1, 3 or 4\]"),
    (write_images, {"num_classes": 3}, r"dataset.num_classes: the config says 3, but .* has 2 classes \['bright', 'dark'\]"),
])
def test_folders_that_cannot_train(tmp_path, setup, overrides, message):
    root = tmp_path / "img"
    setup(root)
    overrides = {k: str(tmp_path / "test") if v == "TEST" else v for k, v in overrides.items()}
    with pytest.raises(ConfigError, match=message):
        data.fill(OmegaConf.create({"seed": 0, "dataset": folder_cfg(root, **overrides)}))


def _garbage(path):
    path.write_bytes(bytes(range(256)) * 4)


def _truncated(path):
    whole = path.with_name("000.png").read_bytes()
    path.write_bytes(whole[: len(whole) // 2])


@pytest.mark.parametrize("spoil", [
    _garbage, lambda p: p.write_bytes(b""), lambda p: p.write_text("not an image at all"), _truncated,
], ids=["garbage bytes", "zero bytes", "text", "truncated"])
def test_a_file_that_is_not_a_readable_image_is_named_before_training(tmp_path, spoil):
    root = write_images(tmp_path / "img", per_class=30)
    bad = root / "dark" / ("zz.jpg" if spoil is not _truncated else "zz.png")
    spoil(bad)
    with pytest.raises(ConfigError, match=rf"dataset.path: 1 of 61 files are not readable images; remove or replace "
                                          rf"them, or set dataset.on_bad_file=skip: {bad} \("):
        data.inspect(folder_cfg(root))
    info = data.inspect(folder_cfg(root, on_bad_file="skip"))  # or left out, and named
    assert info.examples["train"] + info.examples["validation"] + info.examples["test"] == 60
    assert len(info.skipped) == 1 and info.skipped[0].startswith(f"{bad} (")


@pytest.mark.parametrize("kind", ["JPEG", "BMP", "GIF"])
def test_a_truncated_jpeg_bmp_or_gif_is_caught_too(tmp_path, kind):
    root = write_images(tmp_path / "img")
    bad = root / "dark" / f"zz.{kind.lower()}"
    Image.fromarray(np.full((40, 40, 3), 90, np.uint8)).save(bad, kind)
    tf = pytest.importorskip("tensorflow")
    whole = bad.read_bytes()
    bad.write_bytes(whole[: len(whole) * 2 // 3])
    with pytest.raises(tf.errors.InvalidArgumentError):  # what TensorFlow would have hit mid-training
        tf.io.decode_image(tf.io.read_file(str(bad)), channels=3, expand_animations=False)
    with pytest.raises(ConfigError, match=rf"1 of 13 files are not readable images; .*{bad} \(.*[Tt]runcated"):
        data.inspect(folder_cfg(root))
    bad.write_bytes(whole)
    assert data.inspect(folder_cfg(root)).examples["train"] > 0  # whole, it passes


def test_valid_images_with_trailing_bytes_pass_and_a_1_bit_bmp_is_refused(tmp_path):
    root = write_images(tmp_path / "img")
    for kind in ("JPEG", "GIF"):  # phones append metadata after a JPEG's end; TensorFlow reads them
        path = root / "dark" / f"tail.{kind.lower()}"
        Image.fromarray(np.full((12, 10, 3), 60, np.uint8)).save(path, kind)
        path.write_bytes(path.read_bytes() + b"trailing metadata")
    assert data.inspect(folder_cfg(root)).examples["train"] > 0
    Image.fromarray(np.full((12, 10), 255, np.uint8)).convert("1").save(root / "dark" / "mono.bmp")
    with pytest.raises(ConfigError, match=r"mono.bmp \(a 1-bit BMP, which TensorFlow cannot decode"):
        data.inspect(folder_cfg(root))


def test_skipping_every_file_of_a_class_is_refused(tmp_path):
    root = write_images(tmp_path / "img", per_class=3)
    for path in (root / "dark").iterdir():
        path.write_bytes(b"")
    with pytest.raises(ConfigError, match=r"every file of \[.*dark'\] is unreadable; .* that class would have no"):
        data.inspect(folder_cfg(root, on_bad_file="skip"))


def test_many_bad_files_are_counted_and_the_first_ones_named(tmp_path):
    root = write_images(tmp_path / "img")
    for i in range(8):
        (root / "bright" / f"bad{i}.png").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"8 of 20 files are not readable images; .*bad4.png .*, and 3 more\.$"):
        data.inspect(folder_cfg(root))


def test_a_grey_first_image_does_not_make_a_colour_folder_grey(tmp_path):
    root = write_images(tmp_path / "img")
    Image.fromarray(np.full((10, 12), 128, np.uint8), "L").save(root / "bright" / "000.png")  # the first file
    assert data.inspect(folder_cfg(root)).input_shape == (10, 12, 3)


def test_cli_missing_folder_exits_2(tmp_path):
    err = cli(["dataset=image_folder", "dataset.path=photos"], tmp_path)
    assert err == f"runner: config error: dataset.path: no folder at '{tmp_path / 'photos'}'; expected one sub-folder " \
                  "of images per class."


def test_a_folder_trains_with_nothing_but_its_path(make_cfg, store, tmp_path):
    write_images(tmp_path / "img", per_class=20)
    cfg = make_cfg("dataset=image_folder", "dataset.path=img", "loop.epochs=3", "loop.batch_size=4", "loop.verbose=0",
                   f"mlflow.tracking_uri={store}")
    results = run(cfg, cwd=tmp_path)
    assert results["test_accuracy"] >= 0.9  # light against dark


@pytest.mark.slow
@pytest.mark.parametrize("style", ["sequential", "functional", "subclass"])
@pytest.mark.parametrize("loop", ["fit", "custom"])
def test_a_folder_trains_in_every_style_and_loop(make_cfg, store, tmp_path, style, loop):
    write_images(tmp_path / "img", per_class=20)
    cfg = make_cfg("dataset=image_folder", "dataset.path=img", "dataset.input_shape=[8,8,3]", f"model-style={style}",
                   f"loop={loop}", "loop.epochs=3", "loop.batch_size=4", "loop.verbose=0", f"mlflow.tracking_uri={store}")
    assert run(cfg, cwd=tmp_path)["test_accuracy"] >= 0.9
