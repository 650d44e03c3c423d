"""The methods a study compares, as config overrides on top of one dataset config.

Every registered estimator brings its own (``Estimator.methods``: the option settings worth comparing, e.g.
VRAG's exact and sampled expectations); the study adds two reference points of its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from jsarag.errors import UserError
from jsarag.estimators import ESTIMATORS
from jsarag.estimators.base import MethodOptions


@dataclass(frozen=True)
class Method:
    estimator: str
    options: MethodOptions = field(default_factory=dict)  # the estimator's options that differ from the config's
    extra: tuple[str, ...] = ()  # overrides outside the estimator section

    def overrides(self) -> list[str]:
        return [f"estimator.name={self.estimator}",
                *(f"estimator.{self.estimator}.{key}={value}" for key, value in self.options.items()), *self.extra]


def registered_methods() -> dict[str, Method]:
    """Every registered estimator's methods, in the registry's order."""
    return {method: Method(name, options) for name, cls in ESTIMATORS.items()
            for method, options in cls.methods.items()}


# Reference points: the generator fine-tuned on the fixed prior's passages (no end-to-end retriever
# training), and the models as loaded (no training at all).
FROZEN_RETRIEVER = "frozen_retriever"
UNTRAINED = "untrained"
BASELINES: Mapping[str, Method] = {
    FROZEN_RETRIEVER: Method("rag_sequence", extra=("train.freeze=[prior]",)),
}

# The method the report measures the others against, when it is run: the one this project is about.
PREFERRED_REFERENCE = "jsa_sum"


def all_methods() -> dict[str, Method]:
    """The registered methods and the baselines, by name."""
    return {**registered_methods(), **BASELINES}


def choose_methods(text: str | None) -> list[str]:
    """The methods named in a comma-separated list (every registered one for None), checked."""
    known = registered_methods()
    if text is None:
        return list(known)
    chosen = [m for m in text.split(",") if m]
    unknown = sorted(set(chosen) - set(known))
    if unknown:
        raise UserError(f"unknown method(s) {', '.join(unknown)} (known: {', '.join(known)})")
    if not chosen:
        raise UserError(f"no method given (known: {', '.join(known)})")
    return chosen


def choose_reference(chosen: list[str], requested: str | None) -> str:
    """The method the significance table compares against: ``requested``, else the preferred one when it
    runs, else the first chosen."""
    if requested is not None:
        if requested not in chosen:
            raise UserError(f"--reference {requested} is not among the methods run ({', '.join(chosen)})")
        return requested
    return PREFERRED_REFERENCE if PREFERRED_REFERENCE in chosen else chosen[0]
