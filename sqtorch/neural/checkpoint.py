"""Reading DeepSets checkpoints safely: no code from the file runs, and every failure is one line.

A checkpoint is Lightning's dict with the module's hyper-parameters (``env``, ``n``, ``k``,
``algo``, ``eval``, ``seed``; see :class:`sqtorch.neural.module.SubsampleQModule`), its
``state_dict`` and the ``global_step``. :func:`latest_checkpoint` picks the one with the highest
step in a run dir, whatever its file name; :func:`check_compatible` refuses to resume a run from a
checkpoint of another problem or network shape.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

HPARAM_KEYS = ("env", "n", "k", "algo")
SHAPE_KEYS = ("env", "n", "k", "algo.net")  # what a resumed run must share with its checkpoint


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint dict at ``path`` (``weights_only=True``); ``ValueError`` naming the file otherwise."""
    path = Path(path)
    try:
        ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
    except (OSError, EOFError, RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ValueError(f"{path}: not a readable checkpoint ({type(e).__name__}: {first[:200]})") from e
    hp = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    if not isinstance(hp, dict) or any(key not in hp for key in HPARAM_KEYS) or "state_dict" not in ckpt:
        raise ValueError(f"{path}: not a sqtorch DeepSets checkpoint (needs hyper_parameters {list(HPARAM_KEYS)})")
    return ckpt


def checkpoint_step(path: str | Path) -> int:
    """The optimizer step a checkpoint was saved at."""
    return int(load_checkpoint(path).get("global_step", 0))


def latest_checkpoint(path: str | Path) -> Path:
    """``path`` if it is a file; for a run dir the checkpoint under ``checkpoints/`` with the highest step.

    Ties go to ``last.ckpt`` (which is rewritten in place), then to the newest file.
    """
    p = Path(path)
    if p.is_file():
        return p
    folder = p / "checkpoints" if (p / "checkpoints").is_dir() else p
    files = sorted(folder.glob("*.ckpt")) if folder.is_dir() else []
    if not files:
        raise FileNotFoundError(f"ckpt_path = '{path}': no checkpoint file (*.ckpt) at {folder}")
    return max(files, key=lambda f: (checkpoint_step(f), f.name == "last.ckpt", f.stat().st_mtime))


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for key, value in d.items():
        out.update(_flat(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def check_compatible(path: str | Path, env: dict, n: int, k: int, net: dict, device: str | None = None) -> None:
    """Raise ``ValueError`` naming every differing key unless the checkpoint is of the same env, n, k and net.

    With ``device`` (``"cpu"`` / ``"cuda"``) the device type is compared too: the sampler's random
    generator state of one device type cannot continue on another.
    """
    ckpt = load_checkpoint(path)
    hp = ckpt["hyper_parameters"]
    saved = _flat({"env": hp["env"], "n": hp["n"], "k": hp["k"], "algo.net": hp["algo"].get("net", {})})
    now = _flat({"env": env, "n": n, "k": k, "algo.net": net})
    saved_device = (ckpt.get("sqtorch") or {}).get("device")
    if device is not None and saved_device is not None:
        saved["device"], now["device"] = saved_device, device
    diff = [f"{key}: {saved.get(key)!r} in the checkpoint, {now.get(key)!r} now"
            for key in sorted(set(saved) | set(now)) if saved.get(key) != now.get(key)]
    if diff:
        raise ValueError(f"ckpt_path = '{path}' is of another run; differing keys: {'; '.join(diff)}")
