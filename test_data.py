"""data.py: the digits split, the Fashion-MNIST / CIFAR-10 / CIFAR-100 / TinyImageNet / ImageNet loaders on tiny
files, --train-n's subset, TensorLoader."""
import csv
import gzip
import math
import os
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import data


# ----------------------------------------------------------------------------- digits

def test_digits_split():
    train, test = data.load_dataset("digits")
    assert len(train) == 1437 and len(test) == 360
    assert train.x.shape == (1437, 1, 8, 8) and train.x.dtype == torch.uint8
    for c in range(10):
        n_train, n_test = int((train.y == c).sum()), int((test.y == c).sum())
        assert abs(n_test - 0.2 * (n_train + n_test)) <= 1, (c, n_train, n_test)  # stratified
    px = train.pixels(torch.arange(len(train)))
    assert px.min() == 0 and px.max() == 1
    train2, test2 = data.load_dataset("digits")  # a fixed split
    assert torch.equal(train.y, train2.y) and torch.equal(test.x, test2.x)
    info = data.dataset_info("digits")
    assert abs(px.mean().item() - info.mean[0]) < 0.01 and abs(px.std().item() - info.std[0]) < 0.01


# ----------------------------------------------------------------------------- CIFAR-10/100, TinyImageNet, ImageNet

def write_cifar(root, per_batch=2, n_test=3):
    """The python version of CIFAR-10. The real files are Python 2 pickles whose keys load (latin1) as str,
    which is what torchvision reads, so the keys here are str ('data', 'labels')."""
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    batches = {}
    for name, n in [*((f"data_batch_{i}", per_batch) for i in range(1, 6)), ("test_batch", n_test)]:
        blob = {"batch_label": name, "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                "labels": rng.integers(0, 10, n).tolist(), "filenames": [f"{name}_{i}.png" for i in range(n)]}
        with open(folder / name, "wb") as f:
            pickle.dump(blob, f, protocol=2)
        batches[name] = blob
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)], "num_cases_per_batch": per_batch,
                     "num_vis": 3072}, f, protocol=2)
    return batches


def test_cifar10_loader_reads_python_batches(tmp_path):
    batches = write_cifar(tmp_path)
    train, test = data.load_dataset("cifar10", str(tmp_path))
    assert isinstance(train, data.ImageTensors) and isinstance(test, data.ImageTensors)
    assert train.x.shape == (10, 3, 32, 32) and train.x.dtype == torch.uint8
    assert test.x.shape == (3, 3, 32, 32) and test.x.dtype == torch.uint8
    want_y = sum((batches[f"data_batch_{i}"]["labels"] for i in range(1, 6)), [])
    assert train.y.tolist() == want_y and test.y.tolist() == batches["test_batch"]["labels"]
    # a row of 'data' is 1024 red, 1024 green, 1024 blue values, row-major
    first = torch.from_numpy(batches["data_batch_1"]["data"][0]).view(3, 32, 32)
    assert torch.equal(train.x[0], first)
    last = torch.from_numpy(batches["test_batch"]["data"][2]).view(3, 32, 32)
    assert torch.equal(test.x[2], last)
    px = train.pixels(torch.arange(10))
    assert px.dtype == torch.float32 and px.min() >= 0 and px.max() <= 1


def write_cifar100(root, n_train=7, n_test=4):
    """The python version of CIFAR-100: train, test and meta in cifar-100-python. As with CIFAR-10 the real
    files are Python 2 pickles whose keys load (latin1) as str, so the keys here are str, not bytes."""
    folder = Path(root) / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    splits = {}
    for name, n in (("train", n_train), ("test", n_test)):
        fine = rng.integers(0, 100, n)
        fine[0] = 99  # the top label must load as itself
        blob = {"batch_label": f"{name} batch 1 of 1", "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                "fine_labels": fine.tolist(), "coarse_labels": (fine // 5).tolist(),  # never equal to fine here
                "filenames": [f"{name}_{i}.png" for i in range(n)]}
        with open(folder / name, "wb") as f:
            pickle.dump(blob, f, protocol=2)
        splits[name] = blob
    with open(folder / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"fine{i}" for i in range(100)],
                     "coarse_label_names": [f"coarse{i}" for i in range(20)]}, f, protocol=2)
    return splits


def test_cifar100_loader_reads_python_files(tmp_path):
    splits = write_cifar100(tmp_path)
    train, test = data.load_dataset("cifar100", str(tmp_path))
    assert isinstance(train, data.ImageTensors) and isinstance(test, data.ImageTensors)
    assert train.x.shape == (7, 3, 32, 32) and train.x.dtype == torch.uint8
    assert test.x.shape == (4, 3, 32, 32) and test.x.dtype == torch.uint8
    # the fine labels (100 classes), not the coarse ones
    assert train.y.tolist() == splits["train"]["fine_labels"] and test.y.tolist() == splits["test"]["fine_labels"]
    assert train.y.max() == 99 and test.y.max() < 100 and min(train.y.min(), test.y.min()) >= 0
    first = torch.from_numpy(splits["train"]["data"][0]).view(3, 32, 32)
    assert torch.equal(train.x[0], first)
    last = torch.from_numpy(splits["test"]["data"][3]).view(3, 32, 32)
    assert torch.equal(test.x[3], last)
    for split in (train, test):
        px = split.pixels(torch.arange(len(split)))
        assert px.dtype == torch.float32 and px.min() >= 0 and px.max() <= 1
    info = data.dataset_info("cifar100")
    assert info.num_classes == 100 and info.shape == (3, 32, 32) and info.eps == 8 / 255
    assert info.mean == (0.5071, 0.4865, 0.4409) and info.std == (0.2673, 0.2564, 0.2762)
    c10 = data.dataset_info("cifar10")
    assert (info.crop_pad, info.flip) == (c10.crop_pad, c10.flip)  # the same augmentation
    xb, yb = next(iter(data.train_loader(train, info, 4, torch.device("cpu"), seed=0)))
    assert xb.shape == (4, 3, 32, 32) and xb.min() >= 0 and xb.max() <= 1 and yb.max() < 100


@pytest.mark.parametrize("damage", ["no meta", "truncated", "labels short"])
def test_damaged_cifar_files_are_corrupted_in_one_line(tmp_path, damage):
    folder = tmp_path / "cifar-100-python"
    splits = write_cifar100(tmp_path)
    if damage == "no meta":
        (folder / "meta").unlink()
    elif damage == "truncated":
        (folder / "train").write_bytes((folder / "train").read_bytes()[:500])
    else:
        import pickle
        (folder / "test").write_bytes(pickle.dumps({**splits["test"], "fine_labels": [1]}, protocol=2))
    with pytest.raises(FileNotFoundError) as err:
        data.load_dataset("cifar100", str(tmp_path))
    assert "corrupted" in str(err.value) and "--download" in str(err.value) and "\n" not in str(err.value)


def test_missing_datasets_say_where_they_looked(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        data.load_dataset("cifar10", str(tmp_path / "none"))
    assert str(tmp_path / "none") in str(err.value) and "--download" in str(err.value)
    with pytest.raises(FileNotFoundError) as err:
        data.load_dataset("cifar100", str(tmp_path / "none"))
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("CIFAR-100 not found")
    assert str(tmp_path / "none" / "cifar-100-python") in msg and "--download" in msg
    assert "cifar-100-python.tar.gz" in msg
    with pytest.raises(FileNotFoundError, match="tiny-imagenet-200"):
        data.load_dataset("tinyimagenet", str(tmp_path / "none"))
    with pytest.raises(FileNotFoundError, match="ImageFolder"):
        data.load_dataset("imagenet", str(tmp_path / "none"))
    with pytest.raises(ValueError, match="unknown dataset"):
        data.load_dataset("mnist", str(tmp_path))


def test_download_without_network_is_a_clear_error(tmp_path, monkeypatch):
    import urllib.error
    import torchvision.datasets.cifar as tv_cifar
    import torchvision.datasets.utils as tv_utils

    def offline(*a, **k):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(tv_cifar, "download_and_extract_archive", offline)
    monkeypatch.setattr(tv_utils, "download_and_extract_archive", offline)
    with pytest.raises(FileNotFoundError, match="could not download CIFAR-10"):
        data.load_dataset("cifar10", str(tmp_path), download=True)
    with pytest.raises(FileNotFoundError, match="could not download CIFAR-100 .*cifar-100-python.tar.gz"):
        data.load_dataset("cifar100", str(tmp_path), download=True)
    with pytest.raises(FileNotFoundError, match="could not download TinyImageNet"):
        data.load_dataset("tinyimagenet", str(tmp_path), download=True)


def save_jpeg(path, color=None, gray=None, size=(64, 64)):
    from PIL import Image
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.new("L", size, gray) if gray is not None else Image.new("RGB", size, color)
    img.save(path, "JPEG", quality=95)


def test_tinyimagenet_loader_and_cache(tmp_path, monkeypatch):
    root = tmp_path / "tiny-imagenet-200"
    wnids = ["n09999999", "n01111111"]  # not in sorted order: labels must follow wnids.txt
    colors = {wnids[0]: (200, 30, 30), wnids[1]: (30, 30, 200)}
    root.mkdir()
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    for w in wnids:
        for i in range(2):
            save_jpeg(root / "train" / w / "images" / f"{w}_{i}.JPEG", colors[w])
    save_jpeg(root / "train" / wnids[1] / "images" / f"{wnids[1]}_2.JPEG", gray=120)  # a grayscale file
    val = [("val_0.JPEG", wnids[1]), ("val_1.JPEG", wnids[0]), ("val_2.JPEG", wnids[1])]
    for name, w in val:
        save_jpeg(root / "val" / "images" / name, colors[w])
    (root / "val" / "val_annotations.txt").write_text(
        "".join(f"{name}\t{w}\t0\t0\t63\t63\n" for name, w in val))

    train, test = data.load_dataset("tinyimagenet", str(tmp_path))
    assert train.x.shape == (5, 3, 64, 64) and train.x.dtype == torch.uint8
    assert test.x.shape == (3, 3, 64, 64)
    assert train.y.tolist() == [0, 0, 1, 1, 1]
    assert test.y.tolist() == [1, 0, 1]
    for x, y in [*zip(train.x[:4], train.y[:4]), *zip(test.x, test.y)]:
        mean_rgb = x.float().mean((1, 2))
        assert (mean_rgb - torch.tensor(colors[wnids[y]], dtype=torch.float)).abs().max() < 8
    gray = train.x[4].float()
    assert (gray[0] - gray[1]).abs().max() <= 1 and (gray[0] - gray[2]).abs().max() <= 1
    assert abs(gray.mean() - 120) < 4
    assert (root / "uint8_cache.pt").exists()

    def no_decoding(path):
        raise AssertionError("the uint8 cache should have been used")

    monkeypatch.setattr(data, "read_rgb", no_decoding)
    train2, test2 = data.load_dataset("tinyimagenet", str(tmp_path))
    assert torch.equal(train2.x, train.x) and torch.equal(train2.y, train.y)
    assert torch.equal(test2.x, test.x) and torch.equal(test2.y, test.y)


def test_imagenet_imagefolder_loader(tmp_path):
    for split in ("train", "val"):
        for c, color in (("cat", (250, 10, 10)), ("dog", (10, 250, 10))):
            for i in range(2):
                save_jpeg(tmp_path / split / c / f"{c}_{i}.JPEG", color, size=(300, 250))
    train, val = data.load_dataset("imagenet", str(tmp_path))
    assert val.classes == ["cat", "dog"] and val.targets == [0, 0, 1, 1]
    for ds in (train, val):
        x, y = ds[3]
        assert x.shape == (3, 224, 224) and x.dtype == torch.float32 and y == 1
        assert x.min() >= 0 and x.max() <= 1
    x, y = data.test_subset(val, 0)
    assert x.shape == (4, 3, 224, 224) and y.tolist() == [0, 0, 1, 1]
    assert (x[0].mean((1, 2)) - torch.tensor([250, 10, 10]) / 255).abs().max() < 0.05
    loader = data.train_loader(train, data.dataset_info("imagenet"), 2, torch.device("cpu"), seed=0, workers=0)
    assert len(loader) == 2
    xb, yb = next(iter(loader))
    assert xb.shape == (2, 3, 224, 224) and yb.shape == (2,)


# ----------------------------------------------------------------------------- Fashion-MNIST, --train-n

def write_idx(path, array, magic, gz):
    """An idx file: big-endian magic and dims, then the bytes; path gets .gz when gz."""
    blob = np.array([magic, *array.shape], ">u4").tobytes() + array.tobytes()
    (path.with_name(path.name + ".gz").write_bytes(gzip.compress(blob)) if gz else path.write_bytes(blob))


def write_fashion_mnist(folder, gz, n_train=20, n_test=10, seed=2):
    """The four idx files of Fashion-MNIST: random pixels, every class as often as n allows, in a random order."""
    folder.mkdir(parents=True, exist_ok=True)
    rng, splits = np.random.default_rng(seed), {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        x[0, 0, :2] = 0, 255  # both ends of the range must come back
        y = rng.permutation(np.arange(n) % 10).astype(np.uint8)
        write_idx(folder / f"{prefix}-images-idx3-ubyte", x, 0x803, gz)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", y, 0x801, gz)
        splits[prefix] = x, y
    return splits


@pytest.fixture
def debian(tmp_path, monkeypatch):
    """The Debian package's folder, moved into tmp_path: the tests never read the real /usr/share one."""
    monkeypatch.setattr(data, "FASHION_DEBIAN", str(tmp_path / "debian"))
    return tmp_path / "debian"


@pytest.mark.parametrize("where, gz", [("FashionMNIST/raw", True), (".", False), ("debian", True)])
def test_fashion_mnist_reads_idx_files_exactly(tmp_path, debian, where, gz):
    root = tmp_path / "data"
    splits = write_fashion_mnist(debian if where == "debian" else root / where, gz)
    train, test = data.load_dataset("fashion_mnist", str(root))
    for got, (x, y) in ((train, splits["train"]), (test, splits["t10k"])):
        assert isinstance(got, data.ImageTensors) and got.x.dtype == torch.uint8 and got.y.dtype == torch.long
        assert got.x.shape == (len(y), 1, 28, 28) and got.y.tolist() == y.tolist()
        want = torch.from_numpy(x).float().unsqueeze(1) / 255
        assert torch.equal(got.pixels(torch.arange(len(y))), want)
    info = data.dataset_info("fashion_mnist")
    assert (info.num_classes, info.shape, info.mean, info.std) == (10, (1, 28, 28), (0.2860,), (0.3530,))
    assert (info.eps, info.crop_pad, info.flip) == (0.1, 2, True)


def test_fashion_mnist_looks_in_torchvision_layout_then_data_dir_then_debian(tmp_path, debian):
    root = tmp_path / "data"
    for folder, n in ((root / "FashionMNIST" / "raw", 20), (root, 12), (debian, 8)):
        write_fashion_mnist(folder, gz=n != 12, n_train=n)
    assert len(data.load_dataset("fashion_mnist", str(root))[0]) == 20
    (root / "FashionMNIST" / "raw" / "t10k-labels-idx1-ubyte.gz").unlink()  # a folder missing a file is passed over
    assert len(data.load_dataset("fashion_mnist", str(root))[0]) == 12
    (root / "train-images-idx3-ubyte").unlink()
    assert len(data.load_dataset("fashion_mnist", str(root))[0]) == 8


def test_missing_fashion_mnist_says_both_ways_to_get_it(tmp_path, debian, monkeypatch):
    with pytest.raises(FileNotFoundError) as err:
        data.load_dataset("fashion_mnist", str(tmp_path / "none"))
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("Fashion-MNIST not found")
    assert "apt-get install dataset-fashion-mnist" in msg and "--download" in msg
    assert str(tmp_path / "none" / "FashionMNIST" / "raw") in msg and str(debian) in msg
    import urllib.error
    import torchvision.datasets.mnist as tv_mnist
    splits = write_fashion_mnist(tmp_path / "served", gz=False)

    def offline(*a, **k):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(tv_mnist, "download_and_extract_archive", offline)
    with pytest.raises(FileNotFoundError) as err:  # torchvision's error has a line per mirror: one line here
        data.load_dataset("fashion_mnist", str(tmp_path / "none"), download=True)
    assert "could not download Fashion-MNIST" in str(err.value) and "\n" not in str(err.value)

    def served(url, download_root, filename, md5):  # what a download leaves: the extracted files in raw/
        os.makedirs(download_root, exist_ok=True)
        name = filename.removesuffix(".gz")
        (Path(download_root) / name).write_bytes((tmp_path / "served" / name).read_bytes())

    monkeypatch.setattr(tv_mnist, "download_and_extract_archive", served)
    train, test = data.load_dataset("fashion_mnist", str(tmp_path / "none"), download=True)
    assert train.y.tolist() == splits["train"][1].tolist() and len(test) == 10
    assert (tmp_path / "none" / "FashionMNIST" / "raw" / "train-images-idx3-ubyte").exists()


@pytest.mark.parametrize("damage", ["truncated", "truncated gz", "labels short", "wrong magic"])
def test_damaged_fashion_mnist_file_is_one_line(tmp_path, debian, damage):
    gz = damage == "truncated gz"
    splits = write_fashion_mnist(tmp_path, gz)
    bad = tmp_path / ("train-images-idx3-ubyte" + ".gz" * gz)
    if damage.startswith("truncated"):
        bad.write_bytes(bad.read_bytes()[:len(bad.read_bytes()) // 2])
    elif damage == "labels short":
        bad = tmp_path / "t10k-labels-idx1-ubyte"
        write_idx(bad, splits["t10k"][1][:-1], 0x801, gz=False)
    else:
        write_idx(bad, splits["train"][0], 0x801, gz=False)
    with pytest.raises(FileNotFoundError) as err:
        data.load_dataset("fashion_mnist", str(tmp_path))
    msg = str(err.value)
    assert str(bad) in msg and "corrupted" in msg and "--download" in msg and "\n" not in msg


def test_train_n_is_one_class_balanced_subset_for_every_seed(tmp_path, debian):
    import train_common as tc
    write_fashion_mnist(tmp_path, gz=True, n_train=60)  # 6 images a class

    def train_set(*flags):
        argv = ["--dataset", "fashion_mnist", "--data-dir", str(tmp_path), "--device", "cpu", *flags]
        return tc.Run(tc.parse_args(tc.base_parser("", "st"), argv)).train_set

    full, a, b = train_set(), train_set("--train-n", "25"), train_set("--train-n", "25", "--seed", "1")
    assert len(full) == 60 and len(a) == 25 and torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    counts = torch.bincount(a.y, minlength=10)
    assert counts.max() - counts.min() <= 1
    rows = {bytes(x.flatten().tolist()): int(y) for x, y in zip(full.x, full.y)}  # a subset of the real images
    assert all(rows[bytes(x.flatten().tolist())] == int(y) for x, y in zip(a.x, a.y))
    # classes that run out leave their turns to the others
    y = torch.tensor([0] * 40 + [1] * 5 + [2] * 5)
    part = data.train_subset(data.ImageTensors(torch.zeros(50, 1, 1, 1, dtype=torch.uint8), y), 20)
    assert torch.bincount(part.y).tolist() == [10, 5, 5]


def test_train_n_above_the_training_set_is_one_error_line_and_writes_nothing(tmp_path, monkeypatch, capsys):
    import train_common as tc
    import train_st
    monkeypatch.delenv("MOE_DEBUG", raising=False)
    monkeypatch.setattr(sys, "argv", ["train_st.py", "--dataset", "digits", "--train-n", "5000", "--device", "cpu",
                                      "--out", str(tmp_path / "run")])
    with pytest.raises(SystemExit) as exit_:
        tc.cli(train_st.main)
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(lines) == 1, lines
    assert lines[0].startswith("error: --train-n 5000") and str(len(data.load_dataset("digits")[0])) in lines[0]
    assert not (tmp_path / "run").exists()


def test_train_st_runs_on_fashion_mnist(tmp_path, debian):
    import train_st
    write_fashion_mnist(tmp_path / "data", gz=True)
    out = tmp_path / "run"
    argv = ["--dataset", "fashion_mnist", "--data-dir", str(tmp_path / "data"), "--epochs", "1", "--eval-n", "4",
            "--eval-steps", "1", "--out", str(out), "--device", "cpu"]
    train_st.main(argv)
    [row] = list(csv.DictReader(open(out / "log.csv")))
    assert row["epoch"] == "1" and math.isfinite(float(row["loss"])) and 0 <= float(row["ra"]) <= 100
    with pytest.raises(ValueError, match="train_n=0"):  # another training set is another run
        train_st.main(argv + ["--epochs", "2", "--resume", "--train-n", "10"])


# ----------------------------------------------------------------------------- TensorLoader

def id_images(n=40, shape=(3, 8, 8)):
    """Image i is constant with value i (uint8), label i: the label tells which image a batch row is."""
    x = torch.arange(1, n + 1, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, *shape).contiguous()
    return data.ImageTensors(x, torch.arange(1, n + 1), scale=float(n))


def batches_of(loader, epoch):
    loader.set_epoch(epoch)
    return [(x.clone(), y.clone()) for x, y in loader]


def test_tensor_loader_is_seeded_by_seed_and_epoch():
    info = data.DatasetInfo(40, (3, 8, 8), (0.5,) * 3, (0.25,) * 3, 0.1, 2, True)
    loader = data.TensorLoader(id_images(), 8, torch.device("cpu"), True, info, seed=3)
    assert len(loader) == 5
    first = batches_of(loader, 4)
    torch.manual_seed(123)  # the global RNG must not matter
    torch.rand(10)
    again = batches_of(loader, 4)
    assert len(first) == 5
    for (x1, y1), (x2, y2) in zip(first, again):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    other = batches_of(loader, 5)
    assert not all(torch.equal(a[1], b[1]) for a, b in zip(first, other)), "epochs must reshuffle"
    other_seed = batches_of(data.TensorLoader(id_images(), 8, torch.device("cpu"), True, info, seed=4), 4)
    assert not all(torch.equal(a[1], b[1]) for a, b in zip(first, other_seed))
    ys = torch.cat([y for _, y in first])
    assert sorted(ys.tolist()) == list(range(1, 41))  # one epoch is a permutation
    for x, y in first:  # augmentation keeps shape, range and the row's own image
        assert x.shape == (8, 3, 8, 8) and x.dtype == torch.float32
        assert x.min() >= 0 and x.max() <= 1
        centre = x[:, :, 2:-2, 2:-2]  # padding 2 only ever moves zeros into the border
        assert torch.equal(centre, (y.float() / 40).view(-1, 1, 1, 1).expand_as(centre))
    assert any((x == 0).any() for x, _ in first), "random crop with padding never shifted an image"


def test_tensor_loader_without_augmentation_and_drop_last():
    loader = data.TensorLoader(id_images(n=20), 8, torch.device("cpu"), shuffle=False, info=None)
    got = list(loader)
    assert len(loader) == len(got) == 2
    assert torch.equal(torch.cat([y for _, y in got]), torch.arange(1, 17))
    assert torch.equal(got[0][0], id_images(n=20).pixels(torch.arange(8)))
    keep = data.TensorLoader(id_images(n=20), 8, torch.device("cpu"), shuffle=False, drop_last=False)
    assert len(keep) == 3 and sum(len(y) for _, y in keep) == 20


def test_synthetic_cifar10_runs_the_pipeline_at_paper_shapes_without_files(tmp_path, monkeypatch):
    """synthetic_cifar10: CIFAR-10's shape, classes and normalisation from random pixels; train, resume, evaluate."""
    import eval as evaluate
    import train_rter
    monkeypatch.setitem(data.SYNTHETIC, "synthetic_cifar10", ("cifar10", 96, 24))  # the real sizes: 50,000 / 10,000
    train, test = data.load_dataset("synthetic_cifar10", data_dir=str(tmp_path / "nothing-here"))
    assert (len(train), len(test)) == (96, 24) and train.x.shape[1:] == (3, 32, 32) and train.x.dtype == torch.uint8
    assert int(train.y.max()) < 10 and data.dataset_info("synthetic_cifar10") == data.dataset_info("cifar10")
    again, _ = data.load_dataset("synthetic_cifar10")
    assert torch.equal(again.x, train.x)  # seeded: every process and every resume sees the same images
    out = tmp_path / "run"
    argv = ["--dataset", "synthetic_cifar10", "--arch", "cnn", "--bs", "32", "--eval-n", "16", "--eval-steps", "1",
            "--steps", "1", "--out", str(out)]
    train_rter.main(argv + ["--epochs", "1"])
    train_rter.main(argv + ["--epochs", "2", "--resume"])
    results = evaluate.main(["--ckpt", str(out / "ckpt.pt"), "--attack", "pgd,aa", "--steps", "2", "--n", "16",
                             "--aa-n", "8", "--aa-version", "quick"])
    assert results["pgd"]["n"] == 16 and results["aa"]["n"] == 8 and results["pgd"]["dataset"] == "synthetic_cifar10"
    assert [int(r["epoch"]) for r in csv.DictReader(open(out / "log.csv"))] == [1, 2]


# ----------------------------------------------------------------------------- TinyImageNet at 224, as the public code

def test_resize_is_torchvisions_resize_and_keeps_the_pixel_box():
    """data.resize(x, 224) is torchvision's Resize(224) on a tensor (the public code's TinyImageNet pipeline)."""
    from torchvision import transforms
    x = torch.randint(0, 256, (4, 3, 64, 64), generator=torch.Generator().manual_seed(0)).float() / 255
    x[0] = 1.0  # a white image stays white: the weights of every output pixel sum to 1
    out = data.resize(x, 224)
    assert out.shape == (4, 3, 224, 224) and torch.equal(out, transforms.Resize(224)(x))
    assert out.min() >= 0 and out.max() <= 1 and torch.equal(out[0], torch.ones(3, 224, 224))
    assert data.resize(out, 224) is out  # already at size: untouched


def test_tinyimagenet_is_served_at_224_after_augmenting_at_64(monkeypatch):
    """Stored as 64 x 64 uint8; every batch and the test subset reach the model at 224: the 64-pixel batch (cropped and
    flipped at 64, as the public code augments before its Resize) resized. Models and routers take 3 x 224 x 224."""
    import dataclasses
    monkeypatch.setitem(data.SYNTHETIC, "synthetic_tinyimagenet", ("tinyimagenet", 12, 7))
    info = data.dataset_info("synthetic_tinyimagenet")
    assert data.model_shape(info) == (3, 224, 224) and data.model_shape(data.dataset_info("cifar10")) == (3, 32, 32)
    train, test = data.load_dataset("synthetic_tinyimagenet")
    assert train.x.shape == (12, 3, 64, 64) and train.x.dtype == torch.uint8 and train.size == test.size == 224
    assert data.train_subset(train, 6).size == 224 and train.to("cpu").size == 224
    at64 = data.TensorLoader(dataclasses.replace(train, size=0), 4, torch.device("cpu"), True, info, seed=1)
    at224 = data.TensorLoader(train, 4, torch.device("cpu"), True, info, seed=1)
    half = data.TensorLoader(train, 4, torch.device("cpu"), True, info, seed=1, rank=1, world=2)
    for (x64, y64), (x224, y224), (xh, yh) in zip(batches_of(at64, 2), batches_of(at224, 2), batches_of(half, 2)):
        assert x64.shape == (4, 3, 64, 64)
        assert x224.shape == (4, 3, 224, 224) and torch.equal(x224, data.resize(x64, 224)) and torch.equal(y224, y64)
        assert torch.equal(xh, x224[1::2]) and torch.equal(yh, y224[1::2])  # a DDP rank: its rows, resized
    monkeypatch.setattr(data, "RESIZE_CHUNK", 3)  # 5 points: a chunk of 3, one of 2
    x, y = data.test_subset(test, 5)
    idx = data.subset_index(len(test), 5)
    assert x.shape == (5, 3, 224, 224) and x.dtype == torch.float32 and torch.equal(y, test.y[idx])
    assert torch.equal(x, data.resize(test.pixels(idx), 224))
    assert torch.equal(data.test_subset(dataclasses.replace(test, size=0), 5)[0], test.pixels(idx))
