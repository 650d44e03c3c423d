"""The real packaged models, offline: MiniLM retrieves and SmolLM2-135M-Instruct answers on SQuAD.

Set JSARAG_TEST_CACHE=~/.cache/jsarag to reuse an already materialised SmolLM2 (else ~20 s once).
"""

from __future__ import annotations

import pytest
import torch
from helpers import SHARED_DATA

from jsarag.config import GeneratorConfig, RetrieverConfig
from jsarag.data import Batch, Corpus, load_examples
from jsarag.eval.metrics import token_f1
from jsarag.index import build_index
from jsarag.models.generator import Generator
from jsarag.models.rag import RAGModel
from jsarag.models.retriever import Retriever
from jsarag.train.distributed import autocast

pytestmark = pytest.mark.real
SQUAD = SHARED_DATA / "squad_v1_dev"
# As the commands run: bf16 where the CPU computes it natively, else float32 (bf16 is 3-10x slower there).
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def squad():
    if not SQUAD.is_dir():
        pytest.skip("../shared/data is not available")
    corpus = Corpus.from_jsonl(SQUAD / "corpus.jsonl")
    # The gold paragraphs of the first 40 dev questions plus 160 other paragraphs: a 200-passage KB.
    dev = load_examples(SQUAD / "dev.jsonl", corpus)[:40]
    keep = {pid for e in dev for pid in e.positive_ids}
    rows = sorted({corpus.row(p) for p in keep} | set(range(0, 2067, 13)))
    return Corpus([corpus[r] for r in rows], source="squad-sample"), dev


@pytest.fixture(scope="module")
def model(squad):
    corpus, _ = squad
    retriever = Retriever.from_config(RetrieverConfig())
    generator = Generator.from_config(GeneratorConfig())
    with autocast(CPU, "auto"):
        retriever.attach(build_index(corpus, retriever.passage, progress=False), corpus)
    return RAGModel(retriever, generator).eval()


def test_minilm_matches_sentence_transformers():
    from sentence_transformers import SentenceTransformer

    from jsarag.models.pretrained import minilm_path

    retriever = Retriever.from_config(RetrieverConfig())
    texts = ["The Normans were in Normandy.", "Packet switching groups data into packets."]
    ours = retriever.passage.encode(texts)
    theirs = SentenceTransformer(str(minilm_path()), device="cpu").encode(texts)
    assert ours.shape == (2, 384)
    assert abs(ours - theirs).max() < 1e-4


def test_retrieves_gold_passages_and_answers_a_squad_question(model, squad):
    corpus, dev = squad
    batch = Batch.from_examples(dev[:8])
    retriever, generator = model.retriever, model.generator
    with torch.no_grad(), autocast(CPU, "auto"):
        rows = retriever.search(retriever.prior_vectors(batch.queries), 5)
        hits = [any(corpus[r].id in e.positive_ids for r in row) for row, e in zip(rows.tolist(), dev[:8])]
        gold = [[corpus[corpus.row(e.positive_ids[0])]] for e in dev[:8]]
        answers, confidence = generator.generate(batch.queries, batch.kind, gold, max_new_tokens=24)
    assert sum(hits) >= 6, hits  # MiniLM finds the gold paragraph in its top 5 for most questions
    f1 = [token_f1(a, e.answers) for a, e in zip(answers, dev[:8])]
    assert max(f1) >= 0.5 and sum(f > 0 for f in f1) >= 4, list(zip(answers, f1))
    assert torch.isfinite(confidence).all()


def test_gold_passage_makes_the_answer_more_likely(model, squad):
    """p_g(y | x, gold) > p_g(y | x, unrelated) for most questions: the signal JSA-RAG learns from."""
    corpus, dev = squad
    batch = Batch.from_examples(dev[:6])
    unrelated = corpus[0] if corpus[0].id not in {p for e in dev[:6] for p in e.positive_ids} else corpus[1]
    passages = [[corpus[corpus.row(e.positive_ids[0])], unrelated] for e in dev[:6]]
    with torch.no_grad(), autocast(CPU, "auto"):
        loglik = model.generator.sequence_logprob(batch.queries, batch.kind, passages, batch.answers)
    assert (loglik[:, 0] > loglik[:, 1]).sum() >= 5, loglik
