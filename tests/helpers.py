"""Small shared test data."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

def _shared_data() -> Path:
    """The project's real datasets: $JSARAG_SHARED_DATA, ../shared/data beside the checkout, or /work."""
    for candidate in (os.environ.get("JSARAG_SHARED_DATA"), REPO.parent / "shared" / "data", "/work/shared/data"):
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    return REPO.parent / "shared" / "data"


SHARED_DATA = _shared_data()


def tiny_passages(n: int = 5):
    from jsarag.data import Passage

    texts = [
        ("Paris", "Paris is the capital of France and sits on the Seine."),
        ("Oxygen", "Oxygen is a chemical element with symbol O and atomic number 8."),
        ("Rhine", "The Rhine flows from the Swiss Alps to the North Sea."),
        ("Tesla", "Nikola Tesla was an inventor known for alternating current."),
        ("Amazon", "The Amazon rainforest covers much of the Amazon basin of South America."),
        ("Steam", "A steam engine performs mechanical work using steam as its working fluid."),
        ("Tokyo", "Tokyo is the capital of Japan."),
        ("Nile", "The Nile is a major north-flowing river in northeastern Africa."),
    ]
    return [Passage(id=f"p{i}", title=t, text=x) for i, (t, x) in enumerate(texts[:n])]


def make_model(generator="builtin:tiny-llama", *, train_passage=False, lora=False, n=8):
    """Tiny random retriever and generator over ``n`` passages of ``tiny_passages``, indexed (no downloads)."""
    import torch

    from jsarag.config import GeneratorConfig, LoraConfig, RetrieverConfig
    from jsarag.data import Corpus
    from jsarag.index import build_index
    from jsarag.models.generator import Generator
    from jsarag.models.rag import RAGModel
    from jsarag.models.retriever import Retriever

    torch.manual_seed(0)
    corpus = Corpus(tiny_passages(n))
    retriever = Retriever.from_config(RetrieverConfig(model="builtin:tiny-bert",
                                                      train_passage_encoder=train_passage))
    gen = Generator.from_config(GeneratorConfig(model=generator, max_answer_tokens=8,
                                                lora=LoraConfig(enabled=lora, r=4, alpha=8)))
    retriever.attach(build_index(corpus, retriever.passage, progress=False), corpus)
    return RAGModel(retriever, gen)


def tiny_examples():
    """Three questions about ``tiny_passages``, each with its gold passage."""
    from jsarag.data import Example

    return [
        Example("e1", "Which river flows to the North Sea?", ("the Rhine",), ("p2",), "question"),
        Example("e2", "Who invented alternating current systems?", ("Nikola Tesla",), ("p3",), "question"),
        Example("e3", "What is the capital of France?", ("Paris",), ("p0",), "question"),
    ]


def hand_token_logprobs(generator, query: str, kind: str, passages, answer: str):
    """log p(y_t | x, passages read together, y_<t) for each answer token, float64 [L]: one forward pass of
    the language model over the prompt followed by the answer, unpadded (independent of the batched scoring)."""
    import torch

    prompt = generator.prompts.prompt_ids(query, kind, list(passages))
    target = generator.prompts.answer_ids(answer)
    logits = generator.model(input_ids=torch.tensor([prompt + target])).logits[0].double()
    predicted = logits[len(prompt) - 1: len(prompt) - 1 + len(target)]  # position P-1+t predicts token t
    return torch.log_softmax(predicted, -1).gather(-1, torch.tensor(target)[:, None]).squeeze(-1)


def jsarag(*args: object) -> None:
    """``jsarag ARGS`` in this process (where a test's monkeypatches and registry entries hold), exit code 0."""
    from jsarag.cli import app

    argv = [str(a) for a in args]
    code = app(args=argv, standalone_mode=False)
    assert code in (None, 0), f"`jsarag {' '.join(argv)}` exited with {code}"


def jsarag_logged(args: list[str], log: Path) -> None:
    """``jsarag compare``'s way of starting a command (``study.compare._jsarag``), run in this process."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as f:
        f.write("$ jsarag " + " ".join(args) + "\n")
    jsarag(*args)


# ---- a stand-in for checkpoint tests ------------------------------------------------------------------------------
def stand_in_model(width: int = 64):
    """A Linear(width, width) whose save_pretrained writes generator/model.safetensors, like the real model's."""
    import torch
    from safetensors.torch import save_file

    class StandIn(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(width, width)

        def save_pretrained(self, path: Path) -> None:
            folder = Path(path) / "generator"
            folder.mkdir(parents=True)
            save_file({k: v.contiguous() for k, v in self.state_dict().items()}, folder / "model.safetensors")

    return StandIn()


class NoState:
    """An estimator without state, for save_checkpoint and load_training_state."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        assert state == {}
