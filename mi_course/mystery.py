"""The mystery models of the capstone: one induction circuit per key, laid out differently.

Every mystery model is a 3-layer, 4-heads-per-layer attention-only transformer over the 26
letters, with weights set by hand. Each one solves the same task, continuing a random letter
sequence that repeats (``task``), with the same kind of circuit: a previous-token head tells each
position which letter came before it, and an induction head looks for the earlier copy of the
current letter and copies the letter after it. Which head plays which role depends on the key, and
so do the traps the course teaches about:

- **decoys**: heads whose attention pattern is exactly a role's (a previous-token or an induction
  pattern) but whose output no later component reads;
- on some keys a **backup** head, which takes over when the induction head is knocked out;
- on some keys the copying is **split** over two induction heads, each carrying half of it;
- **idle** heads, with small random weights.

The residual stream is rotated by a random orthogonal matrix, so reading the weights does not show
the layout at a glance: finding it is the exercise.

Keys come in two kinds. A public seed (``make(seed)``, ``ground_truth(seed)``) is for self-study
and the worked example. In a graded class each student's key is an HMAC of the instructor's
secret and the student's id (``student_key``); without the secret, nothing in this package can
produce that student's layout.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import os
import random
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from jaxtyping import Int
from torch import Tensor
from transformer_lens import HookedTransformer

from mi_course.circuits import Circuit, Edge
from mi_course.handwired import LETTERS, letter_model

__all__ = [
    "LETTERS",
    "ROLES",
    "Assignment",
    "Layout",
    "MysteryFileError",
    "Truth",
    "build",
    "for_student",
    "ground_truth",
    "layout",
    "load",
    "make",
    "public_key",
    "read_roster",
    "save",
    "self_study_seed",
    "student_key",
    "task",
    "truth",
    "write_class",
]

ROLES = ("previous-token", "induction", "backup", "decoy", "idle")
N_LAYERS, N_HEADS = 3, 4
D_VOCAB = 1 + len(LETTERS)  # <bos> + letters
N_CTX = 32
D_HEAD = 64
ATTN_SCORE = 20.0  # score of the key a role head looks for; other keys score 0
LOGIT = 10.0  # logit the copied letter gets
IDLE_SCALE = 0.02  # size of an idle head's random weights

# One-hot subspaces of the residual stream, before the rotation.
TOK = slice(0, D_VOCAB)  # the token here
POS = slice(TOK.stop, TOK.stop + N_CTX)  # the position
PREV = slice(POS.stop, POS.stop + D_VOCAB)  # the token one step back (previous-token head)
OUT = slice(PREV.stop, PREV.stop + D_VOCAB)  # the letter to predict (induction heads; read by W_U)
SIDE = slice(OUT.stop, OUT.stop + D_VOCAB)  # written by decoys, read by nothing
D_MODEL = SIDE.stop

Head = tuple[int, int]


@dataclass(frozen=True)
class Layout:
    """Which head plays which role in one mystery model."""

    previous: Head
    induction: tuple[Head, ...]  # two heads when the copying is split
    backup: Head | None
    decoys: dict[Head, str]  # head -> the role whose pattern it imitates
    rotation_seed: int

    def role(self, head: Head) -> str:
        if head == self.previous:
            return "previous-token"
        if head in self.induction:
            return "induction"
        if head == self.backup:
            return "backup"
        return "decoy" if head in self.decoys else "idle"

    @property
    def variant(self) -> str:
        return "backup" if self.backup else "split" if len(self.induction) > 1 else "plain"


@dataclass(frozen=True)
class Truth:
    """The ground truth of a mystery model: its circuit and a role for every head (``"L1H2"``)."""

    circuit: Circuit
    roles: dict[str, str]
    variant: str


def public_key(seed: int) -> bytes:
    """The key of an open seed (self-study, worked examples): anyone can derive it."""
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"a mystery seed is a non-negative integer, got {seed!r}.")
    return hashlib.sha256(f"mi-course mystery public seed {seed}".encode()).digest()


def student_key(secret: str, student_id: str) -> bytes:
    """A graded student's key: HMAC-SHA256 of the course secret and the student's id."""
    if not secret:
        raise ValueError("the course secret is empty: choose a long random string and keep it private.")
    sid = " ".join(str(student_id).split()).lower()
    if not sid:
        raise ValueError("the student id is empty.")
    return hmac.new(secret.encode(), f"mi-course mystery student {sid}".encode(), hashlib.sha256).digest()


def layout(key: bytes) -> Layout:
    """The layout a key selects: the variant, then a head for each role, the rest idle."""
    rng = random.Random(int.from_bytes(hashlib.sha256(b"layout" + key).digest()[:8], "big"))
    variant = rng.choice(("plain", "backup", "split"))
    free = {(layer, head) for layer in range(N_LAYERS) for head in range(N_HEADS)}

    def take(layers: range | list[int]) -> Head:
        head = rng.choice(sorted(h for h in free if h[0] in layers))
        free.remove(head)
        return head

    if variant == "backup":  # the backup reads the induction head's output: three layers in a row
        previous, induction, backup = take([0]), (take([1]),), take([2])
    else:
        previous = take([0, 1])
        after = range(previous[0] + 1, N_LAYERS)
        induction = (take(after), take(after)) if variant == "split" else (take(after),)
        backup = None
    decoys = {take(range(N_LAYERS)): "previous-token", take(range(previous[0] + 1, N_LAYERS)): "induction"}
    if rng.random() < 0.5 and any(h[0] > previous[0] for h in free):
        decoys[take(range(previous[0] + 1, N_LAYERS))] = "induction"
    return Layout(previous, tuple(sorted(induction)), backup, decoys, rng.randrange(2**31))


def _name(head: Head) -> str:
    return f"L{head[0]}H{head[1]}"


def truth(key: bytes) -> Truth:
    """The circuit of the model that ``key`` builds, for ``task``'s corruption, and every head's role.

    The circuit holds the edges that carry tokens. Edges that carry only positions (into the
    previous-token head's query and key) or the fixed ``<bos>`` are context, the same in clean
    and corrupted prompts, and left out, as in ``mi_course.handwired.ground_truth``.
    """
    lay = layout(key)
    prev = _name(lay.previous)
    edges = [Edge("embed", f"{prev}.v")]
    for head in lay.induction:
        ind = _name(head)
        edges += [Edge(prev, f"{ind}.k"), Edge("embed", f"{ind}.q"), Edge("embed", f"{ind}.v"), Edge(ind, "logits")]
    if lay.backup:
        backup, ind = _name(lay.backup), _name(lay.induction[0])
        edges += [Edge(prev, f"{backup}.k"), Edge("embed", f"{backup}.q"), Edge(ind, f"{backup}.q")]
        edges += [Edge("embed", f"{backup}.k"), Edge("embed", f"{backup}.v"), Edge(backup, "logits")]
    roles = {_name((l, h)): lay.role((l, h)) for l in range(N_LAYERS) for h in range(N_HEADS)}
    return Truth(Circuit.from_edges(edges), roles, lay.variant)


def build(key: bytes) -> HookedTransformer:
    """The mystery model of ``key`` (eval mode, with its letter tokenizer). Deterministic."""
    lay = layout(key)
    model = letter_model("mystery", N_LAYERS, N_HEADS, D_MODEL, D_HEAD, N_CTX)
    q = ATTN_SCORE * D_HEAD**0.5  # undoes the 1/sqrt(d_head) of the attention scores
    eye = torch.eye
    gen = torch.Generator().manual_seed(lay.rotation_seed)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.embed.W_E[:, TOK] = eye(D_VOCAB)
        model.pos_embed.W_pos[:, POS] = eye(N_CTX)
        model.unembed.W_U[OUT, :] = LOGIT * eye(D_VOCAB)
        for layer in range(N_LAYERS):
            attn = model.blocks[layer].attn
            for head in range(N_HEADS):
                W_Q, W_K, W_V, W_O = attn.W_Q[head], attn.W_K[head], attn.W_V[head], attn.W_O[head]
                role = lay.role((layer, head))
                imitates = lay.decoys.get((layer, head), role)
                if imitates == "previous-token":  # query at position i looks for key i - 1
                    W_Q[POS.start + 1 : POS.stop, : N_CTX - 1] = q * eye(N_CTX - 1)
                    W_K[POS, :N_CTX] = eye(N_CTX)
                elif imitates in ("induction", "backup"):  # look for the key whose previous token is this token
                    W_Q[TOK, :D_VOCAB] = q * eye(D_VOCAB)
                    W_K[PREV, :D_VOCAB] = eye(D_VOCAB)
                if role == "backup":
                    # ... unless the induction head already wrote this key's token (then the score
                    # falls by 1.5 x ATTN_SCORE), and <bos> always scores ATTN_SCORE / 2: when the
                    # induction head did its job the backup rests on <bos>, which it copies as nothing.
                    W_Q[OUT, D_VOCAB : 2 * D_VOCAB] = -1.5 * q * eye(D_VOCAB)
                    W_K[TOK, D_VOCAB : 2 * D_VOCAB] = eye(D_VOCAB)
                    W_Q[POS, 2 * D_VOCAB] = 0.5 * q
                    W_K[TOK.start, 2 * D_VOCAB] = 1.0
                if role == "idle":
                    for W in (W_Q, W_K, W_V, W_O):
                        W.copy_(IDLE_SCALE * torch.randn(W.shape, generator=gen))
                    continue
                W_V[TOK.start + 1 : TOK.stop, 1:D_VOCAB] = eye(D_VOCAB - 1)  # the letter there (not <bos>)
                if role == "previous-token":
                    W_V[TOK.start, 0] = 1.0
                    W_O[:D_VOCAB, PREV] = eye(D_VOCAB)
                elif role in ("induction", "backup"):
                    W_O[:D_VOCAB, OUT] = eye(D_VOCAB) / len(lay.induction) if role == "induction" else eye(D_VOCAB)
                else:  # a decoy: same pattern, output into a subspace nothing reads
                    W_O[:D_VOCAB, SIDE] = eye(D_VOCAB)
        _rotate(model, torch.linalg.qr(torch.randn(D_MODEL, D_MODEL, generator=gen))[0])
    return model.eval()


def _rotate(model: HookedTransformer, R: Tensor) -> None:
    """Rotate the residual basis by the orthogonal ``R``: the model computes exactly the same function."""
    model.embed.W_E.copy_(model.embed.W_E @ R)
    model.pos_embed.W_pos.copy_(model.pos_embed.W_pos @ R)
    model.unembed.W_U.copy_(R.T @ model.unembed.W_U)
    for block in model.blocks:
        for W in (block.attn.W_Q, block.attn.W_K, block.attn.W_V):
            W.copy_(R.T @ W)
        block.attn.W_O.copy_(block.attn.W_O @ R)


def make(seed: int) -> HookedTransformer:
    """The mystery model of an open seed."""
    return build(public_key(seed))


def ground_truth(seed: int) -> Truth:
    """The truth of an open seed's model. A graded student's truth needs the course secret."""
    return truth(public_key(seed))


def task(
    model: HookedTransformer, n: int = 16, length: int = 10, seed: int = 0
) -> tuple[Int[Tensor, "n pos"], Int[Tensor, "n pos"], callable]:
    """Clean prompts, corrupted prompts and the metric of the mystery task.

    A prompt is ``<bos>``, ``length`` distinct random letters, then the same letters again.
    A corrupted prompt is another such sequence, so every letter differs in both halves. The
    metric is the mean, over the repeat's positions that can be predicted, of the next letter's
    logit minus the mean logit: about ``LOGIT`` when the model copies, 0 when it cannot.
    """
    if not 2 <= length <= min(len(LETTERS), (N_CTX - 1) // 2):
        raise ValueError(f"length must be 2 to {min(len(LETTERS), (N_CTX - 1) // 2)}, got {length}.")
    gen = torch.Generator().manual_seed(seed)

    def prompts() -> Tensor:
        letters = torch.stack([torch.randperm(len(LETTERS), generator=gen)[:length] + 1 for _ in range(n)])
        return torch.cat([torch.zeros(n, 1, dtype=torch.long), letters, letters], dim=1)

    clean, corrupted = prompts(), prompts()
    answers = clean[:, length + 2 :]  # the letter after each repeated letter but the last

    def metric(logits: Tensor) -> Tensor:
        logits = logits[:, length + 1 : 2 * length]
        return (logits.gather(-1, answers.unsqueeze(-1)).squeeze(-1) - logits.mean(-1)).mean()

    return clean, corrupted, metric


# --- a class: one model file per student ---------------------------------------------------------

FILE_FORMAT = "mi-course mystery 1"
SECRET_ENV = "MI_COURSE_SECRET"  # where the instructor's tools look for the course secret
DIR_ENV = "MI_COURSE_MYSTERY_DIR"  # where a student's notebook looks for their model file


class MysteryFileError(RuntimeError):
    """A mystery model file that is missing, unreadable, or someone else's."""


def _student_id(student_id: object) -> str:
    sid = " ".join(str(student_id).split()).lower()
    if not sid or sid in {"none", "your-id", "your id"}:
        raise ValueError(f"set STUDENT_ID to the id your instructor gave you (got {student_id!r}).")
    return sid


def self_study_seed(student_id: str) -> int:
    """The open seed a student works on when there is no graded model file: public, so self-study
    can check its answers (``ground_truth``)."""
    return int.from_bytes(hashlib.sha256(f"mi-course self-study {_student_id(student_id)}".encode()).digest()[:4], "big")


def model_file(directory: str | Path, student_id: str) -> Path:
    slug = re.sub(r"[^a-z0-9._-]+", "_", _student_id(student_id))
    return Path(directory) / f"mystery-{slug}.safetensors"


def save(model: HookedTransformer, path: str | Path, student_id: str) -> Path:
    """Write a student's model: its weights and whose they are, nothing about its layout."""
    from safetensors.torch import save_file

    path = Path(path)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata={"format": FILE_FORMAT, "student_id": _student_id(student_id)})
    return path


def load(path: str | Path) -> tuple[HookedTransformer, str]:
    """A student's model file: the model (eval mode) and the student id it was written for."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    path = Path(path)
    if not path.is_file():
        raise MysteryFileError(f"no mystery model file at {path}: ask your instructor for yours, or work on an open seed.")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise MysteryFileError(f"{path} is not a readable model file ({err}); download it again from your instructor.") from None
    if meta.get("format") != FILE_FORMAT:
        raise MysteryFileError(f"{path} is not a mystery model file of this course (format {meta.get('format')!r}).")
    model = build(public_key(0))  # the right shapes; every weight is replaced below
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise MysteryFileError(f"{path} does not hold a mystery model's weights ({str(err).splitlines()[0]}).") from None
    return model.eval(), meta.get("student_id", "")


@dataclass(frozen=True)
class Assignment:
    """The model a student investigates: graded (from the instructor's file) or self-study (open seed)."""

    model: HookedTransformer
    student_id: str
    graded: bool
    seed: int | None  # the open seed in self-study; None when graded

    def describe(self) -> str:
        if self.graded:
            return f"Graded model of student {self.student_id!r}: its truth is known to the grader only."
        return (
            f"No model file for {self.student_id!r}: self-study on the open seed {self.seed} "
            f"(mystery.ground_truth({self.seed}) holds its answers). In a graded class, put your file in "
            f"this folder or set {DIR_ENV}."
        )


def for_student(student_id: str, directory: str | Path | None = None) -> Assignment:
    """The student's graded model if their file is in ``directory`` (default: ``$MI_COURSE_MYSTERY_DIR``,
    then the working folder), else a self-study model on an open seed derived from the id."""
    sid = _student_id(student_id)
    folders = [directory] if directory else [f for f in (os.environ.get(DIR_ENV), ".") if f]
    path = next((p for p in (model_file(f, sid) for f in folders) if p.exists()), None)
    if path is not None:
        model, owner = load(path)
        if owner != sid:
            raise MysteryFileError(f"{path} was written for student {owner!r}, not {sid!r}: use your own file and id.")
        return Assignment(model, sid, True, None)
    seed = self_study_seed(sid)
    return Assignment(make(seed), sid, False, seed)


def student_truth(student_id: str, secret: str | None) -> Truth:
    """What the grader scores a student against: the HMAC truth with the secret, else the self-study seed's."""
    return truth(student_key(secret, _student_id(student_id))) if secret else ground_truth(self_study_seed(student_id))


def read_roster(path: str | Path) -> list[str]:
    """Student ids from a roster: a CSV with a ``student_id`` column, or one id per line."""
    text = Path(path).read_text(encoding="utf-8-sig")
    lines = [l for l in text.splitlines() if l.strip()]
    if lines and "student_id" in [c.strip().lower() for c in next(csv.reader([lines[0]]))]:
        rows = csv.DictReader(lines)
        key = next(c for c in rows.fieldnames or [] if c.strip().lower() == "student_id")
        ids = [row[key] for row in rows]
    else:
        ids = lines
    ids = [_student_id(i) for i in ids]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise ValueError(f"the roster lists these ids twice: {dupes}.")
    return ids


def write_class(secret: str, student_ids: Iterable[str], out: str | Path) -> list[Path]:
    """The instructor's step: one model file per student, each built from HMAC(secret, id)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    return [save(build(student_key(secret, sid)), model_file(out, sid), sid) for sid in student_ids]


def main(argv: list[str]) -> int:
    """``mi-course mystery --roster FILE --out DIR [--secret-file FILE]``: write the class's model files."""
    import argparse

    parser = argparse.ArgumentParser(prog="mi-course mystery", description=main.__doc__)
    parser.add_argument("--roster", required=True, help="CSV with a student_id column, or one id per line")
    parser.add_argument("--out", required=True, help="folder for the model files (one per student)")
    parser.add_argument("--secret-file", help=f"file holding the course secret (default: ${SECRET_ENV})")
    args = parser.parse_args(argv)
    secret = Path(args.secret_file).read_text().strip() if args.secret_file else os.environ.get(SECRET_ENV, "")
    if not secret:
        parser.error(f"no course secret: pass --secret-file or set {SECRET_ENV} (keep the same secret for grading).")
    paths = write_class(secret, read_roster(args.roster), args.out)
    print(f"wrote {len(paths)} mystery model files to {args.out}; hand each student their own file.")
    return 0
