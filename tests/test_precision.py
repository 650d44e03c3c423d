"""``train.precision``: what "auto" resolves to on each kind of hardware, autocast, loss scaling, the run header."""

from __future__ import annotations

import pytest
import torch
from helpers import REPO

from jsarag.config import load_config
from jsarag.errors import ConfigError
from jsarag.train import distributed as dist

TINY = REPO / "configs" / "tiny.yaml"
CPU, GPU = torch.device("cpu"), torch.device("cuda", 0)


@pytest.fixture
def cpu(monkeypatch):
    """Sets what the CPU can do: ``cpu(capability, native_bf16)``."""
    def set_cpu(capability: str, native_bf16: bool) -> None:
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
        monkeypatch.setattr(dist, "cpu_has_native_bf16", lambda: native_bf16)
    return set_cpu


def test_auto_is_bf16_only_on_a_cpu_that_computes_it_natively(cpu):
    cpu("AVX512", True)
    assert dist.resolve_precision("auto", CPU) == "bf16"
    cpu("AVX512", False)  # e.g. Skylake / Cascade Lake: AVX512 without BF16
    assert dist.resolve_precision("auto", CPU) == "fp32"


def test_auto_is_fp32_when_torch_kernels_are_held_at_avx2(cpu):
    cpu("AVX2", True)  # ATEN_CPU_CAPABILITY=avx2 on a CPU with AVX512-BF16: how an AVX2-only CPU is emulated
    assert dist.resolve_precision("auto", CPU) == "fp32"
    assert dist.cpu_capability() == "AVX2 kernels, native bf16"


def test_auto_on_a_gpu_follows_its_native_bf16(monkeypatch):
    asked = {}

    def supported(answer):
        def is_bf16_supported(including_emulation=True):
            asked["including_emulation"] = including_emulation
            return answer
        return is_bf16_supported

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", supported(True))
    assert dist.resolve_precision("auto", GPU) == "bf16"
    assert asked["including_emulation"] is False  # emulated bf16 (pre-Ampere GPUs) is slower than fp32
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", supported(False))
    assert dist.resolve_precision("auto", GPU) == "fp32"
    assert dist.resolve_precision("fp16", GPU) == "fp16"


def test_explicit_precisions_are_kept_and_fp16_on_a_cpu_is_refused(cpu):
    cpu("AVX2", False)
    assert [dist.resolve_precision(p, CPU) for p in ("bf16", "fp32")] == ["bf16", "fp32"]
    with pytest.raises(ConfigError, match="train.precision: fp16 needs a CUDA GPU"):
        dist.resolve_precision("fp16", CPU)


def test_autocast_uses_the_resolved_precision(cpu):
    cpu("AVX512", True)
    with dist.autocast(CPU, "fp32"):
        assert not torch.is_autocast_enabled("cpu")
    with dist.autocast(CPU, "auto"):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    cpu("AVX2", True)
    with dist.autocast(CPU, "auto"):
        assert not torch.is_autocast_enabled("cpu")


def test_the_config_accepts_auto_and_fp16_and_rejects_others():
    assert load_config(TINY, ["train.precision=auto"]).train.precision == "auto"
    assert load_config(TINY, ["train.precision=fp16"]).train.precision == "fp16"
    with pytest.raises(ConfigError, match="train.precision"):
        load_config(TINY, ["train.precision=fp64"])


def test_the_grad_scaler_scales_only_fp16_and_an_overflow_skips_the_step():
    assert not dist.grad_scaler("fp32", CPU).is_enabled() and not dist.grad_scaler("bf16", CPU).is_enabled()
    # The loop's protocol with an enabled scaler (on a CPU only to test it): scale, unscale_, then either
    # step or, on an overflow, no step; update in both cases.
    weight = torch.nn.Parameter(torch.ones(2))
    optimizer = torch.optim.SGD([weight], lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=4.0)
    scaler.scale((weight * torch.tensor([1.0, float("inf")])).sum()).backward()
    scaler.unscale_(optimizer)
    assert not torch.isfinite(weight.grad).all()  # the loop skips the step here
    scaler.update()
    assert scaler.get_scale() == 2.0 and torch.equal(weight.detach(), torch.ones(2))
    optimizer.zero_grad()
    scaler.scale(weight.sum()).backward()
    scaler.unscale_(optimizer)
    assert torch.equal(weight.grad, torch.ones(2))  # unscaled before norms and clipping
    scaler.step(optimizer)
    scaler.update()
    assert torch.allclose(weight.detach(), torch.full((2,), 0.9))


def test_the_run_header_records_the_resolved_precision(cpu, tmp_path, capsys):
    from jsarag.provenance import code_header
    from jsarag.train.logger import read_metrics
    from jsarag.train.loop import train

    cpu("AVX2", True)
    quick = ["data.dev=null", "data.max_train_examples=8", "train.precision=auto"]
    train(load_config(TINY, [*quick, "train.steps=1"]), tmp_path / "run")
    assert "note: precision fp32 (train.precision auto; cpu, AVX2 kernels, native bf16)" in capsys.readouterr().err
    train(load_config(TINY, [*quick, "train.steps=2"]), tmp_path / "run", resume=True)
    headers = [r for r in read_metrics(tmp_path / "run") if "run" in r]
    assert [r["step"] for r in headers] == [0, 1]  # one per start; the resumed one at its checkpoint's step
    assert headers[0]["run"] == {"precision": "fp32", "precision_setting": "auto", "device": "cpu",
                                 "cpu": "AVX2 kernels, native bf16", "processes": 1,  # one process: no group
                                 **code_header()}
