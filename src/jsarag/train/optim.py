"""Parameter groups (one learning rate per component), AdamW, warm-up then decay, gradient norms."""

from __future__ import annotations

import math

import torch

from jsarag.config import OptimConfig
from jsarag.models.rag import COMPONENTS, RAGModel


def component_parameters(model: RAGModel) -> dict[str, list[torch.nn.Parameter]]:
    """Trainable parameters of each component (components with none are left out)."""
    out = {}
    for name in COMPONENTS:
        params = [p for p in model.component(name).parameters() if p.requires_grad]
        if params:
            out[name] = params
    return out


def build_optimizer(model: RAGModel, cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW with a group per component; biases and norm weights (1-d tensors) get no weight decay."""
    lrs = {"prior": cfg.lr_prior, "posterior": cfg.lr_posterior, "passage": cfg.lr_passage,
           "generator": cfg.lr_generator}
    groups = []
    for name, params in component_parameters(model).items():
        decay = [p for p in params if p.ndim >= 2]
        no_decay = [p for p in params if p.ndim < 2]
        for suffix, ps, wd in (("", decay, cfg.weight_decay), ("_no_decay", no_decay, 0.0)):
            if ps:
                groups.append({"params": ps, "lr": lrs[name], "weight_decay": wd, "name": name + suffix})
    if not groups:
        raise ValueError("nothing to train: every component is frozen")
    return torch.optim.AdamW(groups, betas=cfg.betas)


def lr_factor(step: int, total: int, cfg: OptimConfig) -> float:
    """Multiplier of the base learning rate at ``step``: linear warm-up, then cosine / linear / constant
    decay towards ``min_lr_ratio`` at ``total``."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps))
    shape = 0.5 * (1 + math.cos(math.pi * progress)) if cfg.schedule == "cosine" else 1 - progress
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * shape


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, total_steps, cfg))


def grad_norms(params_by_component: dict[str, list[torch.nn.Parameter]]) -> dict[str, float]:
    """L2 norm of each component's gradient (before clipping)."""
    norms = {}
    for name, params in params_by_component.items():
        grads = [p.grad.detach().float().norm() for p in params if p.grad is not None]
        norms[name] = torch.stack(grads).norm().item() if grads else 0.0
    return norms
