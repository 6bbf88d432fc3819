"""The course's model zoo: `load_model(name)` and `ground_truth(name)`.

Four kinds of model ship inside the package and load offline in well under a second:

- ``"handwired-induction"``: 2 attention-only layers whose weights are set by hand
  (see `mi_course.handwired`); its exact circuit is known (`ground_truth`).
- ``"attn-only-2l"``: 2 attention-only layers trained on repeated random tokens.
- ``"toy-lm"``: a small GPT-style model trained on the course's synthetic English.
- ``"mystery"``: the capstone's family of hand-set induction models, one per seed
  (`mi_course.mystery`): ``load_model("mystery", seed=S)``.

``"gpt2-small"`` is TransformerLens's pretrained GPT-2 small, downloaded from the Hugging
Face hub when it is reachable (e.g. on Colab) and read from the local Hugging Face cache
when the hub is offline (HF_HUB_OFFLINE) or unreachable.

A trained model lives in ``mi_course/zoo/<name>/`` as config.json, model.safetensors,
tokenizer.json and MODEL_CARD.md, written by `mi_course.training.save_model`.
"""

from __future__ import annotations

import difflib
import errno
import functools
import json
import os
import socket
import sys
import urllib.parse
import urllib.request
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

import torch
from huggingface_hub import constants as hf_constants
from huggingface_hub import try_to_load_from_cache
from huggingface_hub.errors import LocalEntryNotFoundError
from packaging.requirements import Requirement
from safetensors import SafetensorError
from safetensors.torch import load_file
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import WhitespaceSplit
from transformer_lens import HookedTransformer, HookedTransformerConfig
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from mi_course.circuits import Circuit

__all__ = [
    "MODEL_NAMES",
    "OFFLINE_MODELS",
    "ZOO",
    "CorruptWeightsError",
    "DeviceUnavailableError",
    "GroundTruthUnknownError",
    "MissingWeightsError",
    "ModelOfflineError",
    "UnknownModelError",
    "ground_truth",
    "load_from_directory",
    "load_model",
    "supported_versions",
    "word_level_tokenizer",
    "wrap_tokenizer",
]

MODEL_NAMES = ("handwired-induction", "attn-only-2l", "toy-lm", "mystery", "gpt2-small")
OFFLINE_MODELS = ("handwired-induction", "attn-only-2l", "toy-lm", "mystery")
ZOO = Path(__file__).resolve().parent / "zoo"
ZOO_FILES = ("config.json", "model.safetensors", "tokenizer.json")
GPT2_REPO = "gpt2"  # the hub repository of GPT-2 small
HUB_PROBE_TIMEOUT_S = 3.0
NETWORK_ERRNOS = {errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ENETDOWN}
TESTED_WITH = {"transformer-lens": "3.9.0", "transformers": "5.25.0"}  # what CI ran this release with


class UnknownModelError(ValueError):
    """A model name that is not in the zoo."""


class GroundTruthUnknownError(ValueError):
    """A ground-truth circuit was asked for a model whose circuit nobody knows exactly."""


class MissingWeightsError(RuntimeError):
    """A zoo folder or one of its files is missing."""


class CorruptWeightsError(RuntimeError):
    """A zoo file exists but cannot be read, or does not match the config."""


class DeviceUnavailableError(RuntimeError):
    """The requested torch device does not exist on this machine."""


class ModelOfflineError(RuntimeError):
    """GPT-2 small is not in the local cache, and the Hugging Face hub is offline or unreachable."""


def _check_name(name: str) -> None:
    if name in MODEL_NAMES:
        return
    close = difflib.get_close_matches(str(name), MODEL_NAMES, n=1, cutoff=0.5)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise UnknownModelError(f"Unknown model {name!r}.{hint} The models are: {', '.join(map(repr, MODEL_NAMES))}.")


def _check_device(device: str) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise DeviceUnavailableError(f"{device!r} is not a torch device name; use 'cpu' (or 'cuda' on a GPU).") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DeviceUnavailableError(
            f"device={device!r} but this machine has no CUDA GPU (torch.cuda.is_available() is False). "
            "Use device='cpu'; the zoo's small models run fast on a CPU."
        )
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceUnavailableError(f"device={device!r} but Apple's MPS backend is not available here. Use device='cpu'.")
    return dev


def wrap_tokenizer(
    tokenizer: Tokenizer,
    *,
    bos_token: str,
    eos_token: str | None = None,
    pad_token: str | None = None,
    unk_token: str | None = None,
    name: str = "mi-course",
) -> PreTrainedTokenizerFast:
    """Wrap a `tokenizers` tokenizer so HookedTransformer can use it offline, BOS prepended.

    EOS and padding default to BOS (as in GPT-2). HookedTransformer looks up
    ``init_kwargs["name_or_path"]`` and, unless ``add_bos_token`` is set, re-downloads the
    tokenizer by that name: both are set here so that nothing touches the network.
    """
    for token in (bos_token, eos_token, pad_token, unk_token):
        if token is not None and tokenizer.token_to_id(token) is None:
            raise ValueError(f"special token {token!r} is not in the tokenizer's vocabulary; add it first.")
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=bos_token,
        eos_token=eos_token or bos_token,
        pad_token=pad_token or bos_token,
        unk_token=unk_token,
        add_bos_token=True,
    )
    wrapped.init_kwargs["name_or_path"] = name
    return wrapped


def word_level_tokenizer(words: Sequence[str], *, bos_token: str = "<bos>", unk_token: str | None = None) -> PreTrainedTokenizerFast:
    """A whitespace-split word-level tokenizer: id 0 is BOS, then `unk_token` if given, then `words` in order."""
    specials = [bos_token] + ([unk_token] if unk_token else [])
    vocab = specials + [w for w in words if w not in specials]
    if len(set(vocab)) != len(vocab):
        raise ValueError("words contains duplicates; every word needs exactly one id.")
    if any(not w or any(c.isspace() for c in w) for w in vocab):
        raise ValueError("words must be non-empty and contain no whitespace (the tokenizer splits on whitespace).")
    tokenizer = Tokenizer(WordLevel({w: i for i, w in enumerate(vocab)}, unk_token=unk_token))
    tokenizer.pre_tokenizer = WhitespaceSplit()
    tokenizer.add_special_tokens(specials)
    return wrap_tokenizer(tokenizer, bos_token=bos_token, unk_token=unk_token)


@functools.lru_cache(maxsize=8)
def _read_weights(path: str, mtime_ns: int, size: int) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file, cached per (path, modification time, size)."""
    return load_file(path)


def _retrain_hint(name: str) -> str:
    return (
        f"Reinstall the course package (pip install --force-reinstall mi-course, or pip install -e . in a clone), "
        f"or recreate the model with `python scripts/train_{name.replace('-', '_')}.py`."
    )


def load_from_directory(directory: Path, device: str = "cpu") -> HookedTransformer:
    """Load the model saved by `mi_course.training.save_model` in `directory` (eval mode)."""
    directory = Path(directory)
    dev = _check_device(device)
    name = directory.name
    if not directory.is_dir():
        raise MissingWeightsError(f"Model {name!r}: the folder {directory} is missing. {_retrain_hint(name)}")
    for file in ZOO_FILES:
        if not (directory / file).is_file():
            raise MissingWeightsError(f"Model {name!r}: {directory / file} is missing. {_retrain_hint(name)}")
    try:
        config = json.loads((directory / "config.json").read_text())
        cfg = HookedTransformerConfig(**config["model"], device=str(dev))
        tokenizer = wrap_tokenizer(Tokenizer.from_file(str(directory / "tokenizer.json")), **config["tokenizer"], name=name)
    except Exception as err:  # json, the config class and `tokenizers` raise assorted types
        raise CorruptWeightsError(
            f"Model {name!r}: cannot read config.json / tokenizer.json in {directory} ({type(err).__name__}: {err}). "
            f"{_retrain_hint(name)}"
        ) from None
    path = directory / "model.safetensors"
    try:
        stat = path.stat()
        weights = _read_weights(str(path), stat.st_mtime_ns, stat.st_size)
    except (SafetensorError, OSError) as err:
        raise CorruptWeightsError(f"Model {name!r}: {path} is not a valid safetensors file ({err}). {_retrain_hint(name)}") from None
    model = HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=False)
    params = dict(model.named_parameters())
    problems = [f"missing {key}" for key in params if key not in weights]
    problems += [f"unexpected {key}" for key in weights if key not in params]
    problems += [
        f"{key} has shape {tuple(weights[key].shape)}, the config needs {tuple(p.shape)}"
        for key, p in params.items()
        if key in weights and weights[key].shape != p.shape
    ]
    if problems:
        raise CorruptWeightsError(
            f"Model {name!r}: {path} does not match config.json ({'; '.join(problems[:3])}). {_retrain_hint(name)}"
        )
    with torch.no_grad():
        for key, p in params.items():
            p.copy_(weights[key])
    return model.to(dev, print_details=False).eval()


def _hub_offline() -> bool:
    """Whether HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE is set now or was when huggingface_hub was imported."""
    return hf_constants.HF_HUB_OFFLINE or any(
        os.environ.get(var, "").lower() in ("1", "true", "yes", "on") for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def _hub_reachable(timeout: float = HUB_PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to the hub's endpoint (or to the HTTPS proxy set in the environment) opens in time.

    One quick probe, so that an unreachable hub costs seconds instead of huggingface_hub's
    minutes of retries for every file.
    """
    target = urllib.parse.urlsplit(hf_constants.ENDPOINT)
    proxy = urllib.request.getproxies().get(target.scheme)
    if proxy and not urllib.request.proxy_bypass(target.hostname or ""):
        target = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    port = target.port or (443 if target.scheme == "https" else 80)
    try:
        socket.create_connection((target.hostname, port), timeout=timeout).close()
    except OSError:
        return False
    return True


def _is_network_error(err: BaseException | None) -> bool:
    """Whether `err`, or an exception it was raised from, says that the hub or a file it serves was out of reach.

    Covers files missing from the cache when only the cache may be read (huggingface_hub's
    LocalEntryNotFoundError), offline mode, and failed connections, timeouts and DNS look-ups.
    """
    while err is not None:
        if isinstance(err, (LocalEntryNotFoundError, ConnectionError, TimeoutError, socket.gaierror)):
            return True
        if isinstance(err, OSError) and err.errno in NETWORK_ERRNOS:
            return True
        err = err.__cause__ or err.__context__
    return False


def _offline_message(reason: str) -> str:
    return (
        f"'gpt2-small' is loaded from the Hugging Face hub or its local cache, but {reason}. "
        f"The course's own models work offline: {', '.join(map(repr, OFFLINE_MODELS))} "
        "(for example load_model('toy-lm') for the IOI, greater-than and agreement tasks). "
        "To use GPT-2 small, run the notebook once where the hub is reachable (e.g. Colab) "
        "with HF_HUB_OFFLINE unset: after that it loads from the cache, offline too."
    )


def _requirement(dist: str, name: str) -> str:
    try:
        requirements = [Requirement(line) for line in metadata.requires(dist) or []]
    except metadata.PackageNotFoundError:
        return "(unknown)"
    specifiers = next((sorted(map(str, req.specifier), reverse=True) for req in requirements if req.name == name), [])
    return ",".join(specifiers) or "(any version)"


def _installed(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "(not installed)"


def supported_versions() -> str:
    """One line: the transformer-lens and transformers versions the course supports, was tested with, and finds here."""
    return (
        f"The course supports transformer-lens {_requirement('mi-course', 'transformer-lens')} with the transformers "
        f"it requires ({_requirement('transformer-lens', 'transformers')}); it was tested with transformer-lens "
        f"{TESTED_WITH['transformer-lens']} and transformers {TESTED_WITH['transformers']}; this environment has "
        f"transformer-lens {_installed('transformer-lens')} and transformers {_installed('transformers')}."
    )


def _gpt2_cached() -> bool:
    """Whether the local cache holds GPT-2's config.json and weights."""
    def cached(filename: str) -> bool:
        return isinstance(try_to_load_from_cache(GPT2_REPO, filename), str)

    return cached("config.json") and (cached("model.safetensors") or cached("pytorch_model.bin"))


def _not_cached_message(offline: bool) -> str:
    why = "HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set" if offline else f"the hub ({hf_constants.ENDPOINT}) cannot be reached"
    return _offline_message(f"{why} and GPT-2 is not (completely) in the local cache {hf_constants.HF_HUB_CACHE}")


def _load_gpt2(device: torch.device) -> HookedTransformer:
    """GPT-2 small from the hub, or from the local cache when the hub is offline or unreachable.

    Only a hub out of reach raises ModelOfflineError (with GPT-2 not cached, or a download
    cut off); any other failure keeps its own type and gains a line on the supported versions.
    """
    offline = _hub_offline()
    cache_only = offline or not _hub_reachable()
    if cache_only and not _gpt2_cached():
        raise ModelOfflineError(_not_cached_message(offline))
    try:
        tokenizer = AutoTokenizer.from_pretrained(GPT2_REPO, add_bos_token=True, local_files_only=cache_only)
        model = HookedTransformer.from_pretrained(GPT2_REPO, device=str(device), tokenizer=tokenizer, local_files_only=cache_only)
    except Exception as err:  # the hub's client, transformers and TransformerLens raise assorted types
        if not _is_network_error(err):
            raise _with_versions_line(err)
        if cache_only:  # a file the checks above do not cover, such as the tokenizer's
            raise ModelOfflineError(_not_cached_message(offline)) from None
        reason = f"the hub could not be reached ({type(err).__name__}: {_first_line(err)})"
        raise ModelOfflineError(_offline_message(reason)) from None
    return model.eval()


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else ""


def _with_versions_line(err: Exception) -> Exception:
    """`err` with `supported_versions()` as its last line: a note on Python >= 3.11.

    Python 3.10 has no notes: there it is a new exception of the same type, raised from `err`
    (or `err` unchanged when its type cannot be built from a message).
    """
    if sys.version_info >= (3, 11):
        err.add_note(supported_versions())
        return err
    try:
        annotated = type(err)(f"{err}\n{supported_versions()}")
    except Exception:  # a type whose constructor takes other arguments
        return err
    annotated.__cause__ = err
    return annotated


def load_model(name: str, device: str = "cpu", *, seed: int | None = None) -> HookedTransformer:
    """A fresh eval-mode HookedTransformer of the zoo, with its tokenizer (BOS prepended).

    ``"mystery"`` is a family (`mi_course.mystery`): give the open ``seed`` of the one you want.
    """
    _check_name(name)
    dev = _check_device(device)
    if (seed is not None) != (name == "mystery"):
        raise ValueError(
            "load_model('mystery', seed=S) needs the seed of the mystery model you want."
            if name == "mystery"
            else f"{name!r} is one model, not a family: call load_model({name!r}) without a seed."
        )
    if name == "mystery":
        from mi_course import mystery

        return mystery.make(seed).to(dev, print_details=False).eval()
    if name == "gpt2-small":
        return _load_gpt2(dev)
    if name == "handwired-induction":
        from mi_course.handwired import build_handwired

        return build_handwired().to(dev, print_details=False).eval()
    return load_from_directory(ZOO / name, device)


def ground_truth(name: str) -> Circuit:
    """The exact circuit of a zoo model; only known for the hand-set ``"handwired-induction"``."""
    _check_name(name)
    if name == "mystery":
        raise GroundTruthUnknownError(
            "The mystery models are a family: for an open seed, mi_course.mystery.ground_truth(seed) gives the "
            "circuit and every head's role. A graded student's truth needs the course secret (the grader has it)."
        )
    if name != "handwired-induction":
        raise GroundTruthUnknownError(
            f"No ground-truth circuit for {name!r}: only 'handwired-induction' has weights set by hand, "
            "so only its circuit is known exactly. For trained models, find a circuit with edge patching "
            "and check its faithfulness."
        )
    from mi_course.handwired import ground_truth as handwired_ground_truth

    return handwired_ground_truth()
