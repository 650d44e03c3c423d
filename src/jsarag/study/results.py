"""A comparison's results, kept as small JSON files so that its report never needs the run folders again.

    REPORT_DIR/NAME/runs/untrained.json          the models as loaded
    REPORT_DIR/NAME/runs/seed<S>/<method>.json   one training run
    REPORT_DIR/NAME/variance.json                the gradient-variance table's numbers

A run's file is its ``RunResult`` (``to_json`` / ``from_json``): the evaluation summary, the per-question
scores that the paired bootstrap resamples, step-time statistics, peak memory, the log headers (precision,
hardware and code of each start), the learning signal, the metrics curve restricted to the keys the report reads,
and ``settings``: the resolved config the run trained with (``settings_of``). Measured values are kept to 6
significant digits; a value that was not measured or is not finite is null (strict JSON has neither NaN nor
infinities). A file takes about 2.5 KB of settings, 120 bytes per evaluation question (three scores under a
24-character id) and 27 bytes per training step and curve key (11 keys for JSA): with 150 questions, 24 JSA steps
make 28 KB, 1,000 steps 320 KB.

Each machine that runs some of a comparison's seeds commits its files; the report is rebuilt from all of
them. A file from other settings is refused (``check``) with a line that names it and what differs, except for
settings that change how a run computes but not what (``HOW_NOT_WHAT``: batch sizes of scoring and encoding, the
shared prompt head, activation checkpointing). Those are recorded too, so that a file written before such an option
existed, or on a machine that needed a smaller batch, still joins the report, and the report says where its runs
differ (``how_settings_differ``).
"""

from __future__ import annotations

import json
import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from jsarag.configtools import flatten, to_dict
from jsarag.errors import UserError
from jsarag.fileio import write_text_atomic
from jsarag.study.methods import UNTRAINED

# Config keys that may differ between the runs of one report: the seed by design, the others say where files go
# and how a run is watched, not what it learns.
NOT_COMPARED = ("train.seed", "index.path", "train.progress", "train.tensorboard", "train.save_every",
                "train.keep_checkpoints")
# Config keys that change how a run computes, not what: the same arithmetic up to floating-point rounding (which
# can still move a sampler's path, as any change of rounding does). Each result records them; results that differ
# in them are compared all the same, and the report names the differences (``how_settings_differ``).
HOW_NOT_WHAT = ("generator.share_prefix", "generator.score_batch_size", "generator.gradient_checkpointing",
                "index.batch_size", "eval.batch_size")
# What a run did about a key of HOW_NOT_WHAT that its result does not record, having run before the key existed.
BEFORE_RECORDED = {"generator.share_prefix": False}
SIGNIFICANT_DIGITS = 6


@dataclass
class RunResult:
    method: str
    seed: int  # -1 for the untrained models
    summary: dict[str, float]
    per_question: dict[str, dict[str, float]]  # metric -> {question id -> value}
    seconds_per_100_steps: float = math.nan  # mean step time x 100
    median_seconds_per_100_steps: float = math.nan
    step_spread: float = math.nan  # see compare.step_spread()
    peak_memory_mib: float = math.nan
    curves: list[dict] = field(default_factory=list)  # the logged steps, with the keys the report reads
    headers: list[dict] = field(default_factory=list)  # the run's log headers: precision and hardware, per start
    signal: dict[str, float] = field(default_factory=dict)  # learning_signal() of its weights, {} if not computed
    settings: dict[str, Any] = field(default_factory=dict)  # settings_of() the config it ran with

    def to_json(self) -> str:
        """Strict JSON (readable by any JSON parser, jq or a browser): a value that was not measured (NaN) or not
        finite is written as null."""
        data = asdict(self)
        for name in MEASURED:
            data[name] = finite_or_null(data[name], digits=SIGNIFICANT_DIGITS)
        return json.dumps(data, indent=1, allow_nan=False) + "\n"

    @classmethod
    def from_json(cls, text: str) -> RunResult:
        data = json.loads(text)
        if isinstance(data, dict):  # null back to NaN where the fields hold numbers (the curves keep None)
            for name in NOT_MEASURED_IS_NAN:
                if name in data:
                    data[name] = _nan_for_null(data[name])
        return cls(**data)


MEASURED = tuple(f.name for f in fields(RunResult) if f.name not in ("method", "seed", "headers", "settings"))
# The measured fields whose values are numbers (or dicts of them): a null read from a file is NaN again.
NOT_MEASURED_IS_NAN = tuple(name for name in MEASURED if name != "curves")


def _nan_for_null(value: Any) -> Any:
    if value is None:
        return math.nan
    if isinstance(value, dict):
        return {k: _nan_for_null(v) for k, v in value.items()}
    return value


def settings_of(cfg) -> dict[str, Any]:
    """What a run trains (or is evaluated) with: its resolved config as dotted keys, less ``NOT_COMPARED`` and the
    options of the estimators it does not use (so that registering another estimator changes nothing)."""
    used = f"estimator.{cfg.estimator.name}."
    return {key: _json_safe(value) for key, value in flatten(to_dict(cfg)).items() if key not in NOT_COMPARED
            and (not key.startswith("estimator.") or key.count(".") == 1 or key.startswith(used))}


def run_settings(cfg, saved_config: Path) -> dict[str, Any]:
    """``settings_of(cfg)`` for a run folder whose config.yaml (``saved_config``) ``cfg`` was loaded from, less the
    keys of ``HOW_NOT_WHAT`` that the file lacks: a run from before such an option existed did not run with today's
    default (``BEFORE_RECORDED`` says what it did)."""
    saved = flatten(yaml.safe_load(saved_config.read_text()) or {})
    return {key: value for key, value in settings_of(cfg).items() if key in saved or key not in HOW_NOT_WHAT}


def _json_safe(value: Any) -> Any:
    """A setting as strict JSON holds it and reads it back equal: a float that is not finite (e.g.
    ``optim.max_grad_norm: inf``, no clipping) as its name, 'inf'."""
    return repr(value) if isinstance(value, float) and not math.isfinite(value) else value


def _run_name(method: str, seed: int) -> str:
    return method if method == UNTRAINED else f"{method} at seed {seed}"


def _shown(settings: dict[str, Any], key: str) -> str:
    return repr(settings[key]) if key in settings else "unset"


def check(result: RunResult, *, method: str, seed: int, settings: dict[str, Any], source: Path) -> RunResult:
    """``result`` if it is ``method``'s at ``seed`` and ran with ``settings``; else a UserError naming ``source``
    and the first keys that differ."""
    if (result.method, result.seed) != (method, seed):
        raise UserError(f"{source} holds the result of {_run_name(result.method, result.seed)}, "
                        f"not of {_run_name(method, seed)}")
    changed = settings_changed(result.settings, settings)
    if changed:
        shown = "; ".join(f"{key}={_shown(result.settings, key)} (here {_shown(settings, key)})"
                          for key in changed[:3])
        more = f" and {len(changed) - 3} more" if len(changed) > 3 else ""
        raise UserError(f"{source} ran with other settings than this comparison: {shown}{more}")
    return result


def settings_changed(saved: dict[str, Any], here: dict[str, Any]) -> list[str]:
    """The keys whose values differ between two runs' settings, less ``HOW_NOT_WHAT``; a key one of them lacks
    differs."""
    unset = object()
    return [key for key in dict.fromkeys([*here, *saved])
            if key not in HOW_NOT_WHAT and saved.get(key, unset) != here.get(key, unset)]


def how_settings_differ(results: Sequence[RunResult]) -> list[str]:
    """For each key of ``HOW_NOT_WHAT`` whose value is not the same in every result, one phrase: each value and the
    runs that had it (``BEFORE_RECORDED`` stands in for a key a result lacks)."""
    phrases = []
    for key in HOW_NOT_WHAT:
        groups = runs_by_value(results, lambda r: _recorded_value(r.settings, key))
        if len(groups) > 1:
            phrases.append(f"`{key}` {groups_text(groups, results)}")
    return phrases


def _recorded_value(settings: dict[str, Any], key: str) -> str:
    if key in settings:
        return repr(settings[key])
    if key in BEFORE_RECORDED:
        return f"{BEFORE_RECORDED[key]!r} (not recorded: run before the option existed)"
    return "not recorded"


def runs_by_value(results: Sequence[RunResult], value_of: Callable[[RunResult], str]) -> dict[str, list[RunResult]]:
    """``results`` grouped by ``value_of``, values in first-seen order."""
    groups: dict[str, list[RunResult]] = {}
    for r in results:
        groups.setdefault(value_of(r), []).append(r)
    return groups


def groups_text(groups: dict[str, list[RunResult]], results: Sequence[RunResult]) -> str:
    """"VALUE in RUNS; VALUE in RUNS" for ``runs_by_value``'s groups of ``results``."""
    return "; ".join(f"{value} in {_runs_text(group, results)}" for value, group in groups.items())


def _runs_text(group: list[RunResult], results: Sequence[RunResult]) -> str:
    """``group``, a part of ``results``, named by whole seeds where it holds every run of a seed."""
    untrained, whole, partial = [], [], []
    for seed in dict.fromkeys(sorted(r.seed for r in group)):
        mine = [r.method for r in group if r.seed == seed]
        if seed == -1:
            untrained.append("the untrained models")
        elif len(mine) == sum(r.seed == seed for r in results):
            whole.append(seed)
        else:
            partial.append(f"seed {seed} ({', '.join(mine)})")
    seeds = [f"seed{'s' * (len(whole) > 1)} {', '.join(map(str, whole))}"] if whole else []
    return ", ".join([*untrained, *seeds, *partial])


def result_path(runs_dir: Path, method: str, seed: int) -> Path:
    return runs_dir / f"{UNTRAINED}.json" if method == UNTRAINED else runs_dir / f"seed{seed}" / f"{method}.json"


def save_result(path: Path, result: RunResult) -> None:
    write_text_atomic(path, result.to_json())


def load_result(path: Path) -> RunResult:
    try:
        return RunResult.from_json(path.read_text())
    except (ValueError, TypeError) as err:  # not JSON, or not a RunResult's fields
        raise UserError(f"{path} is not a comparison's result file ({err})") from None


def read_cached(path: Path, key: object = None, same: Callable[[Any, Any], bool] = operator.eq):
    """The value ``cached_json`` saved in ``path`` for ``key`` (or for a key ``same`` as it), or None."""
    if path.is_file():
        saved = json.loads(path.read_text())
        if same(saved.get("key"), key):
            return saved["value"]
    return None


def finite_or_null(value: Any, digits: int | None = None) -> Any:
    """``value`` with every float that is not finite (NaN: not measured; an infinity, e.g. the gradient norm of a
    step skipped for overflowing) as None, as strict JSON needs; with ``digits``, the others kept to that many
    significant digits."""
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        return value if digits is None else float(f"{value:.{digits}g}")
    if isinstance(value, dict):
        return {k: finite_or_null(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_null(v, digits) for v in value]
    return value


def cached_json(path: Path, compute, key: object = None, same: Callable[[Any, Any], bool] = operator.eq):
    """``compute()``, saved as strict JSON in ``path`` and read back on later calls with the same ``key``
    (diagnostics of finished runs do not change; a study's report can be re-rendered in seconds). A value that is
    not finite is saved as null, and the first call returns what later ones read: the saved value."""
    value = read_cached(path, key, same)
    if value is None:
        text = json.dumps(finite_or_null({"key": key, "value": compute()}), indent=2, allow_nan=False)
        write_text_atomic(path, text)
        value = json.loads(text)["value"]
    return value
