"""Every check of notebook 04 passes the reference and a differently written correct answer,
and fails typical mistakes with the hint that names them."""

from __future__ import annotations

import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from mi_course import circuits, load_model
from mi_course.checks import nb04
from mi_course.checks.core import CheckFailed
from mi_course.circuits import Circuit, Edge, edge_patching_hooks, graph, receiver_node, run_with_edges_patched, sender_outputs, senders

torch.set_num_threads(1)


def fails_with(check, learner, *args, hint: str, **kwargs) -> None:
    with pytest.raises(CheckFailed) as err:
        check(learner, *args, **kwargs)
    assert hint in err.value.hint, err.value.hint


def not_implemented(*args, **kwargs):
    raise NotImplementedError("hint")


@pytest.fixture(scope="module")
def model():
    return nb04._random_model(torch.Generator().manual_seed(0), attn_only=False)


@pytest.fixture(scope="module")
def tokens(model):
    return nb04._random_tokens(torch.Generator().manual_seed(1), model)


def test_fake_graphs_are_model_graphs():
    for seed in range(8):
        gen = torch.Generator().manual_seed(seed)
        n_heads, attn_only = nb04._randint(gen, 2, 3), bool(nb04._randint(gen, 0, 1))
        cfg = HookedTransformerConfig(
            n_layers=2, d_model=8, n_heads=n_heads, d_head=2, d_mlp=None if attn_only else 8, n_ctx=4, d_vocab=5,
            act_fn="gelu", attn_only=attn_only, init_weights=False,
        )
        assert nb04._fake_graph(torch.Generator().manual_seed(seed)) == graph(HookedTransformer(cfg)).edges


def test_checks_leave_the_global_random_state_alone(model, tokens):
    state = torch.get_rng_state()
    nb04.check_patch_edge(patch_edge_reference, model, *tokens, "L0H1", "L1H0.k")
    assert torch.equal(torch.get_rng_state(), state)


# 04.1


def patch_edge_reference(model, clean_tokens, corrupted_tokens, sender, receiver):
    return run_with_edges_patched(model, clean_tokens, corrupted_tokens, [Edge(sender, receiver)])


def patch_edge_by_hand(model, clean_tokens, corrupted_tokens, sender, receiver, *, heads="one", how="add"):
    node, kind = receiver.split(".")
    layer, head = map(int, node[1:].split("H"))
    i = senders(model).index(sender)
    clean_out, corrupted_out = sender_outputs(model, clean_tokens)[i], sender_outputs(model, corrupted_tokens)[i]

    def hook(act, hook):
        where = slice(None) if heads == "all" else head
        part = act[:, :, where]
        delta = {"add": corrupted_out - clean_out, "subtract": clean_out - corrupted_out, "replace": corrupted_out - part if heads == "one" else None}[how]
        if heads == "all":
            delta = delta[:, :, None]
        act[:, :, where] = part + delta
        return act

    with edge_patching_hooks(model):
        return model.run_with_hooks(clean_tokens, fwd_hooks=[(f"blocks.{layer}.hook_{kind}_input", hook)])


def test_patch_edge(model, tokens):
    nb04.check_patch_edge(patch_edge_reference, model, *tokens, "L0H1", "L1H0.k")
    nb04.check_patch_edge(patch_edge_by_hand, model, *tokens, "embed", "L1H2.q" if model.cfg.n_heads == 3 else "L1H1.q")
    nb04.check_patch_edge(patch_edge_by_hand, model, *tokens, "MLP0", "L1H0.v")
    args = (model, *tokens, "L0H0", "L1H1.v")
    fails_with(nb04.check_patch_edge, lambda *a: patch_edge_by_hand(*a, heads="all"), *args, hint="every head of that layer")
    fails_with(nb04.check_patch_edge, lambda *a: patch_edge_by_hand(*a, how="replace"), *args, hint="replaced head h's input")
    fails_with(nb04.check_patch_edge, lambda *a: patch_edge_by_hand(*a, how="subtract"), *args, hint="sign is flipped")

    def whole_node(model, clean_tokens, corrupted_tokens, sender, receiver):
        return run_with_edges_patched(model, clean_tokens, corrupted_tokens, [e for e in graph(model).edges if e.sender == sender])

    fails_with(nb04.check_patch_edge, whole_node, *args, hint="you patched the sender node")

    def outside_the_context(model, clean_tokens, corrupted_tokens, sender, receiver):  # the hook point is off
        return model.run_with_hooks(clean_tokens, fwd_hooks=[(f"blocks.1.hook_{receiver[-1]}_input", lambda act, hook: act + 1.0)])

    fails_with(nb04.check_patch_edge, outside_the_context, *args, hint="the hook never changed anything")
    for kind in "qkv":  # ignores the receiver's kind: the fresh cases have one edge into each kind
        always = lambda model, clean_tokens, corrupted_tokens, sender, receiver, kind=kind: patch_edge_reference(  # noqa: E731
            model, clean_tokens, corrupted_tokens, sender, f"{receiver.split('.')[0]}.{kind}"
        )
        fails_with(nb04.check_patch_edge, always, *args, hint=f"you always patched the head's {kind} input")
    fails_with(nb04.check_patch_edge, not_implemented, *args, hint="not implemented")


def test_patch_edge_on_the_handwired_model():
    handwired = load_model("handwired-induction")
    gen = torch.Generator().manual_seed(0)
    clean = torch.randint(1, 27, (3, 20), generator=gen)
    corrupted = torch.randint(1, 27, (3, 20), generator=gen)
    nb04.check_patch_edge(patch_edge_by_hand, handwired, clean, corrupted, "L0H0", "L1H0.k")
    fails_with(nb04.check_patch_edge, lambda *a: patch_edge_by_hand(*a, how="subtract"), handwired, clean, corrupted, "L0H0", "L1H0.k", hint="sign is flipped")


# 04.2


def logit_diff(logits):
    return (logits[:, -1, 3] - logits[:, -1, 5]).mean()


@pytest.fixture(scope="module")
def circuit(model):
    return Circuit.from_edges(nb04._subset(torch.Generator().manual_seed(2), graph(model).edges, 0.5))


def faithfulness_by_hand(model, circuit, clean_tokens, corrupted_tokens, metric, *, patch="outside", normalise="both"):
    edges = graph(model).edges - circuit.edges if patch == "outside" else circuit.edges
    patched = metric(run_with_edges_patched(model, clean_tokens, corrupted_tokens, edges)).item()
    clean, corrupted = metric(model(clean_tokens)).item(), metric(model(corrupted_tokens)).item()
    if normalise == "none":
        return patched
    if normalise == "clean":
        return patched / clean
    return (patched - corrupted) / (clean - corrupted)


def test_faithfulness(model, circuit, tokens):
    args = (model, circuit, *tokens, logit_diff)
    nb04.check_faithfulness(circuits.faithfulness, *args)
    nb04.check_faithfulness(faithfulness_by_hand, *args)
    nb04.check_faithfulness(lambda *a: torch.tensor(faithfulness_by_hand(*a)), *args)  # a 0-d tensor is fine
    fails_with(nb04.check_faithfulness, lambda *a: faithfulness_by_hand(*a, patch="circuit"), *args, hint="you patched the circuit's edges")
    fails_with(nb04.check_faithfulness, lambda *a: faithfulness_by_hand(*a, normalise="none"), *args, hint="raw metric")
    fails_with(nb04.check_faithfulness, lambda *a: faithfulness_by_hand(*a, normalise="clean"), *args, hint="clean metric only")
    fails_with(nb04.check_faithfulness, not_implemented, *args, hint="not implemented")


# 04.3


@pytest.fixture(scope="module")
def greedy_args():
    return tuple(nb04._greedy_case(torch.Generator().manual_seed(3)).values())


def greedy_by_hand(edges, score, threshold, *, compare="current", signed=False, alone=False, kept=False):
    removed = []
    full = current = score([])
    for edge in edges:
        trial = score([edge] if alone else removed + [edge])
        change = current - trial if signed else abs(trial - (full if compare == "full" or alone else current))
        if change < threshold:
            removed.append(edge)
            current = trial
    return set(edges) - set(removed) if kept else set(removed)


def test_greedy_prune(greedy_args):
    nb04.check_greedy_prune(lambda edges, score, threshold: circuits.greedy_prune(edges, score, threshold)[0], *greedy_args)
    nb04.check_greedy_prune(greedy_by_hand, *greedy_args)
    nb04.check_greedy_prune(lambda *a: sorted(greedy_by_hand(*a)), *greedy_args)  # a list is fine too
    fails_with(nb04.check_greedy_prune, lambda *a: greedy_by_hand(*a, compare="full"), *greedy_args, hint="full model's score")
    fails_with(nb04.check_greedy_prune, lambda *a: greedy_by_hand(*a, signed=True), *greedy_args, hint="one-sided rule")
    fails_with(nb04.check_greedy_prune, lambda *a: greedy_by_hand(*a, alone=True), *greedy_args, hint="each edge alone")
    fails_with(nb04.check_greedy_prune, lambda *a: greedy_by_hand(*a, kept=True), *greedy_args, hint="edges that were kept")
    fails_with(nb04.check_greedy_prune, lambda *a: circuits.greedy_prune(*a), *greedy_args, hint="not a tuple")
    fails_with(nb04.check_greedy_prune, not_implemented, *greedy_args, hint="not implemented")


def test_greedy_cases_separate_every_mistake():
    for seed in range(20):
        case = nb04._greedy_case(torch.Generator().manual_seed(seed))
        answers = [nb04._greedy(**case)] + [wrong(**case) for wrong in nb04._GREEDY_MISTAKES.values()]
        assert len(set(answers)) == len(answers)
        _, changes = circuits.greedy_prune(case["edges"], case["score"], case["threshold"])
        assert case["threshold"] in {abs(c) for c in changes.values()}, "one edge's change sits exactly on the threshold"


def test_greedy_boundary_mistake_fails():
    """`<=` instead of `<`: the fresh cases put one change exactly on the threshold."""
    args = tuple(nb04._greedy_case(torch.Generator().manual_seed(4)).values())
    def at_or_below(edges, score, threshold):
        removed, current = set(), score(set())
        for edge in edges:
            trial = score(removed | {edge})
            if abs(trial - current) <= threshold:
                removed.add(edge)
                current = trial
        return removed

    fails_with(nb04.check_greedy_prune, at_or_below, *args, hint="exactly equal to the threshold")


def test_patch_edge_cases_cover_every_kind_and_separate_every_mistake():
    gen = torch.Generator().manual_seed(5)
    for kind in "qkv":
        case = nb04._patch_edge_case(gen, attn_only=kind != "k", kind=kind)
        assert case["receiver"].endswith(f".{kind}")
        answers = [nb04._patch_edge(**case)] + [w(**case) for w in nb04._PATCH_EDGE_MISTAKES.values() if w is not nb04._ONE_KIND_MISTAKES_BY_KIND[kind]]
        assert nb04._distinct(answers)


def test_greedy_prune_on_a_real_score(model, tokens):
    """The notebook's setting: a PatchedMetric and the edges in ACDC's order."""
    score = circuits.PatchedMetric(model, *tokens, logit_diff)
    edges = circuits.acdc_order(model)[:15]
    nb04.check_greedy_prune(greedy_by_hand, edges, score, 0.05)


# 04.4


@pytest.fixture(scope="module")
def backup_case():
    from mi_course.handwired import build_backup, correct_logit, repeated_letters, unrelated_letters

    clean = repeated_letters(4, 8, seed=0)
    return build_backup(), clean, unrelated_letters(clean, seed=1), correct_logit(clean)


def test_rule_prediction(backup_case):
    args = (*backup_case, 0.1)
    nb04.check_rule_prediction({"L1H1"}, *args)
    nb04.check_rule_prediction(["L1H1"], *args)  # any collection of names
    fails_with(nb04.check_rule_prediction, set(), *args, hint="a head is missing")
    fails_with(nb04.check_rule_prediction, {"L1H1", "L0H1"}, *args, hint="['L0H1']: the rules agree")
    fails_with(nb04.check_rule_prediction, {"L0H0"}, *args, hint="a head is missing")
    fails_with(nb04.check_rule_prediction, None, *args, hint="set prediction")
    fails_with(nb04.check_rule_prediction, "L1H1", *args, hint="a set of head names")
    fails_with(nb04.check_rule_prediction, {"MLP0"}, *args, hint="not heads of this model")


def test_rule_prediction_is_graded_by_running_the_searches(model, tokens):
    """On another model the answer is whatever the two searches find there, not a stored one."""
    clean, corrupted = tokens
    args = (model, clean, corrupted, logit_diff, 0.05)
    absolute = circuits.acdc(*args, progress=False)
    one_sided = circuits.acdc(*args, rule="one-sided", progress=False)
    truth = nb04._heads(absolute.circuit) - nb04._heads(one_sided.circuit)
    nb04.check_rule_prediction(truth, *args)
    wrong = truth ^ {"L0H0"}
    with pytest.raises(CheckFailed):
        nb04.check_rule_prediction(wrong, *args)


# 04.5


def helpers_by_hand(edge, circuit, all_edges, score, max_helpers):
    """A correct alternative: the same greedy search written as a while loop over a list."""
    patched_anyway = set(all_edges) - set(circuit)
    chosen: list = []

    def change(extra):
        base = patched_anyway | set(chosen) | set(extra)
        return abs(score(frozenset(base)) - score(frozenset(base | {edge})))

    best = change([])
    while len(chosen) < max_helpers:
        scored = [(change([e]), e) for e in circuit if e != edge and e not in chosen]
        if not scored:
            break
        value, extra = max(scored, key=lambda pair: pair[0])
        if value <= best:
            break
        chosen.append(extra)
        best = value
    return best


@pytest.fixture(scope="module")
def helper_args(backup_case):
    from mi_course.handwired import backup_truth

    backup, clean, corrupted, metric = backup_case
    score = circuits.PatchedMetric(backup, clean, corrupted, metric)
    circuit = backup_truth().edges | {Edge("embed", "L0H0.q")}
    return dict(circuit=circuit, all_edges=score.edges, score=score, edges=[Edge("L0H0", "L1H0.k"), Edge("embed", "L0H0.q")], max_helpers=1)


def test_helper_search(helper_args):
    nb04.check_helper_search(lambda *a: circuits.helper_search(*a)[1], **helper_args)
    nb04.check_helper_search(helpers_by_hand, **helper_args)
    for name, wrong in [
        ("leave-one-out change (K = ∅) only", nb04._leave_one_out),
        ("in the full model", nb04._in_full_model),
        ("signed change", nb04._signed_change),
        ("goes on when no edge", nb04._never_stops),
        ("stopped after one helper", nb04._one_helper),
    ]:
        fails_with(nb04.check_helper_search, wrong, **helper_args, hint=name)
    fails_with(nb04.check_helper_search, lambda *a: circuits.helper_search(*a), **helper_args, hint="not the helper set")
    fails_with(nb04.check_helper_search, not_implemented, **helper_args, hint="not implemented")


def test_helper_cases_separate_every_mistake():
    for seed in range(10):
        for sign in (-1.0, 1.0):
            case = nb04._helper_case(torch.Generator().manual_seed(seed), sign)
            wrongs = [w for w in nb04._HELPER_MISTAKES.values() if sign < 0 or w is not nb04._signed_change]
            assert nb04._distinct([nb04._helper_change(**case)] + [w(**case) for w in wrongs])


# 04.6


@pytest.fixture(scope="module")
def knockout_design(backup_case):
    backup, clean, corrupted, metric = backup_case
    found = circuits.acdc(backup, clean, corrupted, metric, 0.1, progress=False).circuit
    return backup, found, clean, corrupted, metric


def test_knockout_design(knockout_design):
    nb04.check_knockout_design({"L0H0"}, *knockout_design)
    nb04.check_knockout_design(["L0H0", "L1H1"], *knockout_design)  # another valid design
    fails_with(nb04.check_knockout_design, set(), *knockout_design, hint="with nothing knocked out")
    fails_with(nb04.check_knockout_design, {"L1H0"}, *knockout_design, hint="removes the behaviour from the model too")
    fails_with(nb04.check_knockout_design, {"embed"}, *knockout_design, hint="removes the behaviour from the model too")
    fails_with(nb04.check_knockout_design, {"L0H1"}, *knockout_design, hint="respond alike")
    fails_with(nb04.check_knockout_design, {"logits"}, *knockout_design, hint="cannot be knocked out")
    fails_with(nb04.check_knockout_design, "L0H0", *knockout_design, hint="a set of node names")
    fails_with(nb04.check_knockout_design, None, *knockout_design, hint="set knocked_out")


# ---------------------------------------------------------------- every fresh case separates every mistake (by construction)


@pytest.mark.parametrize(
    "draw, reference, mistakes",
    [
        (lambda gen: nb04._faithfulness_case(gen, attn_only=True), circuits.faithfulness, nb04._FAITHFULNESS_MISTAKES),
    ],
    ids=["04.2"],
)
def test_fresh_cases_separate_every_mistake(draw, reference, mistakes):
    for seed in range(5 if "faithfulness" not in repr(reference) else 2):
        case = draw(torch.Generator().manual_seed(seed))
        assert nb04._distinct([reference(**case)] + [wrong(**case) for wrong in mistakes.values()])


def test_faithfulness_normalised_backwards_gets_the_general_hint(model, circuit, tokens):
    """A wrong answer that no typical mistake reproduces on every case is not told it made one of them."""
    def backwards(*args):
        return 1 - faithfulness_by_hand(*args)

    fails_with(nb04.check_faithfulness, backwards, model, circuit, *tokens, logit_diff, hint="patch graph(model).edges − circuit.edges")
