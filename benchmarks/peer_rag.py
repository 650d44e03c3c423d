"""jsarag's RAG-Sequence training step vs transformers' RagSequenceForGeneration, same models and inputs.

Both sides share the very same nn.Module objects: the prior query encoder of a jsarag Retriever
(``builtin:minilm``; ``--tiny``: ``builtin:tiny-bert``) and the seq2seq generator (``builtin:tiny-bart``;
``--generator builtin:tiny-t5``), with the same K, the same retrieved passages and the same prompts.

What each side's timed step does (forward + backward; ``zero_grad`` runs untimed before every call):

- ours:  ``RagSequence(top_k=K)(model, batch)`` then ``loss.backward()``: tokenises the questions, runs
  the query encoder, searches the FAISS index, reads back the K passage vectors, builds the prompts
  (passage ids are cached by the PromptBuilder, as in training), runs the generator, marginalises.
- peer:  the question encoder (``peer.rag.question_encoder``, pre-tokenised questions) with mean pooling
  and normalisation, ``doc_scores = q . p / tau`` against the same K passage vectors, then
  ``RagSequenceForGeneration(context_input_ids, context_attention_mask, doc_scores, labels, n_docs=K)``
  and ``loss.mean().backward()``. The search and the prompt building are done beforehand, outside the
  timed region, which is how transformers' API takes them (``retriever=None``): the peer gets that work
  for free, ours pays for it.

First the two losses (and gradients) are compared on the same inputs in fp32 with dropout off; then
the training step is timed as interleaved pairs. Headline: ``ours_over_transformers`` (median of the
per-pair ratios; target <= 1.0).

Run:  .venv/bin/python benchmarks/peer_rag.py [--quick | --smoke] [--tiny] [--generator builtin:tiny-t5]
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import _common as common

NAME = "peer_rag"
EQUALITY_TOLERANCE = 1e-4
GRADIENT_TOLERANCE = 1e-3

EQUALITY_NOTE = (
    "Same objective, configured as follows. transformers' RagSequenceForGeneration feeds `labels` unchanged "
    "as decoder_input_ids and get_nll scores labels[:, 1:] (it shifts the targets left and pads with "
    "pad_token_id), whereas a plain seq2seq model shifts labels right behind decoder_start_token_id. So the "
    "peer gets labels = [decoder_start_token_id] + answer_ids (answer tokens + eos, as "
    "PromptBuilder.answer_ids) "
    "right-padded with the generator's pad id; get_nll then masks every pad target, exactly the tokens our "
    "answer mask drops. exclude_bos_score=False (use_bos is False anyway: the first target is an answer "
    "token, not BOS), label_smoothing=0, reduce_loss=False gives the per-example NLL [B], whose mean is our "
    "loss (ours is -mean_b logsumexp_k(log_softmax(doc_scores)_k + sum_t log p(y_t)), transformers' the "
    "same per example). doc_scores = (q . p) / tau with tau = retriever.temperature, so "
    "log_softmax(doc_scores) "
    "is our log prior over the K candidates. transformers adds the doc log-prob at the second target "
    "position instead of the first, which does not change the sum because every target has >= 2 tokens "
    "(answer + eos); this is asserted. No change to our loss was needed for the check."
)


def parse_args(argv=None):
    p = common.parser(__doc__.split("\n\n")[0])
    p.add_argument("--tiny", action="store_true", help="builtin:tiny-bert as the retriever instead of MiniLM")
    p.add_argument("--retriever", default=None, help="retriever model (overrides --tiny)")
    p.add_argument("--generator", default="builtin:tiny-bart", help="a seq2seq generator")
    p.add_argument("--data", type=Path, default=None, help="folder with corpus.jsonl and dev.jsonl")
    p.add_argument("--corpus-size", type=int, default=None, help="passages indexed (default 500, quick 100)")
    p.add_argument("--batch-size", type=int, default=None, help="B: questions per step (default 8; smoke 2)")
    p.add_argument("--top-k", type=int, default=None, help="K: passages per question (default 5; smoke 2)")
    p.add_argument("--repeats", type=int, default=None, help="timed pairs (default 20, quick 5)")
    p.add_argument("--warmup", type=int, default=None, help="untimed pairs first (default 3, quick 1)")
    p.add_argument("--score-batch-size", type=int, default=None,
                   help="our generator's score_batch_size (default: jsarag's GeneratorConfig default)")
    p.add_argument("--train-mode", action="store_true",
                   help="time with dropout on (module.train()); the default times in eval mode so both sides "
                        "retrieve the same passages and do identical work (the tiny models have no dropout)")
    return p.parse_args(argv)


def load_data(data: Path, corpus_size: int, batch_size: int, seed: int):
    """B dev questions (seeded choice) and a corpus of ``corpus_size`` passages holding their gold passages:
    those, then the first other passages of corpus.jsonl, kept in file order."""
    from jsarag.data import Batch, Corpus, load_examples

    full = Corpus.from_jsonl(data / "corpus.jsonl")
    examples = [e for e in load_examples(data / "dev.jsonl", full) if e.positive_ids]
    if len(examples) < batch_size:
        raise SystemExit(f"only {len(examples)} dev questions have gold passages; lower --batch-size")
    chosen = [examples[i] for i in sorted(random.Random(seed).sample(range(len(examples)), batch_size))]
    rows = {full.row(pid) for e in chosen for pid in e.positive_ids}
    if len(rows) > corpus_size:
        raise SystemExit(f"the {batch_size} questions need {len(rows)} gold passages; raise --corpus-size")
    for row in range(len(full)):
        if len(rows) >= corpus_size:
            break
        rows.add(row)
    corpus = Corpus([full[r] for r in sorted(rows)], source=f"{data / 'corpus.jsonl'} ({len(rows)} passages)")
    return corpus, Batch.from_examples(chosen), len(examples)


def build_model(retriever_name: str, generator_name: str, corpus, score_batch_size: int | None):
    from jsarag.config import GeneratorConfig, RetrieverConfig
    from jsarag.index import build_index
    from jsarag.models.generator import Generator
    from jsarag.models.rag import RAGModel
    from jsarag.models.retriever import Retriever

    retriever = Retriever.from_config(RetrieverConfig(model=retriever_name))
    gcfg = GeneratorConfig(model=generator_name, kind="seq2seq")
    if score_batch_size is not None:
        gcfg.score_batch_size = score_batch_size
    generator = Generator.from_config(gcfg)
    model = RAGModel(retriever, generator)
    index = build_index(corpus, retriever.passage, progress=False)
    retriever.attach(index, corpus)
    # What the training loop trains for RAG-Sequence with a frozen passage encoder.
    model.set_trainable({"prior", "generator"})
    return model


def pad_right(seqs, value):
    import torch

    width = max(map(len, seqs))
    ids = torch.tensor([list(s) + [value] * (width - len(s)) for s in seqs], dtype=torch.long)
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs], dtype=torch.long)
    return ids, mask


def peer_inputs(model, batch, K: int):
    """Everything transformers' RAG-Sequence takes as given when it has no retriever."""
    import torch

    retriever, generator = model.retriever, model.generator
    with torch.no_grad():
        rows = retriever.search(retriever.prior_vectors(batch.queries), K)            # [B, K]
    cand = retriever.candidate_vectors(rows).float()                                  # [B, K, d], no grad
    prompts = [generator.prompts.prompt_ids(q, batch.kind, [retriever.corpus[int(r)]])
               for q, row in zip(batch.queries, rows.tolist()) for r in row]          # B*K, b-major
    context_ids, context_mask = pad_right(prompts, generator.pad_id)                   # [B*K, T]
    start = generator.model.config.decoder_start_token_id
    targets = [generator.prompts.answer_ids(a) for a in batch.answers]
    if min(map(len, targets)) < 2:
        raise SystemExit("an answer has a single target token: transformers' get_nll would drop its "
                         "doc score")
    labels, _ = pad_right([[start] + t for t in targets], generator.pad_id)            # [B, 1 + L]
    enc = retriever.prior
    q = enc.tokenizer(list(batch.queries), padding=True, truncation=True, max_length=enc.max_length,
                      return_tensors="pt")
    return {"rows": rows, "cand": cand, "context_input_ids": context_ids,
            "context_attention_mask": context_mask,
            "labels": labels, "q_input_ids": q["input_ids"], "q_attention_mask": q["attention_mask"],
            "targets": targets}


def make_peer(model, K: int):
    from transformers import RagConfig, RagSequenceForGeneration

    qe, gen = model.retriever.prior.model, model.generator.model
    config = RagConfig.from_question_encoder_generator_configs(
        qe.config, gen.config, n_docs=K, exclude_bos_score=False, reduce_loss=False, label_smoothing=0.0)
    workaround = None
    try:
        config.generator.bos_token_id
    except AttributeError:
        # transformers 5.24: get_nll reads config.generator.bos_token_id, which T5Config no longer has
        # (AttributeError). None is what that code expects for T5 ("bos_token_id is None for T5"); this is
        # set on the RAG config's own copy of the generator config, not on the generator's.
        config.generator.bos_token_id = None
        workaround = ("config.generator.bos_token_id set to None on RagConfig's copy of the generator "
                      "config: "
                      f"{type(config.generator).__name__} has no bos_token_id attribute and get_nll raises "
                      "AttributeError without it (transformers bug)")
    peer = RagSequenceForGeneration(config=config, question_encoder=qe, generator=gen)
    assert peer.rag.question_encoder is qe and peer.rag.generator is gen
    return peer, workaround


def peer_loss(peer, inputs, temperature: float, pooling: str, K: int):
    """The peer's full per-example NLL [B], question encoder included."""
    import torch

    hidden = peer.rag.question_encoder(input_ids=inputs["q_input_ids"],
                                       attention_mask=inputs["q_attention_mask"]).last_hidden_state
    if pooling == "cls":
        q = hidden[:, 0]
    else:
        m = inputs["q_attention_mask"].unsqueeze(-1).to(hidden.dtype)
        q = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
    q = torch.nn.functional.normalize(q.float(), dim=-1)
    doc_scores = torch.bmm(q.unsqueeze(1), inputs["cand"].transpose(1, 2)).squeeze(1) / temperature  # [B, K]
    out = peer(context_input_ids=inputs["context_input_ids"],
               context_attention_mask=inputs["context_attention_mask"], doc_scores=doc_scores,
               labels=inputs["labels"], n_docs=K, exclude_bos_score=False, reduce_loss=False)
    return out.loss


def grads(module):
    return {n: p.grad.detach().clone() for n, p in module.named_parameters() if p.grad is not None}


def measure(args) -> dict:
    common.quiet_libraries()
    common.apply_threads(args.threads)
    import torch

    from jsarag.estimators import RagSequence

    torch.manual_seed(args.seed)
    corpus_size = common.pick(args, "corpus_size", 500, 100, 30)
    repeats, warmup = common.pick(args, "repeats", 20, 5, 1), common.pick(args, "warmup", 3, 1, 0)
    retriever_name = args.retriever or ("builtin:tiny-bert" if args.tiny or args.smoke else "builtin:minilm")
    B, K = common.pick(args, "batch_size", 8, 8, 2), common.pick(args, "top_k", 5, 5, 2)
    machine = common.machine()
    common.say(f"peer_rag: {retriever_name} + {args.generator}, B={B}, K={K}, corpus={corpus_size}, "
               f"repeats={repeats}, warmup={warmup}{' (quick)' if args.quick else ''}")

    t0 = time.perf_counter()
    corpus, batch, eligible = load_data(common.data_dir(args), corpus_size, B, args.seed)
    model = build_model(retriever_name, args.generator, corpus, args.score_batch_size)
    estimator = RagSequence(top_k=K)
    peer, peer_workaround = make_peer(model, K)
    tau = model.retriever.temperature
    pooling = model.retriever.prior.pooling
    model.eval()
    inputs = peer_inputs(model, batch, K)
    common.say(f"setup {time.perf_counter() - t0:.1f}s: {len(corpus)} passages (gold of the B questions + the "
               f"first others), {eligible} dev questions to pick from; context_input_ids "
               f"{tuple(inputs['context_input_ids'].shape)}, labels {tuple(inputs['labels'].shape)}")

    # ---- 1. equality: same loss, same gradient, fp32, dropout off --------------------------------
    model.zero_grad(set_to_none=True)
    ours, _ = estimator(model, batch)
    ours.backward()
    g_ours = grads(model)
    with torch.no_grad():  # per-example NLL of ours, on the very rows the peer was given
        query = model.retriever.prior_vectors(batch.queries)
        rows_again = model.retriever.search(query, K)
        log_prior = model.retriever.log_probs(query, inputs["rows"])
        passages = model.retriever.passages(inputs["rows"])
        seq = model.generator.sequence_logprob(batch.queries, batch.kind, passages, batch.answers)
        ours_per_example = -torch.logsumexp(log_prior + seq, dim=-1)
    same_rows = bool(torch.equal(rows_again, inputs["rows"]))
    model.zero_grad(set_to_none=True)
    theirs_per_example = peer_loss(peer, inputs, tau, pooling, K)
    theirs = theirs_per_example.mean()
    theirs.backward()
    g_theirs = grads(model)
    model.zero_grad(set_to_none=True)

    loss_ours, loss_theirs = float(ours.detach()), float(theirs.detach())
    rel = abs(loss_ours - loss_theirs) / max(abs(loss_theirs), 1e-12)
    per_ex_rel = float(((ours_per_example - theirs_per_example.detach()).abs()
                        / theirs_per_example.detach().abs().clamp(min=1e-12)).max())
    shared = sorted(set(g_ours) & set(g_theirs))
    num = max(float((g_ours[n] - g_theirs[n]).abs().max()) for n in shared)
    den = max(float(g_theirs[n].abs().max()) for n in shared)
    grad_rel = num / max(den, 1e-12)
    common.say(f"equality: ours {loss_ours:.8f}, transformers {loss_theirs:.8f}, relative difference {rel:.2e} "
               f"(per example max {per_ex_rel:.2e}); gradients over {len(shared)} tensors: max |diff| / max |g| "
               f"= {grad_rel:.2e}; same retrieved rows: {same_rows}")
    if set(g_ours) != set(g_theirs):
        common.say(f"WARNING: parameters with gradient differ: ours only {sorted(set(g_ours) - set(g_theirs))[:5]}, "
                   f"transformers only {sorted(set(g_theirs) - set(g_ours))[:5]}")
    assert same_rows, "our estimator retrieved other passages than those given to the peer"
    assert rel < EQUALITY_TOLERANCE, f"losses differ: relative difference {rel:.3e}"
    assert per_ex_rel < EQUALITY_TOLERANCE, f"per-example losses differ: {per_ex_rel:.3e}"

    # ---- 2. timing: one training step each, interleaved -----------------------------------------
    model.train(args.train_mode)
    peer.train(args.train_mode)
    losses = {"ours": [], "transformers": []}

    def ours_step():
        loss, _ = estimator(model, batch)
        loss.backward()
        losses["ours"].append(float(loss.detach()))

    def peer_step():
        loss = peer_loss(peer, inputs, tau, pooling, K).mean()
        loss.backward()
        losses["transformers"].append(float(loss.detach()))

    def zero():
        model.zero_grad(set_to_none=True)

    common.say(f"timing {repeats} interleaved training steps (after {warmup} warm-up pairs), "
               f"{'train' if args.train_mode else 'eval'} mode ...")
    pair = common.interleaved(ours_step, peer_step, repeats=repeats, warmup=warmup, a_name="ours",
                              b_name="transformers", before=zero, progress=common.say if args.verbose else None)
    zero()
    common.say(pair.describe("training step"))
    ratio = pair.ratio
    common.say(f"ours_over_transformers = {ratio:.4f} (target <= 1.0: {'met' if ratio <= 1.0 else 'NOT met'})")

    gen_cfg = model.generator.model.config
    result = {
        "benchmark": "peer_rag",
        "size": common.size(args),
        "quick": args.quick,
        "ours_over_transformers": ratio,
        "target": "ours_over_transformers <= 1.0",
        "target_met": ratio <= 1.0,
        "ours_step_seconds_median": common.summarize(pair.a_seconds)["median"],
        "transformers_step_seconds_median": common.summarize(pair.b_seconds)["median"],
        "timing": pair.summary(),
        "equality": {
            "loss_ours": loss_ours,
            "loss_transformers": loss_theirs,
            "relative_difference": rel,
            "per_example_max_relative_difference": per_ex_rel,
            "gradient_max_abs_diff_over_max_abs_grad": grad_rel,
            "gradient_tensors_compared": len(shared),
            "tolerance": EQUALITY_TOLERANCE,
            "passed": rel < EQUALITY_TOLERANCE,
            "same_retrieved_rows": same_rows,
            "precision": "fp32",
            "mode": "eval (no dropout)",
        },
        "equality_note": EQUALITY_NOTE,
        "transformers_workaround": peer_workaround,
        "timed_losses_agree": (max(abs(a - b) / max(abs(b), 1e-12) for a, b in zip(losses["ours"],
                                                                                   losses["transformers"]))
                               < EQUALITY_TOLERANCE) if not args.train_mode else None,
        "config": {
            "retriever": retriever_name,
            "generator": args.generator,
            "generator_type": gen_cfg.model_type,
            "B": B,
            "K": K,
            "corpus_passages": len(corpus),
            "dev_questions_with_gold": eligible,
            "repeats": repeats,
            "warmup": warmup,
            "mode": "train (dropout on)" if args.train_mode else "eval (dropout off), gradients on",
            "temperature": tau,
            "score_batch_size": model.generator.score_batch_size,
            "trainable": ["prior", "generator"],
            "seed": args.seed,
        },
        "shapes": {
            "question_input_ids": list(inputs["q_input_ids"].shape),
            "context_input_ids": list(inputs["context_input_ids"].shape),
            "labels_with_start_token": list(inputs["labels"].shape),
            "answer_tokens_max": max(map(len, inputs["targets"])),
            "doc_scores": [B, K],
            "vocab_size": gen_cfg.vocab_size,
        },
        "what_is_timed": {
            "ours": "RagSequence(top_k=K)(model, batch) + backward: query tokenisation, query encoder, FAISS "
                    "search, vector read-back, prompt building (cached passage ids), generator in chunks of "
                    "score_batch_size, marginalisation",
            "transformers": "question encoder on pre-tokenised questions + mean pooling + normalisation, "
                            "doc_scores = q.p/tau, RagSequenceForGeneration forward with labels + backward; "
                            "search and prompt building done beforehand (untimed), as its API takes them",
            "untimed": "zero_grad(set_to_none=True) before every call; gc.collect()",
        },
        "machine": machine,
    }
    return result


def report(results: dict) -> str:
    f, verdict, d = common.f, common.verdict, results
    eq, cfg = d["equality"], d["config"]
    return "\n".join([
        "## Peer: our RAG-Sequence step against transformers' RagSequenceForGeneration", "",
        "`python benchmarks/peer_rag.py`. Same question encoder "
        f"({cfg['retriever']}), same generator ({cfg['generator']}, {cfg['generator_type']}), "
        f"B={cfg['B']}, K={cfg['K']}, same retrieved passages and inputs.", "",
        f"- Same loss: ours {eq['loss_ours']:.6f}, transformers {eq['loss_transformers']:.6f} "
        f"(relative difference {eq['relative_difference']:.1e}; gradients agree to "
        f"{eq['gradient_max_abs_diff_over_max_abs_grad']:.1e} of the largest). {d.get('equality_note', '')}",
        f"- Step time (forward + backward), median of {d['timing']['ratio']['n']} interleaved pairs: "
        f"ours {f(d['ours_step_seconds_median'], 3)} s, transformers "
        f"{f(d['transformers_step_seconds_median'], 3)} s; **ours / transformers = "
        f"{f(d['ours_over_transformers'])}** (target <= 1.0: {verdict(d['ours_over_transformers'], '<= 1.0')}; "
        f"interquartile range of the ratio {f(d['timing']['ratio']['q1'])}-{f(d['timing']['ratio']['q3'])}).",
        f"- Timed: ours = {d['what_is_timed']['ours']}; transformers = {d['what_is_timed']['transformers']}."])


def main(argv=None) -> None:
    args = parse_args(argv)
    results = common.write_results(measure(args), args, NAME)
    print(report(results))


if __name__ == "__main__":
    main()
