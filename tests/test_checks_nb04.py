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
    fails_with(nb04.check_greedy_prune, lambda *a: greedy_by_hand(*a, signed=True), *greedy_args, hint="signed change")
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

ALL = {f"e{i}" for i in range(20)}
TRUTH = {f"e{i}" for i in range(5)}
FOUND = {"e0", "e1", "e2", "e10", "e11", "e12", "e13"}


def test_roc_point():
    nb04.check_roc_point(lambda found, truth, all_edges: (len(found - truth) / len(all_edges - truth), len(found & truth) / len(truth)), FOUND, TRUTH, ALL)

    def counted(found, truth, all_edges):
        tp = sum(e in truth for e in found)
        fp = len(found) - tp
        return [fp / (len(all_edges) - len(truth)), tp / len(truth)]

    nb04.check_roc_point(counted, FOUND, TRUTH, ALL)
    fails_with(nb04.check_roc_point, lambda *a: counted(*a)[::-1], FOUND, TRUTH, ALL, hint="(tpr, fpr)")
    fails_with(nb04.check_roc_point, lambda f, t, a: (len(f - t) / len(a), len(f & t) / len(t)), FOUND, TRUTH, ALL, hint="by all edges")
    fails_with(nb04.check_roc_point, lambda f, t, a: (len(f - t) / len(f), len(f & t) / len(t)), FOUND, TRUTH, ALL, hint="1 − precision")
    fails_with(nb04.check_roc_point, not_implemented, FOUND, TRUTH, ALL, hint="not implemented")


# 04.5


@pytest.fixture(scope="module")
def minimality_args():
    return tuple(nb04._minimality_case(torch.Generator().manual_seed(4)).values())


def test_minimality(minimality_args):
    nb04.check_minimality(lambda circuit, all_edges, score: circuits.edge_drops(circuit, all_edges, score), *minimality_args)

    def by_hand(circuit, all_edges, score):
        outside = all_edges - circuit
        return {e: score(outside) - score(outside | {e}) for e in circuit}

    nb04.check_minimality(by_hand, *minimality_args)
    fails_with(nb04.check_minimality, lambda c, a, s: {e: s(set()) - s({e}) for e in c}, *minimality_args, hint="effect in the full model")
    fails_with(nb04.check_minimality, lambda c, a, s: {e: -v for e, v in by_hand(c, a, s).items()}, *minimality_args, hint="sign is flipped")
    fails_with(nb04.check_minimality, lambda c, a, s: {e: s((a - c) | {e}) for e in c}, *minimality_args, hint="returned F(C \\ {e}) itself")
    fails_with(nb04.check_minimality, lambda c, a, s: {e: s(c) - s(c - {e}) for e in c}, *minimality_args, hint="patched the circuit's edges")
    fails_with(nb04.check_minimality, not_implemented, *minimality_args, hint="not implemented")


# 04.6


@pytest.fixture(scope="module")
def knockout_args():
    return tuple(nb04._incompleteness_case(torch.Generator().manual_seed(5), 1.0).values())


def incompleteness_by_hand(circuit, all_edges, nodes, score, *, into=False, intact=False, signed=False):
    knocked = {e for e in all_edges if (receiver_node(e.receiver) if into else e.sender) in nodes}
    in_circuit = score((all_edges - circuit) | knocked)
    in_model = score(set()) if intact else score(knocked)
    return in_circuit - in_model if signed else abs(in_circuit - in_model)


def test_incompleteness(knockout_args):
    nb04.check_incompleteness(lambda circuit, all_edges, nodes, score: circuits.knockout(circuit, all_edges, nodes, score).gap, *knockout_args)
    nb04.check_incompleteness(incompleteness_by_hand, *knockout_args)
    fails_with(nb04.check_incompleteness, lambda *a: incompleteness_by_hand(*a, intact=True), *knockout_args, hint="intact model")
    fails_with(nb04.check_incompleteness, lambda *a: incompleteness_by_hand(*a, into=True), *knockout_args, hint="edges INTO the nodes")
    fails_with(nb04.check_incompleteness, lambda *a: incompleteness_by_hand(*a, signed=True), *knockout_args, hint="signed difference")
    fails_with(nb04.check_incompleteness, lambda *a: -incompleteness_by_hand(*a, signed=True), *knockout_args, hint="signed difference")
    fails_with(nb04.check_incompleteness, not_implemented, *knockout_args, hint="not implemented")


# ---------------------------------------------------------------- every fresh case separates every mistake (by construction)


@pytest.mark.parametrize(
    "draw, reference, mistakes",
    [
        (nb04._roc_case, nb04._roc_point, nb04._ROC_MISTAKES),
        (nb04._minimality_case, nb04._drops, nb04._MINIMALITY_MISTAKES),
        (lambda gen: nb04._incompleteness_case(gen, 1.0), nb04._gap, dict(list(nb04._INCOMPLETENESS_MISTAKES.items())[:2])),
        (lambda gen: nb04._faithfulness_case(gen, attn_only=True), circuits.faithfulness, nb04._FAITHFULNESS_MISTAKES),
    ],
    ids=["04.4", "04.5", "04.6", "04.2"],
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
