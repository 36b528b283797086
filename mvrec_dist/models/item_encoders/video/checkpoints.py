"""Loading public pretrained checkpoints into the video encoders through explicit key maps.

A ``KeyMap`` says, for every tensor of the module's state dict, which public key(s) it comes from
(several keys are concatenated along dim 0: HF VideoMAE's separate query/key/value weights
become one fused ``qkv``), which public keys are deliberately not loaded and why (classifier
heads, pre-training decoders), and which module keys may be absent from a file (BatchNorm's
``num_batches_tracked``, missing from old torchvision files). Anything else is an error: a
missing key, an unexpected key, a shape mismatch, each named. Files are read with
``torch.load(weights_only=True)`` only; nothing is ever downloaded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import torch
from torch import Tensor, nn

__all__ = ["KeyMap", "LoadReport", "CheckpointError", "read_state_dict", "apply_key_map", "load_public_checkpoint"]

# Wrappers the public releases put around the state dict (MCG VideoMAE: "model" or "module").
_WRAPPERS = ("model", "module", "state_dict")
_MAX_LISTED = 20


class CheckpointError(ValueError):
    """A checkpoint could not be read or does not match the module; names the file and each key."""


@dataclass(frozen=True)
class KeyMap:
    """How a public checkpoint's tensors become a module's state dict.

    Attributes:
        layout: Name of the public layout (shown in errors and reports).
        sources: Module key -> public key(s); several are concatenated along dim 0.
        ignored: Regex (full match) of public keys not loaded -> the reason.
        optional: Module keys that may be absent from the file (the module keeps its value).
    """

    layout: str
    sources: Mapping[str, tuple[str, ...]]
    ignored: Mapping[str, str] = field(default_factory=dict)
    optional: frozenset[str] = frozenset()


@dataclass(frozen=True)
class LoadReport:
    """What a load did.

    Attributes:
        source: The file (or name) loaded from.
        layout: The key map's layout name.
        loaded: Module key -> the public key(s) it was filled from.
        ignored: Public key -> why it was not loaded.
        kept: Optional module keys absent from the file (their values were kept).
    """

    source: str
    layout: str
    loaded: dict[str, tuple[str, ...]]
    ignored: dict[str, str]
    kept: list[str]


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read a checkpoint file's state dict (unwrapping a top-level ``model``/``module``/``state_dict``).

    Args:
        path: Local ``.pth``/``.pt``/``.bin``/``.pyth`` file saved with ``torch.save``.

    Returns:
        Key -> tensor.

    Raises:
        CheckpointError: when the file is missing, is not a weights-only torch file, or holds no
            mapping of tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found (nothing is downloaded; give a local file)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError or others depending on the damage
        raise CheckpointError(f"{path}: not a readable weights-only torch checkpoint: {type(e).__name__}: {e}") from e
    for _ in range(2):  # e.g. {"model": {...}}; at most two levels are known to occur
        if isinstance(obj, Mapping) and not any(isinstance(v, Tensor) for v in obj.values()):
            inner = next((obj[k] for k in _WRAPPERS if k in obj and isinstance(obj[k], Mapping)), None)
            if inner is None:
                break
            obj = inner
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f"{path}: expected a state dict (mapping of names to tensors), got {type(obj).__name__}")
    bad = [k for k, v in obj.items() if not isinstance(v, Tensor)]
    if bad:
        raise CheckpointError(f"{path}: entries that are not tensors: {_listed(bad)}")
    return dict(obj)


def apply_key_map(module: nn.Module, state: Mapping[str, Tensor], key_map: KeyMap, *, source: str) -> LoadReport:
    """Fill ``module``'s state dict from a public ``state`` through ``key_map``.

    Args:
        module: The encoder to fill (its tensors are overwritten in place, strictly).
        state: Public key -> tensor.
        key_map: The layout's map (from the encoder's family module).
        source: Name for messages (the file path).

    Returns:
        A ``LoadReport``.

    Raises:
        CheckpointError: listing every missing key, unexpected key and shape mismatch, by name.
    """
    own = module.state_dict()
    problems: list[str] = []
    uncovered = sorted(set(own) - set(key_map.sources))
    if uncovered:
        problems.append(f"the {key_map.layout} key map does not cover module keys {_listed(uncovered)}")
    new_state: dict[str, Tensor] = {}
    loaded: dict[str, tuple[str, ...]] = {}
    kept: list[str] = []
    used: set[str] = set()
    for key, public in key_map.sources.items():
        if key not in own:
            problems.append(f"the {key_map.layout} key map names '{key}', which the module does not have")
            continue
        absent = [p for p in public if p not in state]
        if absent:
            if key in key_map.optional and len(absent) == len(public):
                new_state[key] = own[key]
                kept.append(key)
            else:
                problems.append(f"missing key {_listed(absent)} (for module '{key}')")
            continue
        used.update(public)
        parts = [state[p] for p in public]
        value = parts[0] if len(parts) == 1 else _concat(parts, public, problems)
        if value is None:
            continue
        if tuple(value.shape) != tuple(own[key].shape):
            problems.append(f"shape mismatch: {'+'.join(public)} is {tuple(value.shape)}, module '{key}' "
                            f"is {tuple(own[key].shape)}")
            continue
        new_state[key] = value.to(own[key].dtype)
        loaded[key] = tuple(public)
    ignored: dict[str, str] = {}
    unexpected = []
    for k in state:
        if k in used:
            continue
        reason = next((why for pattern, why in key_map.ignored.items() if re.fullmatch(pattern, k)), None)
        if reason is None:
            unexpected.append(k)
        else:
            ignored[k] = reason
    if unexpected:
        problems.append(f"unexpected key {_listed(sorted(unexpected))} (not in the {key_map.layout} layout)")
    if problems:
        raise CheckpointError(f"{source}: does not match the {key_map.layout} layout of {type(module).__name__}:\n  - "
                              + "\n  - ".join(problems))
    module.load_state_dict(new_state, strict=True)
    return LoadReport(source=source, layout=key_map.layout, loaded=loaded, ignored=ignored, kept=kept)


def load_public_checkpoint(module: nn.Module, path: str | Path, key_map: KeyMap) -> LoadReport:
    """Read ``path`` and load it into ``module`` through ``key_map`` (``read_state_dict`` + ``apply_key_map``).

    Args:
        module: The encoder to fill.
        path: Local checkpoint file in the public layout.
        key_map: The layout's map.

    Returns:
        A ``LoadReport``.

    Raises:
        CheckpointError: on any read or matching problem, naming the file and the keys.
    """
    return apply_key_map(module, read_state_dict(path), key_map, source=str(path))


def _concat(parts: list[Tensor], public: tuple[str, ...], problems: list[str]) -> Tensor | None:
    tails = {tuple(t.shape[1:]) for t in parts}
    if len(tails) != 1:
        problems.append(f"cannot concatenate {', '.join(public)}: shapes {[tuple(t.shape) for t in parts]}")
        return None
    return torch.cat(parts, dim=0)


def _listed(keys: list[str]) -> str:
    shown = ", ".join(f"'{k}'" for k in keys[:_MAX_LISTED])
    return shown + (f" and {len(keys) - _MAX_LISTED} more" if len(keys) > _MAX_LISTED else "")
