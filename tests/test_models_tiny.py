"""Retriever, generator and estimators on tiny random models built from configs (no downloads)."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import make_model, tiny_examples, tiny_passages

from jsarag.config import Config, load_config
from jsarag.data import Batch, Corpus
from jsarag.estimators import ESTIMATORS, JSA, JSAConfig
from jsarag.estimators.base import count_states
from jsarag.estimators.jsa import score_distinct
from jsarag.index import PassageIndex
from jsarag.models.generator import common_prefix_length
from jsarag.models.pretrained import ModelNotFoundError
from jsarag.models.retriever import passage_text
from jsarag.pipeline import build_model, load_corpus, prepare_index
from jsarag.train.logger import read_metrics
from jsarag.train.loop import train
from jsarag.train.optim import build_optimizer

TINY_YAML = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"

EXAMPLES = tiny_examples()


@pytest.fixture(scope="module")
def model():
    return make_model()


@pytest.fixture
def batch():
    return Batch.from_examples(EXAMPLES)


# ---- retriever ---------------------------------------------------------------------------------
def test_search_each_is_one_index_search_with_the_rows_of_separate_searches(model, batch, monkeypatch):
    retriever = model.retriever
    with torch.no_grad():
        prior = retriever.prior_vectors(batch.queries)                     # [3, d]
        post = retriever.posterior_vectors(batch.queries, batch.answers)   # [3, d]
    separate = [retriever.search(prior, 4), retriever.search(post[:2], 4)]
    index = retriever.index
    calls = []
    real = index.search
    monkeypatch.setattr(index, "search", lambda q, k: calls.append(len(q)) or real(q, k))
    together = retriever.search_each([prior, post[:2]], 4)
    assert calls == [5]  # the prior's 3 and the posterior's 2 queries in one call
    assert [t.shape for t in together] == [(3, 4), (2, 4)]
    for a, b in zip(together, separate):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_log_prior_is_a_normalised_distribution_with_gradient_into_the_query_encoder(model, batch):
    retriever = model.retriever
    rows = torch.tensor([[0, 1, 2], [3, 4, 5], [6, 7, 0]])
    log_prior = retriever.log_prior(batch.queries, rows)
    assert log_prior.shape == (3, 3)
    torch.testing.assert_close(log_prior.exp().sum(-1), torch.ones(3))
    log_prior[:, 0].sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in retriever.prior.parameters())
    assert all(p.grad is None for p in retriever.passage.parameters())
    retriever.zero_grad()


def test_frozen_passage_vectors_come_from_the_index_not_from_re_encoding(model, batch, monkeypatch):
    retriever = model.retriever
    rows = torch.tensor([[0, 1], [2, 3], [4, 5]])
    expected = torch.from_numpy(retriever.index.vectors(rows.numpy()))

    def forbidden(*args, **kwargs):
        raise AssertionError("the frozen passage encoder was run")

    monkeypatch.setattr(retriever.passage, "forward", forbidden)
    torch.testing.assert_close(retriever.candidate_vectors(rows), expected)
    retriever.log_prior(batch.queries, rows)


def test_trainable_passage_encoder_gets_gradient_from_re_encoded_candidates(batch):
    model = make_model(train_passage=True)
    rows = torch.tensor([[0, 1], [2, 3], [4, 0]])
    model.retriever.log_prior(batch.queries, rows)[:, 0].sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.retriever.passage.parameters())


def test_posterior_reads_query_separator_answer_and_starts_as_a_copy_of_the_prior(model):
    retriever = model.retriever
    assert retriever.posterior_text("Q?", "A") == "Q? [SEP] A"
    prior, post = retriever.prior.state_dict(), retriever.posterior.state_dict()
    assert all(torch.equal(prior[k], post[k]) for k in prior)
    assert retriever.prior.model is not retriever.posterior.model
    mask = torch.tensor([[True, True, False]] * 3)
    rows = torch.tensor([[0, 1, 2]] * 3)
    log_q = retriever.log_posterior([e.query for e in EXAMPLES], [e.answers[0] for e in EXAMPLES], rows, mask)
    assert torch.isinf(log_q[:, 2]).all() and torch.allclose(log_q[:, :2].exp().sum(-1), torch.ones(3))


# ---- generator ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["builtin:tiny-llama", "builtin:tiny-t5", "builtin:tiny-bart"])
def test_sequence_logprob_reductions_batching_and_padding(name, batch):
    model = make_model(name)
    gen, passages = model.generator, model.retriever.passages(torch.tensor([[0, 1], [2, 3], [4, 5]]))
    with torch.no_grad():
        tokens, mask = gen.token_logprobs(batch.queries, batch.kind, passages, batch.answers)
        summed = gen.sequence_logprob(batch.queries, batch.kind, passages, batch.answers, "sum")
        mean = gen.sequence_logprob(batch.queries, batch.kind, passages, batch.answers, "mean")
        gen.score_batch_size = 1  # one pair per forward: no padding at all
        alone = gen.sequence_logprob(batch.queries, batch.kind, passages, batch.answers, "sum")
    torch.testing.assert_close(summed, tokens.sum(-1))
    torch.testing.assert_close(mean, summed / mask.sum(-1, keepdim=True))
    torch.testing.assert_close(summed, alone, atol=1e-4, rtol=1e-5)  # padding and batching change nothing
    assert (tokens[~mask[:, None, :].expand_as(tokens)] == 0).all()
    assert (summed < 0).all()


def test_common_prefix_length_by_hand():
    assert common_prefix_length([[1, 2, 3], [1, 2, 4], [1, 2, 3, 5]]) == 2
    assert common_prefix_length([[1, 2], [1, 2, 3]]) == 2  # a whole sequence can be the prefix
    assert common_prefix_length([[5, 1], [6, 1]]) == 0
    assert common_prefix_length([[7, 8, 9]]) == 3


@pytest.mark.parametrize("lora", [False, True])
def test_scoring_without_gradient_runs_the_shared_head_once_and_changes_nothing(lora, batch):
    """No gradient: a chunk's common prompt prefix runs once (a [1, H] forward), its keys and values serve every
    row, and the log-probabilities equal those of full rows; with gradient every row runs in full."""
    model = make_model(lora=lora)
    gen = model.generator
    gen.model.eval()
    passages = model.retriever.passages(torch.tensor([[0, 5, 1], [2, 7, 3], [4, 6, 5]]))  # lengths differ
    prompts = [gen.prompts.prompt_ids(q, batch.kind, [p]) for q, ps in zip(batch.queries, passages) for p in ps]
    gen.score_batch_size = 4  # chunks of 4, 4 and 1 pairs (sorted by prompt length)
    shapes = []
    hook = gen.model.get_input_embeddings().register_forward_hook(
        lambda _m, inp, _o: shapes.append(tuple(inp[0].shape)))
    try:
        with torch.no_grad():
            shared = gen.token_logprobs(batch.queries, batch.kind, passages, batch.answers)[0]
            heads, shapes[:] = list(shapes), []
            gen.share_prefix = False
            full = gen.token_logprobs(batch.queries, batch.kind, passages, batch.answers)[0]
            full_shapes, shapes[:] = list(shapes), []
        gen.share_prefix = True
        with_grad = gen.token_logprobs(batch.queries, batch.kind, passages, batch.answers)[0]
    finally:
        hook.remove()
    torch.testing.assert_close(shared, full, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(with_grad.detach(), full, atol=1e-5, rtol=1e-5)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    chunks = [[prompts[j] for j in order[i:i + 4]] for i in range(0, len(order), 4)]
    expected_heads = [min(common_prefix_length(c), min(map(len, c)) - 1) for c in chunks[:2]]
    assert min(expected_heads) >= len(gen.prompts._head["question"])  # at least the instruction is shared
    assert heads[0] == (1, expected_heads[0]) and heads[2] == (1, expected_heads[1])  # head, rows, head, rows, rows
    assert [s[0] for s in heads] == [1, 4, 1, 4, 1]  # the lone last row runs in full
    assert heads[1][1] == full_shapes[0][1] - expected_heads[0]  # each row shorter by exactly the shared head
    assert [s[0] for s in full_shapes] == [4, 4, 1] and len(shapes) == 3  # with gradient: full rows only


def test_scoring_without_gradient_runs_full_rows_when_the_model_keeps_no_cache(batch):
    """A model that returns no cache for the head (transformers drops it under activation checkpointing in
    training mode with gradient; some architectures keep none): the rows run in full, with the same values."""
    class KeepsNoCache(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, **kwargs):
            out = self.inner(**kwargs)
            out.cache = None
            return out

    model = make_model()
    gen = model.generator
    passages = model.retriever.passages(torch.tensor([[0, 5], [2, 7], [4, 6]]))
    with torch.no_grad():
        full = gen.sequence_logprob(batch.queries, batch.kind, passages, batch.answers)
        gen.model = KeepsNoCache(gen.model)
        fallback = gen.sequence_logprob(batch.queries, batch.kind, passages, batch.answers)
    torch.testing.assert_close(fallback, full, atol=1e-5, rtol=1e-5)


def test_causal_loss_covers_exactly_the_answer_tokens(model):
    """Same number as transformers' own loss with the prompt masked out of the labels."""
    gen = model.generator
    passage = model.retriever.corpus[2]
    query, answer = EXAMPLES[0].query, EXAMPLES[0].answers[0]
    with torch.no_grad():
        ours = gen.pair_logprob([query], "question", [passage], [answer])[0]
        prompt = gen.prompts.prompt_ids(query, "question", [passage])
        target = gen.prompts.answer_ids(answer)
        ids = torch.tensor([prompt + target])
        labels = torch.tensor([[-100] * len(prompt) + target])
        hf_mean_nll = gen.model(input_ids=ids, labels=labels).loss
    assert ours.item() == pytest.approx(-hf_mean_nll.item() * len(target), rel=1e-5)


def test_generate_one_passage_or_concatenated(model, batch):
    gen = model.generator
    passages = model.retriever.passages(torch.tensor([[0, 1], [2, 3], [4, 5]]))
    texts, confidence = gen.generate(batch.queries, batch.kind, passages, max_new_tokens=4)
    assert len(texts) == 3 and all(isinstance(t, str) for t in texts)
    assert confidence.shape == (3,) and (confidence <= 0).all()
    texts, _ = gen.generate(batch.queries, batch.kind, passages, max_new_tokens=4, num_beams=2)
    assert len(texts) == 3
    two = gen.prompts.prompt_ids(batch.queries[0], "question", passages[0])
    one = gen.prompts.prompt_ids(batch.queries[0], "question", passages[0][:1])
    assert len(two) > len(one)


def test_dialogue_context_is_truncated_from_the_left(model):
    prompts = model.generator.prompts
    history = "\n".join(f"User: turn number {i} about hotels" for i in range(200))
    ids = prompts.query_ids(history, "context")
    text = model.generator.tokenizer.decode(ids)
    assert "199" in text and " 0 about" not in text


def test_unknown_model_name_is_a_clear_error():
    cfg = Config()
    cfg.generator.model = "builtin:tiny-llama"  # not the default SmolLM2, whose first build converts its GGUF
    cfg.retriever.model = "no-such-org/no-such-model"
    with pytest.raises(ModelNotFoundError, match="cannot load a model"):
        build_model(cfg)
    cfg.retriever.model = "builtin:nope"
    with pytest.raises(ModelNotFoundError, match="unknown built-in model 'builtin:nope'"):
        build_model(cfg)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_prepare_index_encodes_the_corpus_with_the_run_precision(precision):
    """A new index is encoded as `jsarag index build` encodes it: under ``train.precision``."""
    cfg = Config()
    cfg.retriever.model, cfg.generator.model = "builtin:tiny-bert", "builtin:tiny-llama"
    cfg.train.precision = precision
    corpus = Corpus(tiny_passages(8))
    model = build_model(cfg)
    index = prepare_index(cfg, corpus, model, progress=False)
    assert model.retriever.index is index
    texts = [passage_text(p) for p in corpus]
    fp32 = model.retriever.passage.encode(texts)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = model.retriever.passage.encode(texts)
    stored = index.vectors(np.arange(len(corpus)))  # kept in float16
    want, other = (bf16, fp32) if precision == "bf16" else (fp32, bf16)
    np.testing.assert_array_equal(stored, want.astype(np.float16).astype(np.float32))
    assert not np.array_equal(stored, other.astype(np.float16).astype(np.float32))  # the precisions differ


@pytest.mark.parametrize("refresh_every", [2, 0])
def test_index_refresh_re_embeds_the_corpus_with_the_trained_passage_encoder(tmp_path, refresh_every):
    """With the passage encoder training, `index.refresh_every` re-encodes the corpus; without it the
    checkpoint's index still holds the initial encoder's vectors."""
    cfg = load_config(TINY_YAML, ["retriever.train_passage_encoder=true", f"index.refresh_every={refresh_every}",
                                  "optim.lr_passage=1e-2", "train.steps=2", "train.save_every=2", "data.dev=null"])
    checkpoint = train(cfg, tmp_path / "run")
    stored = PassageIndex.load(checkpoint / "index")
    corpus = load_corpus(cfg.data)
    trained = build_model(cfg, checkpoint).retriever.passage.encode([passage_text(p) for p in corpus])
    vectors = stored.vectors(np.arange(len(corpus)))  # float16 on disk: within one float16 step (< 5e-4)
    if refresh_every:
        np.testing.assert_allclose(vectors, trained, rtol=0, atol=5e-4)
    else:
        assert np.abs(vectors - trained).max() > 1e-2
    # Every step logs how stale the index was: steps since the refresh, and the cosine between the stored and
    # the fresh vectors of its candidates (1 at the first step, whose encoder built the index).
    records = [r for r in read_metrics(tmp_path / "run") if "loss" in r]
    assert [r["index/steps_since_refresh"] for r in records] == ([1, 0] if refresh_every else [1, 2])
    assert records[0]["index/candidate_cosine"] == pytest.approx(1.0, abs=1e-3)
    assert records[1]["index/candidate_cosine"] < 1.0 - 1e-4


# ---- estimators (the contract every one keeps: test_estimator_contract.py) -----------------------
def test_jsa_step_statistics_are_consistent(model, batch):
    with torch.no_grad():
        _, metrics = JSA(JSAConfig(num_proposals=6, reduction="mean", chain_cache=True, candidates="posterior"),
                         top_k=3)(model, batch)
    assert 0.0 <= metrics["accept_rate"] <= 1.0
    assert 1 <= metrics["distinct_states"] <= metrics["distinct_proposals"] <= metrics["candidates"]


def test_lora_trains_only_the_adapter(batch):
    model = make_model(lora=True)
    estimator = ESTIMATORS["rag_sequence"](top_k=2)
    model.set_trainable(estimator.trains - {"passage"})
    base = {k: v.clone() for k, v in model.generator.model.state_dict().items() if "lora_" not in k}
    lora = {k: v.clone() for k, v in model.generator.model.state_dict().items() if "lora_" in k}
    optimizer = build_optimizer(model, Config().optim)
    loss, _ = model(batch, estimator)
    loss.backward()
    optimizer.step()
    state = model.generator.model.state_dict()
    assert lora and all(torch.equal(base[k], state[k]) for k in base)
    assert any(not torch.equal(lora[k], state[k]) for k in lora)


def test_jsa_chain_cache_starts_the_next_chain_and_round_trips(model, batch, monkeypatch):
    import jsarag.estimators.jsa as jsa_module

    estimator = JSA(JSAConfig(num_proposals=5, chain_cache=True), top_k=3)
    with torch.no_grad():
        estimator(model, batch)
    assert set(estimator.cache) == {"e1", "e2", "e3"}
    state = estimator.state_dict()
    restored = JSA(JSAConfig(num_proposals=5, chain_cache=True), top_k=3)
    restored.load_state_dict(copy.deepcopy(state))
    assert restored.cache == estimator.cache
    seen = {}
    original = jsa_module.mis_chain

    def spy(log_w, proposals, log_u, init=None):
        seen["init"] = init
        return original(log_w, proposals, log_u, init)

    monkeypatch.setattr(jsa_module, "mis_chain", spy)
    captured_rows = {}
    original_union = jsa_module.candidate_union

    def union_spy(row_sets):
        rows, mask = original_union(row_sets)
        captured_rows["rows"] = rows
        return rows, mask

    monkeypatch.setattr(jsa_module, "candidate_union", union_spy)
    with torch.no_grad():
        restored(model, batch)
    starts = captured_rows["rows"].gather(1, seen["init"][:, None]).squeeze(1).tolist()
    corpus = model.retriever.corpus
    assert [corpus[r].id for r in starts] == [state["cache"][i] for i in batch.ids]


def test_jsa_scores_through_the_injected_scorer(model, batch):
    """A scorer that runs every pick, duplicates included (the released code's cost), gives the same loss."""
    calls = []

    def score_every_pick(model, batch, rows, picks, reduction):
        calls.append(picks.shape)
        values = model.generator.pair_logprob(
            [q for q in batch.queries for _ in range(picks.shape[1])], batch.kind,
            [model.retriever.corpus[r] for r in rows.gather(1, picks).reshape(-1).tolist()],
            [a for a in batch.answers for _ in range(picks.shape[1])], reduction).view(picks.shape)
        sums = torch.zeros(rows.shape, dtype=values.dtype).scatter_add(1, picks, values)
        return sums / count_states(picks, rows.shape[1]).clamp(min=1)

    values = []
    for scorer in (score_distinct, score_every_pick):
        torch.manual_seed(3)
        with torch.no_grad():
            loss, metrics = JSA(JSAConfig(num_proposals=6), top_k=3, scorer=scorer)(model, batch)
        values.append((loss.item(), metrics["accept_rate"]))
    assert calls == [(len(batch), 6), (len(batch), 6)]  # the proposals, then the chain's states
    assert values[0][0] == pytest.approx(values[1][0], rel=1e-5)
    assert values[0][1] == values[1][1]
