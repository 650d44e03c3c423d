"""Tests for the typed run configuration: YAML loading, dotted overrides, error messages, round trip."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from jsarag.config import (
    Config,
    DataConfig,
    EstimatorConfig,
    GeneratorConfig,
    LoraConfig,
    OptimConfig,
    load_config,
    save_config,
)
from jsarag.configtools import ConfigError, to_dict
from jsarag.estimators.jsa import JSAConfig
from jsarag.estimators.vrag import VRAGConfig

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny.yaml"
QUICKSTART = REPO / "src" / "jsarag" / "resources" / "configs" / "quickstart.yaml"


def write(tmp_path: Path, text: str, name: str = "cfg.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def config_error(path, overrides=None) -> str:
    """Load and return the ConfigError message (fails the test when something else happens)."""
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    message = str(info.value)
    assert "\n" not in message, "ConfigError messages are one line"
    return message


# --- loading the shipped configs ------------------------------------------------------------------


def test_tiny_yaml_types():
    cfg = load_config(TINY)
    assert isinstance(cfg, Config)
    assert cfg.data.corpus == "builtin:squad_mini/corpus.jsonl"
    assert cfg.data.test is None
    assert cfg.data.max_train_examples == 64 and type(cfg.data.max_train_examples) is int
    assert cfg.retriever.model == "builtin:tiny-bert"
    assert cfg.retriever.max_passage_length == 64
    assert cfg.generator.model == "builtin:tiny-llama"
    assert isinstance(cfg.generator.lora, LoraConfig) and cfg.generator.lora.enabled is False
    # 1.0e-3 is a float to YAML; the value must come out as a Python float.
    assert type(cfg.optim.lr_generator) is float and cfg.optim.lr_generator == pytest.approx(1e-3)
    assert type(cfg.optim.lr_prior) is float and type(cfg.optim.lr_posterior) is float
    # Defaults not in the file keep their declared types.
    assert cfg.optim.betas == (0.9, 0.95) and isinstance(cfg.optim.betas, tuple)
    assert type(cfg.optim.weight_decay) is float
    # Nested estimator options: given ones are set, the rest keep their defaults.
    assert isinstance(cfg.estimator, EstimatorConfig)
    assert cfg.estimator.name == "jsa" and cfg.estimator.top_k == 3
    assert isinstance(cfg.estimator.jsa, JSAConfig)
    assert cfg.estimator.jsa.num_proposals == 8
    assert cfg.estimator.jsa.reduction == "sum"
    assert cfg.estimator.options() is cfg.estimator.jsa
    assert isinstance(cfg.estimator.vrag, VRAGConfig) and cfg.estimator.vrag == VRAGConfig()
    assert cfg.train.steps == 4 and cfg.train.precision == "fp32"
    assert cfg.train.tensorboard is False and cfg.train.progress is False
    assert cfg.eval.top_k == 2 and cfg.eval.retrieval_ks == [1, 5, 10]


def test_quickstart_yaml_types():
    cfg = load_config(QUICKSTART)
    # Written as 3.0e-4 / 5.0e-5 in the file.
    assert type(cfg.optim.lr_generator) is float and cfg.optim.lr_generator == pytest.approx(3e-4)
    assert type(cfg.optim.lr_prior) is float and cfg.optim.lr_prior == pytest.approx(5e-5)
    assert cfg.optim.warmup_steps == 3
    assert type(cfg.retriever.temperature) is float and cfg.retriever.temperature == pytest.approx(0.1)
    assert cfg.generator.lora == LoraConfig(enabled=True, r=8, alpha=16)
    assert cfg.estimator.name == "jsa" and cfg.estimator.top_k == 3
    assert cfg.estimator.jsa == JSAConfig(num_proposals=20, reduction="sum", chain_cache=False,
                                          candidates="union")
    assert cfg.optim.betas == (0.9, 0.95) and isinstance(cfg.optim.betas, tuple)
    assert all(type(b) is float for b in cfg.optim.betas)
    assert cfg.train.precision == "auto" and cfg.eval.decode == "per_passage"
    # The shipped dialogue sample, inside the package (no path outside it).
    assert (cfg.data.corpus, cfg.data.train, cfg.data.dev) == (
        "builtin:dstc11/corpus.jsonl", "builtin:dstc11/train.jsonl", "builtin:dstc11/dev.jsonl")
    assert cfg.data.test is None and type(cfg.train.steps) is int


def test_defaults_without_a_file():
    cfg = load_config(None)
    assert cfg == Config()
    assert load_config(None, []) == Config()


def test_yaml_floats_in_every_spelling(tmp_path):
    # YAML 1.1 reads "1e-5" (no dot) as a string and "2" as an int: both must become floats.
    path = write(tmp_path, "data: {corpus: c.jsonl}\n"
                           "optim: {lr_generator: 1e-5, lr_prior: 3.0e-4, lr_posterior: 2,"
                           " betas: [1e-1, 0]}\n"
                           "retriever: {temperature: 5e-2}\n")
    cfg = load_config(path)
    assert type(cfg.optim.lr_generator) is float and cfg.optim.lr_generator == pytest.approx(1e-5)
    assert type(cfg.optim.lr_prior) is float and cfg.optim.lr_prior == pytest.approx(3e-4)
    assert type(cfg.optim.lr_posterior) is float and cfg.optim.lr_posterior == 2.0
    assert cfg.optim.betas == (0.1, 0.0) and all(type(b) is float for b in cfg.optim.betas)
    assert type(cfg.retriever.temperature) is float and cfg.retriever.temperature == pytest.approx(0.05)


# --- dotted overrides -----------------------------------------------------------------------------


def test_override_float_written_like_1e_minus_5():
    cfg = load_config(TINY, ["optim.lr_generator=1e-5"])
    assert type(cfg.optim.lr_generator) is float
    assert cfg.optim.lr_generator == 1e-5
    # The other learning rates are untouched.
    assert cfg.optim.lr_prior == pytest.approx(1e-3)


def test_override_estimator_name_and_nested_option():
    cfg = load_config(TINY, ["estimator.name=vrag", "estimator.vrag.mode=sampled"])
    assert cfg.estimator.name == "vrag"
    assert cfg.estimator.vrag.mode == "sampled"
    assert cfg.estimator.options() is cfg.estimator.vrag
    # Options of the other estimators from the file are kept.
    assert cfg.estimator.jsa.num_proposals == 8


def test_override_null_clears_an_optional():
    assert load_config(TINY).data.train is not None
    cfg = load_config(TINY, ["data.train=null", "data.max_train_examples=null"])
    assert cfg.data.train is None
    assert cfg.data.max_train_examples is None
    assert cfg.data.dev == "builtin:squad_mini/dev.jsonl"


def test_override_bool_and_lists():
    cfg = load_config(TINY, ["generator.lora.enabled=true", "eval.retrieval_ks=[1,3]",
                             "optim.betas=[0.8,0.9]",
                             "generator.lora.target_modules=[q_proj, v_proj]"])
    assert cfg.generator.lora.enabled is True
    assert cfg.eval.retrieval_ks == [1, 3] and all(type(k) is int for k in cfg.eval.retrieval_ks)
    assert cfg.optim.betas == (0.8, 0.9) and isinstance(cfg.optim.betas, tuple)
    assert all(type(b) is float for b in cfg.optim.betas)
    assert cfg.generator.lora.target_modules == ["q_proj", "v_proj"]
    assert load_config(QUICKSTART, ["generator.lora.enabled=false"]).generator.lora.enabled is False


def test_override_ints_strings_and_later_wins():
    cfg = load_config(TINY, ["train.steps=7", "train.steps=9", "generator.qa_instruction=Answer: briefly=now",
                             "retriever.posterior_model=null"])
    assert cfg.train.steps == 9 and type(cfg.train.steps) is int
    assert cfg.generator.qa_instruction == "Answer: briefly=now"
    assert cfg.retriever.posterior_model is None


def test_override_without_a_file():
    cfg = load_config(None, ["data.corpus=c.jsonl", "optim.lr_prior=2e-4", "estimator.jsa.num_proposals=3"])
    assert cfg.data == DataConfig(corpus="c.jsonl")
    assert cfg.optim.lr_prior == pytest.approx(2e-4)
    assert cfg.estimator.jsa.num_proposals == 3
    assert cfg.generator == GeneratorConfig()


def test_override_does_not_touch_the_file(tmp_path):
    path = write(tmp_path, TINY.read_text(encoding="utf-8"))
    before = path.read_text(encoding="utf-8")
    load_config(path, ["train.steps=99"])
    assert path.read_text(encoding="utf-8") == before


# --- errors ---------------------------------------------------------------------------------------


def test_unknown_nested_key_in_yaml(tmp_path):
    message = config_error(write(tmp_path, "data: {corpus: c.jsonl}\noptim: {lrr: 1}\n"))
    assert "optim.lrr" in message
    assert "lr_generator" in message  # lists the known keys at that level


def test_unknown_deep_key_in_yaml(tmp_path):
    message = config_error(write(tmp_path, "data: {corpus: c.jsonl}\nestimator: {jsa: {num_proposal: 3}}\n"))
    assert "estimator.jsa.num_proposal" in message


def test_a_saved_config_with_a_retired_key_loads(tmp_path):
    """Runs saved before estimator.jsa.score_all_proposals left the config hold it (a saved config lists every key)."""
    for value in ("false", "true"):
        path = write(tmp_path, f"data: {{corpus: c.jsonl}}\nestimator: {{jsa: {{score_all_proposals: {value}}}}}\n")
        assert load_config(path, saved=True).estimator.jsa == JSAConfig()
        assert "estimator.jsa.score_all_proposals" in config_error(path)  # a config being written: unknown key


def test_unknown_top_level_key_in_yaml(tmp_path):
    message = config_error(write(tmp_path, "data: {corpus: c.jsonl}\ntrainer: {steps: 3}\n"))
    assert "'trainer'" in message


@pytest.mark.parametrize("override, key", [
    ("optim.lrr=1", "optim.lrr"),
    ("estimator.jsa.bogus=1", "estimator.jsa.bogus"),
    ("nosuch=1", "nosuch"),
    ("generator.lora.rank=4", "generator.lora.rank"),
])
def test_unknown_key_in_override(override, key):
    message = config_error(TINY, [override])
    assert f"'{key}'" in message


def test_override_below_a_plain_value():
    message = config_error(TINY, ["optim.lr_generator.x=1"])
    assert "optim.lr_generator" in message


def test_override_without_equals_sign():
    message = config_error(TINY, ["train.steps"])
    assert "train.steps" in message


def test_wrong_type_in_override():
    message = config_error(TINY, ["train.steps=abc"])
    assert "train.steps" in message and "integer" in message and "abc" in message


@pytest.mark.parametrize("override, key", [
    ("train.steps=1.5", "train.steps"),
    ("optim.lr_generator=fast", "optim.lr_generator"),
    ("train.tensorboard=maybe", "train.tensorboard"),
    ("eval.retrieval_ks=[1,x]", "eval.retrieval_ks[1]"),
    ("eval.retrieval_ks=3", "eval.retrieval_ks"),
    ("optim.betas=[0.9]", "optim.betas"),
    ("data.max_train_examples=many", "data.max_train_examples"),
])
def test_other_wrong_types_in_override(override, key):
    assert key in config_error(TINY, [override])


def test_wrong_type_in_yaml(tmp_path):
    message = config_error(write(tmp_path, "data: {corpus: c.jsonl}\ntrain: {steps: 1.5}\n"))
    assert "train.steps" in message and "integer" in message


@pytest.mark.parametrize("text, key", [
    ("optim: {lr_generator: fast}", "optim.lr_generator"),
    ("train: {tensorboard: 1}", "train.tensorboard"),
    ("optim: {lr_generator: true}", "optim.lr_generator"),
    ("eval: {retrieval_ks: [1, two]}", "eval.retrieval_ks[1]"),
    ("train: {precision: fp64}", "train.precision"),
])
def test_other_wrong_types_in_yaml(tmp_path, text, key):
    assert key in config_error(write(tmp_path, "data: {corpus: c.jsonl}\n" + text + "\n"))


def test_bad_literal_lists_the_allowed_values():
    message = config_error(TINY, ["estimator.name=foo"])
    assert "estimator.name" in message and "'foo'" in message
    for name in ("rag_sequence", "rag_token", "vrag", "jsa"):
        assert name in message


def test_section_set_as_a_value_in_override():
    message = config_error(TINY, ["optim=3"])
    assert "'optim'" in message and "section" in message


def test_section_set_as_a_value_in_yaml(tmp_path):
    message = config_error(write(tmp_path, "data: {corpus: c.jsonl}\noptim: 3\n"))
    assert message.startswith("optim:") and "mapping" in message


def test_override_into_a_section_the_yaml_set_to_a_value(tmp_path):
    # The YAML mistake must still be reported as a ConfigError naming the section, not as a crash
    # inside the override machinery.
    path = write(tmp_path, "data: {corpus: c.jsonl}\noptim: 3\n")
    message = config_error(path, ["optim.lr_generator=1e-4"])
    assert "optim" in message


def test_override_into_an_empty_yaml_section(tmp_path):
    # `optim:` with nothing below it is null to YAML. Either the override fills it in, or the
    # mistake is reported as a ConfigError naming the section; any other exception is a bug.
    path = write(tmp_path, "data: {corpus: c.jsonl}\noptim:\n")
    try:
        cfg = load_config(path, ["optim.lr_generator=1e-4"])
    except ConfigError as err:
        assert "optim" in str(err)
    else:
        assert cfg.optim.lr_generator == pytest.approx(1e-4)


def test_missing_config_file(tmp_path):
    path = tmp_path / "nope.yaml"
    message = config_error(path)
    assert "not found" in message and str(path) in message


def test_invalid_yaml_names_the_file(tmp_path):
    path = write(tmp_path, "data: {corpus: c.jsonl}\noptim: [1, 2\n", name="broken.yaml")
    message = config_error(path)
    assert str(path) in message and "invalid YAML" in message


def test_yaml_top_level_must_be_a_mapping(tmp_path):
    path = write(tmp_path, "- 1\n- 2\n", name="list.yaml")
    message = config_error(path)
    assert str(path) in message and "mapping" in message


def test_empty_yaml_gives_defaults(tmp_path):
    assert load_config(write(tmp_path, "")) == Config()


@pytest.mark.parametrize("override, words", [
    ("estimator.jsa.num_proposals=0", ("estimator.jsa", "num_proposals")),
    ("estimator.vrag.num_samples=0", ("estimator.vrag", "num_samples")),
    ("retriever.temperature=0", ("retriever", "temperature")),
])
def test_option_validation_in_override(override, words):
    message = config_error(TINY, [override])
    for word in words:
        assert word in message


def test_option_validation_in_yaml(tmp_path):
    message = config_error(write(tmp_path, "data: {corpus: c.jsonl}\nestimator: {jsa: {num_proposals: 0}}\n"))
    assert "estimator.jsa" in message and "num_proposals" in message


def test_cross_field_validation_of_vrag():
    message = config_error(TINY, ["estimator.vrag.mode=sampled", "estimator.vrag.num_samples=1"])
    assert "estimator.vrag" in message and "num_samples" in message
    # The same sample count is fine for the exact mode and without the leave-one-out baseline.
    load_config(TINY, ["estimator.vrag.num_samples=1"])
    load_config(TINY, ["estimator.vrag.mode=sampled", "estimator.vrag.num_samples=1",
                       "estimator.vrag.baseline=none"])


def test_missing_corpus_is_reported_when_the_data_is_loaded(tmp_path):
    """A config without data.corpus is valid data (defaults round-trip); using it names the key."""
    from jsarag.data import DataError
    from jsarag.pipeline import load_corpus

    cfg = load_config(write(tmp_path, "data: {train: t.jsonl}\n"))
    with pytest.raises(DataError) as info:
        load_corpus(cfg.data)
    assert "data.corpus" in str(info.value)


# --- round trip -----------------------------------------------------------------------------------


@pytest.mark.parametrize("source, overrides", [
    (TINY, []),
    (QUICKSTART, []),
    (TINY, ["optim.lr_generator=1e-5", "estimator.name=vrag", "estimator.vrag.mode=sampled",
            "data.train=null",
            "generator.lora.enabled=true", "eval.retrieval_ks=[1,3]", "optim.betas=[0.8,0.9]",
            "generator.lora.target_modules=[q_proj,v_proj]", "retriever.posterior_separator= | "]),
    (None, ["data.corpus=corpus.jsonl"]),
])
def test_save_then_load_gives_an_equal_config(tmp_path, source, overrides):
    cfg = load_config(source, overrides)
    path = tmp_path / "run" / "config.yaml"
    path.parent.mkdir()
    save_config(cfg, path)
    again = load_config(path)
    assert again == cfg
    assert isinstance(again.optim.betas, tuple)
    assert type(again.optim.lr_generator) is float
    # Saving the reloaded config writes the same text.
    path2 = tmp_path / "again.yaml"
    save_config(again, path2)
    assert path2.read_text(encoding="utf-8") == path.read_text(encoding="utf-8")


def test_default_config_round_trips(tmp_path):
    # A config that load_config returns must load again after save_config. (Rejecting the defaults
    # up front, because data.corpus is empty, would be consistent too.)
    try:
        cfg = load_config(None)
    except ConfigError as err:
        assert "data.corpus" in str(err)
        return
    path = tmp_path / "config.yaml"
    save_config(cfg, path)
    assert load_config(path) == cfg


def test_saved_config_is_plain_yaml(tmp_path):
    import yaml

    cfg = load_config(TINY, ["optim.betas=[0.8,0.9]"])
    path = tmp_path / "config.yaml"
    save_config(cfg, path)
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert data == to_dict(cfg)
    assert data["optim"]["betas"] == [0.8, 0.9]
    assert set(data) == {f.name for f in dataclasses.fields(Config)}
    assert data["estimator"]["jsa"]["num_proposals"] == 8
    assert isinstance(data["optim"]["lr_generator"], float)


def test_config_pickles_and_copies_by_value():
    """The estimator section's class is built from the registry; a pickle rebuilds it where it is loaded."""
    import copy
    import pickle

    cfg = load_config(TINY, ["estimator.name=vrag", "estimator.vrag.mode=sampled"])
    for again in (pickle.loads(pickle.dumps(cfg)), copy.deepcopy(cfg)):
        assert again == cfg and type(again.estimator) is type(cfg.estimator)
        assert again.estimator.options() == VRAGConfig(mode="sampled")
    assert isinstance(EstimatorConfig(name="vrag"), EstimatorConfig)
    assert EstimatorConfig(name="vrag").vrag == VRAGConfig()


def test_config_objects_compare_by_value():
    assert OptimConfig(lr_generator=1e-5) == OptimConfig(lr_generator=1e-5)
    assert OptimConfig(lr_generator=1e-5) != OptimConfig(lr_generator=2e-5)
