"""The mystery-model family (issue 16): every key's model has the circuit its truth says, with the
traps it promises (decoys, backup, split), and the course's own tools recover it.

The reference solution (ACDC plus a role analysis by ablation) lives in the solution notebook,
not in the package: in a graded class it would be the exam's answer one call away. The tests run
its cells on every seed.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
import torch

from mi_course import mystery
from mi_course.circuits import Edge, PatchedMetric, acdc
from mi_course.induction import ablation_hooks, head_scores, repeated_tokens

SEEDS = range(50)
PATTERN_THRESHOLD = 0.5  # a head "looks like" a role when its pattern score is above this


def _heads():
    return [(l, h) for l in range(mystery.N_LAYERS) for h in range(mystery.N_HEADS)]


class Probe:
    """One model's task and the normalised metric under ablations (1 = clean, 0 = corrupted)."""

    def __init__(self, key: bytes, n: int = 8):
        self.model = mystery.build(key)
        self.clean, self.corrupted, self.metric = mystery.task(self.model, n=n)
        with torch.no_grad():
            self.c = float(self.metric(self.model(self.clean)))
            self.k = float(self.metric(self.model(self.corrupted)))

    def kept(self, heads, how: str = "zero") -> float:
        with torch.no_grad():
            logits = self.model.run_with_hooks(self.clean, fwd_hooks=ablation_hooks(list(heads), how))
        return (float(self.metric(logits)) - self.k) / (self.c - self.k)

    def scores(self):
        tokens = repeated_tokens(self.model, 10, n=8, seed=1)
        return head_scores(self.model, tokens, 10)


@pytest.fixture(scope="module")
def probes():
    return {seed: Probe(mystery.public_key(seed)) for seed in SEEDS}


def test_models_are_deterministic_and_layouts_vary():
    a, b = mystery.make(3).state_dict(), mystery.make(3).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    layouts = [mystery.layout(mystery.public_key(s)) for s in SEEDS]
    assert {lay.variant for lay in layouts} == {"plain", "backup", "split"}
    assert len({(lay.previous, lay.induction) for lay in layouts}) >= 10
    assert len({tuple(sorted(mystery.ground_truth(s).roles.items())) for s in SEEDS}) >= 40


def test_the_rotation_hides_one_hot_structure_but_not_the_function():
    model = mystery.make(0)
    # no weight matrix is a plain one-hot map any more
    assert (model.embed.W_E.abs() > 1e-3).float().mean() > 0.5
    probe = Probe(mystery.public_key(0))
    assert probe.c > 9 and abs(probe.k) < 0.5  # copies the letter on clean prompts, not on corrupted ones


@pytest.mark.parametrize("seed", SEEDS)
def test_truth_is_faithful_necessary_and_its_traps_hold(seed, probes):
    probe, truth, lay = probes[seed], mystery.ground_truth(seed), mystery.layout(mystery.public_key(seed))
    score = PatchedMetric(probe.model, probe.clean, probe.corrupted, probe.metric)
    outside = score.edges - truth.circuit.edges
    assert score(outside) >= 0.95  # faithful
    pair = set()
    if lay.backup:
        pair = {mystery._name(lay.backup), mystery._name(lay.induction[0])}
    elif len(lay.induction) > 1:
        pair = {mystery._name(h) for h in lay.induction}
    for edge in truth.circuit.edges:
        if edge.sender in pair or edge.receiver.split(".")[0] in pair:
            continue
        assert score(outside | {edge}) <= score(outside) - 0.1, f"{edge} is not necessary"
    # decoys look like their role and do nothing
    scores = probe.scores()
    for (layer, head), imitates in lay.decoys.items():
        name = "previous_token" if imitates == "previous-token" else "induction"
        assert scores[name][layer, head] > PATTERN_THRESHOLD
        for how in ("zero", "mean"):
            assert abs(probe.kept([(layer, head)], how) - 1) <= 0.02
    if lay.backup:  # self-repair: the backup covers for the induction head
        assert probe.kept([lay.induction[0]]) >= 0.95
        assert probe.kept([lay.induction[0], lay.backup]) <= 0.1
    if len(lay.induction) > 1:  # split: each head carries about half
        for head in lay.induction:
            assert 0.3 <= probe.kept([head]) <= 0.7
        assert probe.kept(lay.induction) <= 0.1


NOTEBOOK = Path(__file__).resolve().parents[1] / "solutions" / "09_find_the_circuit.ipynb"


def _cells(*ids: str) -> list[str]:
    """Source of the solution notebook's cells, IPython magics left out."""
    by_id = {cell.id: cell.source for cell in nbformat.read(NOTEBOOK, as_version=4).cells}
    return ["\n".join(l for l in by_id[i].splitlines() if not l.startswith("%")) for i in ids]


REFERENCE_SOLUTION = _cells("nb09-imports", "nb09-kept", "nb09-ex1", "nb09-ex2")


def solve(probe: Probe) -> tuple[set[Edge], dict[str, str]]:
    """Notebook 09's reference solution (ACDC, then a role analysis by ablation) on a probe's model."""
    namespace = {}
    grad, threads = torch.is_grad_enabled(), torch.get_num_threads()
    try:  # the notebook's setup switches gradients off and sets threads: not for the rest of the test session
        exec(REFERENCE_SOLUTION[0], namespace)
        namespace.update(model=probe.model, clean=probe.clean, corrupted=probe.corrupted, metric=probe.metric, scores=probe.scores())
        for source in REFERENCE_SOLUTION[1:]:
            exec(source, namespace)
    finally:
        torch.set_grad_enabled(grad)
        torch.set_num_threads(threads)
    return {Edge(*edge.split("->")) for edge in namespace["my_circuit"]}, namespace["my_roles"]


@pytest.mark.parametrize("seed", SEEDS)
def test_the_reference_solution_recovers_the_truth(seed, probes):
    edges, roles = solve(probes[seed])
    truth = mystery.ground_truth(seed)
    assert edges == set(truth.circuit.edges)
    assert roles == truth.roles


def test_running_the_reference_solution_leaves_torch_as_it_was(probes):
    solve(probes[0])
    assert torch.is_grad_enabled()


@pytest.mark.parametrize("seed", SEEDS[:10])
def test_reading_attention_patterns_alone_fails_on_the_decoys(seed, probes):
    scores, truth = probes[seed].scores(), mystery.ground_truth(seed)
    by_pattern = {
        mystery._name(h): "previous-token" if scores["previous_token"][h] > PATTERN_THRESHOLD else "induction"
        for h in _heads()
        if max(scores["previous_token"][h], scores["induction"][h]) > PATTERN_THRESHOLD
    }
    decoys = [h for h, role in truth.roles.items() if role == "decoy"]
    assert decoys and all(by_pattern.get(h) != "decoy" for h in decoys)
    assert sum(by_pattern.get(h) == truth.roles[h] for h in truth.roles) < len(truth.roles)


def test_student_keys_need_the_secret():
    a = mystery.student_key("course secret", "s123")
    assert a == mystery.student_key("course secret", "  S123 ")  # ids are compared without case or spacing
    assert a != mystery.student_key("another secret", "s123")
    assert a != mystery.student_key("course secret", "s124")
    assert a not in {mystery.public_key(s) for s in range(1000)}
    with pytest.raises(ValueError, match="secret is empty"):
        mystery.student_key("", "s123")
    with pytest.raises(ValueError, match="non-negative integer"):
        mystery.public_key(-1)


def test_a_class_gets_one_file_per_student_and_each_loads_as_that_students_model(tmp_path, monkeypatch):
    from mi_course.cli import main as cli

    roster = tmp_path / "roster.csv"
    roster.write_text("name,student_id\nAda,s1\nAlan, S2 \n")
    (tmp_path / "secret").write_text("a long course secret\n")
    assert cli(["mystery", "--roster", str(roster), "--out", str(tmp_path / "models"), "--secret-file", str(tmp_path / "secret")]) == 0
    files = sorted(p.name for p in (tmp_path / "models").iterdir())
    assert files == ["mystery-s1.safetensors", "mystery-s2.safetensors"]
    # the file of s2 is the model of HMAC(secret, "s2"), and the notebook finds it by id
    got = mystery.for_student("S2", tmp_path / "models")
    assert got.graded and got.seed is None and "grader only" in got.describe()
    want = mystery.build(mystery.student_key("a long course secret", "s2"))
    assert all(torch.equal(a, b) for a, b in zip(got.model.state_dict().values(), want.state_dict().values()))
    assert mystery.student_truth("s2", "a long course secret") == mystery.truth(mystery.student_key("a long course secret", "s2"))
    # someone else's file, renamed, is refused
    (tmp_path / "models" / "mystery-s1.safetensors").rename(tmp_path / "models" / "mystery-s3.safetensors")
    with pytest.raises(mystery.MysteryFileError, match="written for student 's1'"):
        mystery.for_student("s3", tmp_path / "models")
    # without a secret the command refuses, and says how to give one
    monkeypatch.delenv(mystery.SECRET_ENV, raising=False)
    with pytest.raises(SystemExit):
        cli(["mystery", "--roster", str(roster), "--out", str(tmp_path / "other")])


def test_without_a_file_a_student_works_on_an_open_seed(tmp_path):
    got = mystery.for_student("s9", tmp_path)
    assert not got.graded and got.seed == mystery.self_study_seed("s9")
    assert f"ground_truth({got.seed})" in got.describe()
    assert mystery.student_truth("s9", None) == mystery.ground_truth(got.seed)
    with pytest.raises(ValueError, match="STUDENT_ID"):
        mystery.for_student("your-id", tmp_path)


def test_bad_model_files_get_clear_errors(tmp_path):
    with pytest.raises(mystery.MysteryFileError, match="no mystery model file"):
        mystery.load(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a model")
    with pytest.raises(mystery.MysteryFileError, match="not a readable model file"):
        mystery.load(tmp_path / "junk.safetensors")
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "other.safetensors"), metadata={"format": "something else"})
    with pytest.raises(mystery.MysteryFileError, match="not a mystery model file"):
        mystery.load(tmp_path / "other.safetensors")
    save_file({"w": torch.zeros(2)}, str(tmp_path / "wrong.safetensors"), metadata={"format": mystery.FILE_FORMAT})
    with pytest.raises(mystery.MysteryFileError, match="does not hold a mystery model"):
        mystery.load(tmp_path / "wrong.safetensors")


def test_rosters_one_id_per_line_and_duplicates(tmp_path):
    (tmp_path / "r.txt").write_text("s1\n\ns2\n")
    assert mystery.read_roster(tmp_path / "r.txt") == ["s1", "s2"]
    (tmp_path / "d.txt").write_text("s1\nS1\n")
    with pytest.raises(ValueError, match="twice"):
        mystery.read_roster(tmp_path / "d.txt")


def test_the_solution_notebook_solves_a_graded_model(tmp_path, monkeypatch):
    """The reference solution on a graded model (HMAC layout, file from the instructor's command):
    every check records its answer, and the grader's scoring gives full marks."""
    from nbclient import NotebookClient

    from mi_course.checks import nb09

    secret, sid = "a course secret for the test", "graded-student-7"
    mystery.write_class(secret, [sid], tmp_path / "models")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    for cell in nb.cells:
        if cell.id == "nb09-student":
            cell.source = cell.source.replace('STUDENT_ID = "self-study"', f'STUDENT_ID = "{sid}"')
    monkeypatch.setenv(mystery.DIR_ENV, str(tmp_path / "models"))
    monkeypatch.setenv("MI_COURSE_VIZ", "static")
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    stdout = {
        cell.metadata["mi_course"]["exercise"]: "".join(o.get("text", "") for o in cell.outputs if o.get("name") == "stdout")
        for cell in nb.cells
        if cell.metadata.get("mi_course", {}).get("role") == "check"
    }
    said = "".join(o.get("text", "") for c in nb.cells if c.id == "nb09-student" for o in c.outputs)
    assert "Graded model" in said
    assert all(f"✓ Exercise {ex} passed" in out for ex, out in stdout.items()), stdout
    assert nb09.submitted_student_id(c.source for c in nb.cells if c.cell_type == "code") == sid
    scores = nb09.score_submission(stdout, sid, secret)
    assert scores["09.1"].fraction == 1.0 and scores["09.2"].fraction == 1.0
