"""The methods a study compares, as config overrides on top of one dataset config."""

from __future__ import annotations

METHODS: dict[str, list[str]] = {
    "rag_sequence": ["estimator.name=rag_sequence"],
    "rag_token": ["estimator.name=rag_token"],
    "vrag_exact": ["estimator.name=vrag", "estimator.vrag.mode=exact"],
    "vrag_sampled": ["estimator.name=vrag", "estimator.vrag.mode=sampled"],
    "jsa_sum": ["estimator.name=jsa", "estimator.jsa.reduction=sum"],
    "jsa_mean": ["estimator.name=jsa", "estimator.jsa.reduction=mean"],
}

# Reference points: the generator fine-tuned on the fixed prior's passages (no end-to-end retriever
# training), and the models as loaded (no training at all).
FROZEN_RETRIEVER = "frozen_retriever"
UNTRAINED = "untrained"
BASELINES: dict[str, list[str]] = {
    FROZEN_RETRIEVER: ["estimator.name=rag_sequence", "train.freeze=[prior]"],
}

# Estimators whose gradient is a deterministic function of the parameters and the batch.
DETERMINISTIC = {"rag_sequence", "rag_token", "vrag_exact", FROZEN_RETRIEVER}
