"""A run's files: atomic writes, checkpoints read safely, models rebuilt from them, the log inside the checkpoint."""
import contextlib
import csv
import io
import math
import os

import torch

import data
from moe import DualMoE, MoE, build_moe
from moe_cnn import ARCHS as CNN_ARCHS, MoECNN, build_moe_cnn


def atomic_save(obj, path: str, save=None) -> None:
    """Write a file whole or not at all: the old file stays until the new one is complete (also on a full disk)."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        (save or torch.save)(obj, tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:  # torch.save reports a full disk as a RuntimeError
        with contextlib.suppress(OSError):
            os.remove(tmp)
        reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise OSError(f"could not write {path} ({reason}); is the disk full or read-only? "
                      "The previous version of the file is kept") from None


def write_text(text: str, path: str) -> None:
    with open(path, "w", newline="") as f:
        f.write(text)


def atomic_write(path: str, text: str) -> None:
    """Write a text file whole or not at all (run_all.sh reuses any result file it finds)."""
    atomic_save(text, path, write_text)


def load_checkpoint(path: str) -> dict:
    """Read a checkpoint dict with weights_only=True; a one-line ValueError when missing or damaged."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # zip reader, unpickler and EOF errors all mean a damaged file
        raise ValueError(f"checkpoint {path} is truncated or corrupted ({type(exc).__name__})") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "args" not in ckpt:
        raise ValueError(f"{path} is not a checkpoint of this toolkit (no 'model' / 'args')")
    return ckpt


def load_weights(module: torch.nn.Module, state: dict, path: str) -> None:
    try:
        module.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        detail = first[1].strip() if len(first) > 1 else first[0]
        raise ValueError(f"checkpoint {path} holds another architecture than this model ({detail})") from None


def build_model_from_args(a: dict, pretrained: bool = False, side: int = None) -> MoE | MoECNN:
    """The MoE (or MoE-CNN, dense or sparse network) described by a run's args (a dict), untrained unless pretrained;
    for inputs of side x side pixels (default: what the dataset's loaders serve, data.model_shape)."""
    info = data.dataset_info(a["dataset"])
    shape = data.model_shape(info) if side is None else (info.shape[0], side, side)
    if a["arch"] in CNN_ARCHS:
        if a.get("method") == "sparse":  # the full-width network, keeping a share `scale` of every layer's channels
            return build_moe_cnn(a["arch"], 1, 1.0, info.num_classes, shape, info.mean, info.std, a["scale"])
        return build_moe_cnn(a["arch"], a["experts"], a.get("scale", 1.0), info.num_classes, shape, info.mean,
                             info.std, router=a.get("router", "ours"), stem=a.get("stem", "full"),  # absent: older runs
                             ste=a.get("ste"))
    return build_moe(a["arch"], a["experts"], a["topk"], info.num_classes, shape, info.mean, info.std,
                     pretrained=pretrained)


def router_side(a: dict, state: dict, prefix: str = "") -> int | None:
    """H = W of the inputs an MoE's router was trained on, its weight being (E, C * H * W); None without one (an
    MoE-CNN's router pools). A TinyImageNet run from before the 224 resize read 64 x 64, and rebuilds so."""
    weight = state.get(prefix + "router.weight")
    return None if weight is None else math.isqrt(weight.shape[1] // data.dataset_info(a["dataset"]).shape[0])


def model_from_checkpoint(path: str, alpha: float = None, combine: str = None):
    """(model, ckpt) for a single-MoE or a JTDMoE checkpoint; dual models take alpha/combine from it unless given."""
    ckpt = load_checkpoint(path)
    a, state = ckpt["args"], ckpt["model"]
    if a.get("kind") == "dual":
        std, rob = a["std_args"], a["rob_args"]
        model = DualMoE(build_model_from_args(std, side=router_side(std, state, "std.")),
                        build_model_from_args(rob, side=router_side(rob, state, "rob.")),
                        a["alpha"] if alpha is None else alpha, combine or a.get("combine", "logits"))
    else:
        model = build_model_from_args(a, side=router_side(a, state))
    load_weights(model, ckpt["model"], path)
    return model, ckpt


def load_dense_weights(model: MoECNN, path: str) -> None:
    """A dense checkpoint's weights into a sparse network of the same arch; the masks keep their own scores."""
    dense, _ = model_from_checkpoint(path)
    try:
        missing, unexpected = model.load_state_dict(dense.state_dict(), strict=False)
    except RuntimeError:  # shapes differ
        missing, unexpected = [], ["(shapes differ)"]
    if unexpected or any(not k.endswith(".scores") for k in missing):
        raise ValueError(f"--init {path} is not a dense full-width network of this arch (train it with train_at.py "
                         "--method at --experts 1 --scale 1 and the same --arch)")


def read_log(path: str) -> list:
    """log.csv's rows (strings), [] when there is none; only for checkpoints older than the log inside them."""
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def log_csv(rows: list) -> str:
    """log.csv's text: one row per epoch, the union of every row's columns (evaluated epochs have more)."""
    columns = list(dict.fromkeys(k for row in rows for k in row))
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns, restval="")
    writer.writeheader()
    writer.writerows(rows)
    return text.getvalue()


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
