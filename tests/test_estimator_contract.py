"""The contract every registered estimator keeps, checked for each one on tiny random models.

Parametrized over the registry (every study method of every entry of ``ESTIMATORS``), so that a new estimator
is checked by registering it: its class describes itself consistently, one step gives a finite loss and the
metrics its panels declare, an optimiser step changes exactly the components it ``trains``, a ``deterministic``
one gives the same gradient under any seed, and its state survives ``state_dict`` / ``load_state_dict``.
"""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from helpers import make_model, tiny_examples

from jsarag.config import Config, load_config
from jsarag.data import Batch
from jsarag.estimators import ESTIMATORS, build_estimator
from jsarag.models.rag import COMPONENTS
from jsarag.study.methods import BASELINES, UNTRAINED, Method, registered_methods
from jsarag.train.optim import build_optimizer

TOP_K = 3
# Settings the study does not compare but whose state must round-trip too (JSA's chain cache).
STATEFUL = {"jsa_chain_cache": Method("jsa", {"chain_cache": True, "reduction": "mean", "candidates": "posterior"})}
METHODS = registered_methods()
CASES = {**METHODS, **STATEFUL}


def make_estimator(method: Method):
    """The estimator of ``method``, built as a run builds it: from the config (its registry-made section)."""
    return build_estimator(load_config(None, [*method.overrides(), f"estimator.top_k={TOP_K}"]).estimator)


@pytest.fixture(scope="module")
def model():
    return make_model()


@pytest.fixture
def batch():
    return Batch.from_examples(tiny_examples())


def snapshot(model) -> dict[str, dict[str, torch.Tensor]]:
    return {name: copy.deepcopy(model.component(name).state_dict()) for name in COMPONENTS}


def changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> bool:
    return any(not torch.equal(before[k], after[k]) for k in before)


def gradients(model, batch, estimator, seed: int) -> tuple[float, list[torch.Tensor]]:
    """The loss and the gradient of every trainable parameter, with the global RNG seeded (dropout off)."""
    model.eval()
    model.set_trainable(set(estimator.trains) - {"passage"})
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    loss, _ = model(batch, estimator)
    loss.backward()
    return loss.item(), [p.grad.clone() for p in model.parameters() if p.grad is not None]


@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_the_class_describes_itself_consistently(name):
    cls = ESTIMATORS[name]
    assert cls.name == name
    assert dataclasses.is_dataclass(cls.options)
    assert getattr(Config().estimator, name) == cls.options()  # its config section, all defaults
    fields = {f.name for f in dataclasses.fields(cls.options)}
    assert cls.methods, "an estimator brings at least one study method"
    for options in cls.methods.values():
        assert set(options) <= fields
    assert set(cls.trains) <= set(COMPONENTS)
    for panel in cls.panels:
        assert set(panel.compared) <= set(panel.metrics), panel.name


def test_method_names_are_unique_over_the_registry():
    names = [m for cls in ESTIMATORS.values() for m in cls.methods]
    assert len(names) == len(set(names))
    assert not set(names) & {*BASELINES, UNTRAINED}


@pytest.mark.parametrize("method", list(METHODS))
def test_one_step_changes_exactly_the_trained_components(method, batch):
    model = make_model()
    estimator = make_estimator(METHODS[method])
    trained = set(estimator.trains) - {"passage"}  # the passage encoder is frozen here (index not refreshed)
    model.set_trainable(trained)
    model.train()
    optimizer = build_optimizer(model, Config().optim)
    for group in optimizer.param_groups:
        group["lr"] = 1e-2
    before = snapshot(model)
    loss, metrics = model(batch, estimator)
    assert torch.isfinite(loss) and metrics["loss"] == pytest.approx(loss.item())
    declared = {key for panel in estimator.panels for key in panel.metrics}
    assert declared <= set(metrics), f"declared in panels but not logged: {sorted(declared - set(metrics))}"
    loss.backward()
    optimizer.step()
    after = snapshot(model)
    for name in COMPONENTS:
        assert changed(before[name], after[name]) == (name in trained), name


@pytest.mark.parametrize("method", [m for m in METHODS if make_estimator(METHODS[m]).deterministic])
def test_a_deterministic_estimator_gives_the_same_gradient_under_any_seed(method, model, batch):
    estimator = make_estimator(METHODS[method])
    loss_a, grads_a = gradients(model, batch, estimator, seed=1)
    loss_b, grads_b = gradients(model, batch, estimator, seed=2)
    assert loss_a == loss_b
    assert grads_a and all(torch.equal(a, b) for a, b in zip(grads_a, grads_b))


@pytest.mark.parametrize("method", list(CASES))
def test_state_round_trips_and_the_restored_estimator_continues_alike(method, model, batch):
    estimator = make_estimator(CASES[method])
    with torch.no_grad():
        estimator(model, batch)  # a step writes whatever state the estimator keeps
    state = estimator.state_dict()
    restored = make_estimator(CASES[method])
    restored.load_state_dict(copy.deepcopy(state))
    assert restored.state_dict() == state
    steps = []
    for instance in (estimator, restored):
        torch.manual_seed(5)
        with torch.no_grad():
            steps.append(instance(model, batch)[0].item())
    assert steps[0] == steps[1]
    assert restored.state_dict() == estimator.state_dict()
