"""Datasets and loaders: digits (offline), fashion_mnist (idx files from --data-dir, the Debian package or --download),
cifar10, cifar100, tinyimagenet, imagenet, and synthetic_cifar10 / synthetic_tinyimagenet (random images of the real
shapes and sizes: paper-shaped speed runs with no download).
Images come out as pixels in [0, 1].

Small datasets are held as uint8 tensors and augmented on the device (random crop with padding, flip), then resized
on the device where the models see another size (TinyImageNet: 224); ImageNet goes through torchvision's ImageFolder
and a DataLoader.
"""
import dataclasses
import gzip
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class DatasetInfo:
    num_classes: int
    shape: tuple  # (C, H, W)
    mean: tuple
    std: tuple
    eps: float  # default attack budget, pixel units
    crop_pad: int  # random-crop padding for augmentation (0: none)
    flip: bool  # random horizontal flip for augmentation
    size: int = 0  # the side the models see: images are resized to it after augmentation, on the device (0: as stored)


DATASETS = {
    # digits: mean / std of the fixed training split; no flip (a mirrored digit is another symbol).
    "digits": DatasetInfo(10, (1, 8, 8), (0.3054,), (0.3761,), 0.15, 1, False),
    # fashion_mnist: mean / std of the 60,000 training images; flipped clothes are still the same clothes
    "fashion_mnist": DatasetInfo(10, (1, 28, 28), (0.2860,), (0.3530,), 0.1, 2, True),
    "cifar10": DatasetInfo(10, (3, 32, 32), (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616), 8 / 255, 4, True),
    "cifar100": DatasetInfo(100, (3, 32, 32), (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), 8 / 255, 4, True),
    # TinyImageNet: resized to 224 before the model, as the public code does for every network (the resolution of
    # ViT-S/16's weights), so the router, the eps-ball and the clamp are in 224-pixel space, as there
    "tinyimagenet": DatasetInfo(200, (3, 64, 64), (0.4802, 0.4481, 0.3975), (0.2770, 0.2691, 0.2821), 2 / 255, 8, True,
                                224),
    "imagenet": DatasetInfo(1000, (3, 224, 224), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 2 / 255, 0, True),
}
# name: (the real dataset it stands in for, training images, test images); nothing can be learned from them
SYNTHETIC = {"synthetic_cifar10": ("cifar10", 50_000, 10_000), "synthetic_tinyimagenet": ("tinyimagenet", 100_000,
                                                                                         10_000)}
DATASETS.update({name: DATASETS[real] for name, (real, _, _) in SYNTHETIC.items()})
TINYIMAGENET_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
FASHION_FILES = (("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),  # (images, labels): train, then test
                 ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"))
FASHION_DEBIAN = "/usr/share/datasets/fashion-mnist"  # where `apt-get install dataset-fashion-mnist` puts the .gz files


def dataset_info(name: str) -> DatasetInfo:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return DATASETS[name]


def model_shape(info: DatasetInfo) -> tuple:
    """(C, H, W) of a model's input: the images' shape, or C x size x size where the loaders resize them."""
    return (info.shape[0], info.size, info.size) if info.size else info.shape


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """x (N, C, H, W) at size x size: bilinear, antialiased, bit for bit torchvision's Resize(size) on a square tensor
    (the public code's). Each output pixel is a convex combination of input pixels, so [0, 1] stays [0, 1]."""
    if x.shape[-2:] == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


RESIZE_CHUNK = 500  # test images resized at a time: 10,000 TinyImageNet images at 224 are 6 GB, their chunks 0.3 GB


@dataclass
class ImageTensors:
    """Images as uint8 (N, C, H, W) with integer labels; pixel value = x / scale. The models see them at size x size
    (0: as stored): the loaders resize after augmenting, so the uint8 set stays small."""
    x: torch.Tensor
    y: torch.Tensor
    scale: float = 255.0
    size: int = 0

    def __len__(self):
        return len(self.y)

    def to(self, device):
        return dataclasses.replace(self, x=self.x.to(device), y=self.y.to(device))

    def pixels(self, idx):
        """Images idx as stored, in [0, 1]."""
        return self.x[idx].float() / self.scale

    def served(self, pixels):
        """pixels (N, C, H, W) as the models see them: resized to size (unchanged at size 0)."""
        return resize(pixels, self.size) if self.size else pixels


# ----------------------------------------------------------------------------- the datasets

def load_digits_split():
    """scikit-learn's bundled 8x8 digits (1,797 real images), fixed stratified 80/20 split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.uint8).unsqueeze(1)  # values 0..16
    y = torch.tensor(digits.target, dtype=torch.long)
    train_idx, test_idx = train_test_split(range(len(y)), test_size=0.2, stratify=digits.target, random_state=0)
    return (ImageTensors(x[train_idx], y[train_idx], 16.0), ImageTensors(x[test_idx], y[test_idx], 16.0))


def load_synthetic(name: str):
    """Uniform random uint8 images and labels, seeded, with a real dataset's shape, classes and size."""
    real, n_train, n_test = SYNTHETIC[name]
    info, gen = DATASETS[real], torch.Generator().manual_seed(0)

    def images(n):
        return ImageTensors(torch.randint(0, 256, (n, *info.shape), dtype=torch.uint8, generator=gen),
                            torch.randint(0, info.num_classes, (n,), generator=gen))
    return images(n_train), images(n_test)


CIFAR = {"cifar10": ("CIFAR10", "CIFAR-10"), "cifar100": ("CIFAR100", "CIFAR-100")}  # torchvision class, name


def load_cifar(name: str, data_dir: str, download: bool):
    """CIFAR-10 or CIFAR-100 (fine labels) from the python version; torchvision only downloads (md5-checked)."""
    from torchvision import datasets
    cls, title = getattr(datasets, CIFAR[name][0]), CIFAR[name][1]
    where = os.path.join(data_dir, cls.base_folder)
    if not download and not os.path.isdir(where):
        raise FileNotFoundError(
            f"{title} not found: looked for {where}; run with --download, or unpack the python version "
            f"of {title} ({cls.filename}) into --data-dir")
    if download:
        try:
            cls(data_dir, train=True, download=True)
        except (OSError, RuntimeError) as exc:  # no network, refused connection, disk full, a corrupted download
            raise FileNotFoundError(f"could not download {title} into {data_dir} ({exc}); "
                                    f"fetch {cls.filename} by hand and unpack it there") from None
    # read here, not through torchvision's class: its md5 check refuses any file but the real one, so a few
    # images in the real format (the paper presets' smoke test) could not run; a damaged file still fails below
    label = "fine_labels" if name == "cifar100" else "labels"
    splits = []
    for files in ([f for f, _ in cls.train_list], [f for f, _ in cls.test_list]):
        xs, ys = [], []
        for f in files:
            blob = read_pickle(os.path.join(where, f), title, where)
            xs.append(torch.as_tensor(blob["data"], dtype=torch.uint8).view(-1, 3, 32, 32))
            ys.extend(blob[label])
        splits.append(ImageTensors(torch.cat(xs), torch.tensor(ys)))
    read_pickle(os.path.join(where, cls.meta["filename"]), title, where)  # the class names: part of the set
    return splits


def read_pickle(path: str, title: str, where: str) -> dict:
    """One file of the python version of CIFAR; a one-line FileNotFoundError when missing or damaged."""
    import pickle
    try:
        with open(path, "rb") as f:
            blob = pickle.load(f, encoding="latin1")
        if not path.endswith("meta"):
            n = len(blob["data"])
            if len(blob.get("labels", blob.get("fine_labels", ()))) != n or blob["data"].shape[1:] != (3072,):
                raise ValueError("images and labels disagree")
    except Exception as exc:  # missing, truncated or another format: unpickling raises many kinds
        raise FileNotFoundError(f"{title} in {where} is incomplete or corrupted ({os.path.basename(path)}: "
                                f"{type(exc).__name__}); delete it and run with --download") from None
    return blob


def fashion_mnist_folders(data_dir: str) -> tuple:
    """Where Fashion-MNIST is looked for, in order: torchvision's layout, --data-dir itself, the Debian package's."""
    return os.path.join(data_dir, "FashionMNIST", "raw"), data_dir, FASHION_DEBIAN


def fashion_mnist_files(data_dir: str):
    """The four idx files (plain before .gz) of the first folder that holds them all, or None."""
    for folder in fashion_mnist_folders(data_dir):
        paths = [os.path.join(folder, f) for pair in FASHION_FILES for f in pair]
        found = [next((q for q in (p, p + ".gz") if os.path.isfile(q)), None) for p in paths]
        if all(found):
            return found
    return None


def load_fashion_mnist(data_dir: str, download: bool):
    """Fashion-MNIST, the official 60,000 / 10,000 split, from its idx files. Read here, not through torchvision's
    class: its reader opens no .gz, and the Debian package installs only those; torchvision only downloads."""
    files = fashion_mnist_files(data_dir)
    if files is None and download:
        from torchvision.datasets import FashionMNIST
        try:
            FashionMNIST(data_dir, train=True, download=True)  # fetches all four files (md5-checked) into raw/
        except (OSError, RuntimeError) as exc:  # no network, refused connection, disk full, a corrupted download
            raise FileNotFoundError(f"could not download Fashion-MNIST into {data_dir} ("
                                    f"{' '.join(str(exc).split())}); install it with `apt-get install "
                                    "dataset-fashion-mnist`") from None
        files = fashion_mnist_files(data_dir)
    if files is None:
        raise FileNotFoundError(
            f"Fashion-MNIST not found: looked for {', '.join(f for pair in FASHION_FILES for f in pair)} (plain or "
            f".gz) in {', '.join(fashion_mnist_folders(data_dir))}; install it with `apt-get install "
            "dataset-fashion-mnist`, or run with --download")
    splits = []
    for images, labels in (files[:2], files[2:]):
        x, y = read_idx(images, 0x803, (28, 28)), read_idx(labels, 0x801, ())
        if len(x) != len(y):
            raise idx_error(labels, f"{len(y)} labels for the {len(x)} images of {os.path.basename(images)}")
        if len(y) and int(y.max()) >= 10:
            raise idx_error(labels, f"label {int(y.max())} of 10 classes")
        splits.append(ImageTensors(x.unsqueeze(1), y.long()))
    return splits


def read_idx(path: str, magic: int, dims: tuple) -> torch.Tensor:
    """One idx file (plain or .gz) as uint8 (N, *dims): a big-endian header of magic, N and dims, then the bytes."""
    import numpy as np
    try:
        with (gzip.open if path.endswith(".gz") else open)(path, "rb") as f:
            blob = f.read()
        header = np.frombuffer(blob, ">u4", 2 + len(dims)).tolist()
        if header[0] != magic or tuple(header[2:]) != dims:
            raise ValueError(f"header {header}, not magic {magic:#x} and N x {dims}")
        body = np.frombuffer(blob, np.uint8, offset=4 * len(header))
        if body.size != header[1] * int(np.prod(dims)):
            raise ValueError(f"{body.size} bytes of data for {header[1]} items")
    except Exception as exc:  # gzip, zlib, EOF and short-buffer errors all mean a damaged file
        raise idx_error(path, f"{type(exc).__name__}: {exc}") from None
    return torch.from_numpy(body.copy()).view(header[1], *dims)


def idx_error(path: str, why: str) -> FileNotFoundError:
    return FileNotFoundError(f"Fashion-MNIST file {path} is incomplete or corrupted ({' '.join(why.split())}); "
                             "delete it and get it again (run with --download, or `apt-get install --reinstall "
                             "dataset-fashion-mnist`)")


def read_rgb(path: str) -> torch.Tensor:
    """One image file as uint8 (3, H, W)."""
    from PIL import Image
    import numpy as np
    with Image.open(path) as img:
        return torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.uint8).copy()).permute(2, 0, 1)


def tinyimagenet_root(data_dir: str, download: bool) -> str:
    root = os.path.join(data_dir, "tiny-imagenet-200")
    if download and not os.path.isdir(root):
        from torchvision.datasets.utils import download_and_extract_archive
        try:
            download_and_extract_archive(TINYIMAGENET_URL, data_dir)
        except OSError as exc:
            raise FileNotFoundError(f"could not download TinyImageNet into {data_dir} ({exc}); "
                                    f"fetch {TINYIMAGENET_URL} by hand and unzip it there") from None
    for need in ("wnids.txt", "train", os.path.join("val", "val_annotations.txt")):
        if not os.path.exists(os.path.join(root, need)):
            raise FileNotFoundError(
                f"TinyImageNet not found: looked for {os.path.join(root, need)}; run with --download, "
                f"or unzip {TINYIMAGENET_URL} into --data-dir")
    return root


def load_tinyimagenet(data_dir: str, download: bool):
    """The official layout: train/<wnid>/images/*.JPEG, val/images/*.JPEG + val/val_annotations.txt.

    Decoded once into uint8 tensors cached beside the data (uint8_cache.pt).
    """
    root = tinyimagenet_root(data_dir, download)
    cache = os.path.join(root, "uint8_cache.pt")
    if os.path.exists(cache):
        try:
            blob = torch.load(cache, weights_only=True)
            return [ImageTensors(blob[f"{s}_x"], blob[f"{s}_y"]) for s in ("train", "val")]
        except Exception as exc:  # truncated zip, wrong keys, not a tensor dict: all mean a damaged cache
            raise ValueError(f"the TinyImageNet cache {cache} is damaged ({type(exc).__name__}); "
                             "delete it and it is rebuilt from the images") from None
    with open(os.path.join(root, "wnids.txt")) as f:
        wnids = [line.strip() for line in f if line.strip()]
    label = {w: i for i, w in enumerate(wnids)}
    train_files = []
    for wnid in wnids:
        folder = os.path.join(root, "train", wnid, "images")
        train_files += [(os.path.join(folder, name), label[wnid]) for name in sorted(os.listdir(folder))]
    with open(os.path.join(root, "val", "val_annotations.txt")) as f:
        rows = [line.split("\t") for line in f if line.strip()]
    val_files = [(os.path.join(root, "val", "images", r[0]), label[r[1]]) for r in rows]
    from tqdm import tqdm
    blob = {}
    for split, files in (("train", train_files), ("val", val_files)):
        blob[f"{split}_x"] = torch.stack([read_rgb(p) for p, _ in tqdm(files, desc=f"decoding {split}")])
        blob[f"{split}_y"] = torch.tensor([c for _, c in files])
    tmp = cache + ".tmp"
    torch.save(blob, tmp)
    os.replace(tmp, cache)
    return [ImageTensors(blob[f"{s}_x"], blob[f"{s}_y"]) for s in ("train", "val")]


def load_imagenet(data_dir: str):
    """ImageFolder train/ and val/ (class folders), resized to 224 with the usual crops."""
    from torchvision import datasets, transforms
    for split in ("train", "val"):
        if not os.path.isdir(os.path.join(data_dir, split)):
            raise FileNotFoundError(
                f"ImageNet not found: looked for {os.path.join(data_dir, split)}; ImageNet cannot be downloaded "
                "automatically: get ILSVRC2012 and arrange train/ and val/ in class folders (ImageFolder layout)")
    train_tf = transforms.Compose([transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip(),
                                   transforms.ToTensor()])
    val_tf = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor()])
    return (datasets.ImageFolder(os.path.join(data_dir, "train"), train_tf),
            datasets.ImageFolder(os.path.join(data_dir, "val"), val_tf))


def load_dataset(name: str, data_dir: str = "data", download: bool = False):
    """(train, test) for a dataset name: ImageTensors served at the dataset's size (info.size), or ImageFolder datasets
    for imagenet."""
    splits, size = load_images(name, data_dir, download), dataset_info(name).size
    return [dataclasses.replace(split, size=size) for split in splits] if size else splits


def load_images(name: str, data_dir: str = "data", download: bool = False):
    """(train, test) for a dataset name as stored: ImageTensors, or ImageFolder datasets for imagenet."""
    dataset_info(name)
    if name == "digits":
        return load_digits_split()
    if name in SYNTHETIC:
        return load_synthetic(name)
    if name == "fashion_mnist":
        return load_fashion_mnist(data_dir, download)
    if name in CIFAR:
        return load_cifar(name, data_dir, download)
    if name == "tinyimagenet":
        return load_tinyimagenet(data_dir, download)
    return load_imagenet(data_dir)


# ----------------------------------------------------------------------------- loaders

def to_device(t: torch.Tensor, device) -> torch.Tensor:
    """t on device; to a GPU from pinned memory, without making the host wait for the copy."""
    if torch.device(device).type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def random_crop_flip(x, pad: int, flip: bool, gen: torch.Generator):
    """Random crop after zero padding and random horizontal flip, batched on x's device."""
    n, _, h, w = x.shape
    if pad:
        padded = F.pad(x, (pad, pad, pad, pad))
        dy, dx = (to_device(torch.randint(0, 2 * pad + 1, (n,), generator=gen), x.device) for _ in range(2))
        rows = (dy[:, None] + torch.arange(h, device=x.device))[:, :, None]
        cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, :]
        x = padded[torch.arange(n, device=x.device)[:, None, None], :, rows, cols].permute(0, 3, 1, 2)
    if flip:
        mirror = to_device(torch.rand(n, generator=gen) < 0.5, x.device)
        x = torch.where(mirror[:, None, None, None], x.flip(3), x)
    return x


class TensorLoader:
    """Mini-batches of an ImageTensors set, shuffled and augmented from a generator seeded by (seed, epoch).

    The same (seed, epoch) gives the same batches, which makes --resume exact. Under DDP every process
    draws the same global batch and keeps its rows rank::world.
    """

    def __init__(self, data: ImageTensors, bs: int, device, shuffle=True, info: DatasetInfo = None, seed=0,
                 drop_last=True, rank=0, world=1):
        self.data, self.bs, self.device = data.to(device), bs, device
        self.shuffle, self.info, self.seed, self.drop_last = shuffle, info, seed, drop_last
        self.rank, self.world = rank, world
        self.epoch = 0

    def set_epoch(self, epoch: int):
        self.epoch = epoch

    def __len__(self):
        n = len(self.data)
        return n // self.bs if self.drop_last and n >= self.bs else -(-n // self.bs)

    def __iter__(self):
        gen = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
        n = len(self.data)
        order = torch.randperm(n, generator=gen) if self.shuffle else torch.arange(n)
        for b in range(len(self)):
            idx = to_device(order[b * self.bs:(b + 1) * self.bs], self.device)
            x = self.data.pixels(idx)
            if self.info is not None:  # at the stored size, as the public code augments before its Resize
                x = random_crop_flip(x, self.info.crop_pad, self.info.flip, gen)
            yield self.data.served(x[self.rank::self.world]), self.data.y[idx][self.rank::self.world]


class FolderLoader:
    """A DataLoader over an ImageFolder whose order is seeded by (seed, epoch); batches moved to the device."""

    def __init__(self, dataset, bs: int, device, shuffle=True, seed=0, workers=8, rank=0, world=1):
        self.device = device
        self.sampler = torch.utils.data.DistributedSampler(dataset, world, rank, shuffle, seed, drop_last=shuffle)
        self.loader = torch.utils.data.DataLoader(dataset, bs // world, sampler=self.sampler, num_workers=workers,
                                                  drop_last=shuffle,
                                                  pin_memory=torch.device(device).type == "cuda")

    def set_epoch(self, epoch: int):
        self.sampler.set_epoch(epoch)

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        for x, y in self.loader:
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)


def train_loader(train, info: DatasetInfo, bs: int, device, seed: int, augment=True, workers=8, rank=0, world=1):
    """Shuffled training batches of global size bs; under DDP each process gets its bs / world rows."""
    if isinstance(train, ImageTensors):
        return TensorLoader(train, bs, device, True, info if augment else None, seed, True, rank, world)
    return FolderLoader(train, bs, device, True, seed, workers, rank, world)


def subset_index(total: int, n: int = 0, seed: int = 0) -> torch.Tensor:
    """Sorted indices of a fixed subset of n of total test points (all when n <= 0): a prefix of one seeded
    permutation, so a smaller subset (AutoAttack's) always lies inside a larger one (PGD's)."""
    if n <= 0 or n >= total:
        return torch.arange(total)
    return torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:n].sort().values


def train_subset(train, n: int = 0, seed: int = 0):
    """A fixed class-balanced subset of n training points (all when n <= 0), the same for every run: the classes take
    turns, each giving its next point of one seeded permutation, so their counts differ by at most one while they last.
    """
    if n > len(train):  # silently training on all of them would record a subset that was never used
        raise ValueError(f"--train-n {n} is more than the {len(train)} training images")
    if n <= 0 or n == len(train):
        return train
    y = train.y if isinstance(train, ImageTensors) else torch.tensor(train.targets)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    ys = y[order]
    by_class = torch.sort(ys, stable=True).indices  # positions in order, grouped by class
    counts = torch.bincount(ys)
    turn = torch.empty_like(order)  # a point's rank within its class
    turn[by_class] = torch.arange(len(y)) - (torch.cumsum(counts, 0) - counts)[ys[by_class]]
    idx = order[torch.sort(turn, stable=True).indices[:n]].sort().values
    if isinstance(train, ImageTensors):
        return dataclasses.replace(train, x=train.x[idx], y=train.y[idx])
    return torch.utils.data.Subset(train, idx.tolist())


def test_subset(test, n: int = 0, seed: int = 0):
    """A fixed subset of n test points (all when n <= 0): pixel tensors (x, y) on the CPU, as the models see them."""
    idx = subset_index(len(test), n, seed)
    if isinstance(test, ImageTensors):
        if not test.size:
            return test.pixels(idx), test.y[idx]
        x = torch.empty(len(idx), test.x.shape[1], test.size, test.size)
        for start in range(0, len(idx), RESIZE_CHUNK):  # into one tensor: a list of chunks would double the peak
            x[start:start + RESIZE_CHUNK] = test.served(test.pixels(idx[start:start + RESIZE_CHUNK]))
        return x, test.y[idx]
    xs, ys = zip(*(test[int(i)] for i in idx))
    return torch.stack(xs), torch.tensor(ys)
