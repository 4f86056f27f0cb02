"""The PyTorch side of `jdistill bench train-step`: the same gated transformer LM and KD step in eager PyTorch.

Same math as `jdistill.models.Transformer` (kind "lm", dense MLP, headwise SDPA-output gate) and the `kd` recipe:
RMSNorm (`F.rms_norm`), half-split RoPE, causal `F.scaled_dot_product_attention` times `sigmoid(X W_theta)` per
head (the gate logits come out of the query projection, as in `jdistill.nn.attention`), tanh-GELU MLP, forward
KL at temperature T times T^2 (Hinton et al. 2015), AdamW with decoupled weight decay on matrices only, global
gradient-norm clipping and the same warm-up + cosine learning-rate schedule. Written the way one would write it
by hand: fused AdamW, foreach clipping, `set_to_none` gradients, a no-grad teacher, cached RoPE tables.
`load_jdistill_weights` copies an NNX model's parameters in, so a test can check both compute the same loss.
Imported only when torch is installed (the `bench` extra).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


class GatedAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.heads, self.head_dim = config.num_heads, config.resolved_head_dim
        width = self.heads * self.head_dim
        self.query_and_gate = nn.Linear(config.d_model, width + self.heads, bias=False)
        self.key_value = nn.Linear(config.d_model, 2 * width, bias=False)
        self.output = nn.Linear(width, config.d_model, bias=False)

    def forward(self, x, cos, sin):
        batch, seq, _ = x.shape
        fused = self.query_and_gate(x)
        width = self.heads * self.head_dim
        q = fused[..., :width].view(batch, seq, self.heads, self.head_dim)
        gate = torch.sigmoid(fused[..., width:])  # [batch, seq, heads]
        k, v = self.key_value(x).view(batch, seq, 2 * self.heads, self.head_dim).split(self.heads, dim=2)
        q, k = rope(q, cos, sin), rope(k, cos, sin)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
        out = out.transpose(1, 2) * gate.unsqueeze(-1)
        return self.output(out.reshape(batch, seq, width))


def rope(x, cos, sin):
    """Half-split rotary embedding of `x [batch, seq, heads, head_dim]` with tables `[seq, 1, head_dim // 2]`."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


class Block(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.attention_norm = RMSNorm(config.d_model, config.norm_eps)
        self.attention = GatedAttention(config)
        self.mlp_norm = RMSNorm(config.d_model, config.norm_eps)
        self.up = nn.Linear(config.d_model, config.mlp_dim)
        self.down = nn.Linear(config.mlp_dim, config.d_model)

    def forward(self, h, cos, sin):
        h = h + self.attention(self.attention_norm(h), cos, sin)
        return h + self.down(F.gelu(self.up(self.mlp_norm(h)), approximate="tanh"))


class TorchLM(nn.Module):
    """The decoder LM of a `ModelConfig` (kind "lm", dense MLP with biases, headwise gate, untied head)."""

    def __init__(self, config):
        super().__init__()
        if (
            config.kind != "lm"
            or config.gate != "headwise"
            or config.mlp != "dense"
            or config.tie_embeddings
            or config.activation != "gelu"
            or config.resolved_kv_heads != config.num_heads
        ):
            raise ValueError(
                "the PyTorch reference covers LMs with a headwise gate, a dense tanh-GELU MLP, no GQA "
                "and an untied head"
            )
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.blocks = nn.ModuleList([Block(config) for _ in range(config.num_layers)])
        self.final_norm = RMSNorm(config.d_model, config.norm_eps)
        self.head = nn.Linear(config.d_model, config.vocab_size)
        head_dim = config.resolved_head_dim
        inv_freq = 1.0 / config.rope_theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        angles = torch.arange(config.max_seq_len, dtype=torch.float32)[:, None] * inv_freq
        self.register_buffer("cos", angles.cos()[:, None, :], persistent=False)
        self.register_buffer("sin", angles.sin()[:, None, :], persistent=False)

    def forward(self, tokens):
        seq = tokens.shape[1]
        cos, sin = self.get_buffer("cos")[:seq], self.get_buffer("sin")[:seq]
        h = self.embed(tokens)
        for block in self.blocks:
            h = block(h, cos, sin)
        return self.head(self.final_norm(h))


def kd_loss(student_logits, teacher_logits, temperature: float):
    """T^2 * KL(softmax(t / T) || softmax(s / T)), mean over tokens (the `kd` recipe with label_weight 0)."""
    vocab = student_logits.shape[-1]
    log_ps = F.log_softmax(student_logits.reshape(-1, vocab) / temperature, dim=-1)
    log_pt = F.log_softmax(teacher_logits.reshape(-1, vocab) / temperature, dim=-1)
    return F.kl_div(log_ps, log_pt, reduction="batchmean", log_target=True) * temperature**2


def warmup_cosine(step: int, train_config) -> float:
    """`optax.warmup_cosine_decay_schedule` as `jdistill.train.optim` configures it, at `step`."""
    peak, warmup = train_config.learning_rate, train_config.warmup_steps
    decay_steps = max(train_config.steps, warmup + 1)
    end = peak * train_config.final_lr_fraction
    if step < warmup:
        return peak * step / warmup
    progress = min(step - warmup, decay_steps - warmup) / (decay_steps - warmup)
    return end + (peak - end) * 0.5 * (1 + math.cos(math.pi * progress))


class TorchTrainer:
    """One KD (or, without a teacher, cross-entropy) training step per call, in eager PyTorch."""

    def __init__(self, student: TorchLM, train_config, teacher: TorchLM | None = None, temperature: float = 2.0):
        self.student, self.teacher, self.temperature, self.train_config = student, teacher, temperature, train_config
        if teacher is not None:
            teacher.eval().requires_grad_(False)
        decay = [p for p in student.parameters() if p.ndim >= 2]
        no_decay = [p for p in student.parameters() if p.ndim < 2]
        groups = [
            {"params": decay, "weight_decay": train_config.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        self.optimizer = torch.optim.AdamW(
            groups, lr=warmup_cosine(0, train_config), betas=(train_config.b1, train_config.b2), eps=1e-8, fused=True
        )
        self.step_count = 0

    def loss(self, inputs, targets):
        logits = self.student(inputs)
        if self.teacher is None:
            return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        with torch.no_grad():
            teacher_logits = self.teacher(inputs)
        return kd_loss(logits, teacher_logits, self.temperature)

    def __call__(self, inputs, targets) -> float:
        for group in self.optimizer.param_groups:
            group["lr"] = warmup_cosine(self.step_count, self.train_config)
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss(inputs, targets)
        loss.backward()
        if self.train_config.grad_clip_norm is not None:
            nn.utils.clip_grad_norm_(self.student.parameters(), self.train_config.grad_clip_norm, foreach=True)
        self.optimizer.step()
        self.step_count += 1
        return loss.detach()


def teacher_forward(teacher: TorchLM, inputs):
    with torch.no_grad():
        return teacher(inputs)


def load_jdistill_weights(torch_model: TorchLM, nnx_params) -> None:
    """Copy the parameters of a jdistill `Transformer` (its `nnx.state`) into `torch_model` (in place)."""

    def array(x):
        return torch.from_numpy(
            np.array(x[...] if hasattr(x, "get_value") or hasattr(x, "value") else x, dtype=np.float32)
        )

    p = nnx_params
    with torch.no_grad():
        torch_model.embed.weight.copy_(array(p["embed"]["embedding"]))
        for i, block in enumerate(torch_model.blocks):
            src = p["blocks"][i]
            block.get_parameter("attention_norm.weight").copy_(array(src["attention_norm"]["scale"]))
            block.get_parameter("mlp_norm.weight").copy_(array(src["mlp_norm"]["scale"]))
            for name in ("query_and_gate", "key_value", "output"):
                getattr(block.attention, name).weight.copy_(array(src["attention"][name]["kernel"]).T)
            for name in ("up", "down"):
                getattr(block, name).weight.copy_(array(src["mlp"][name]["kernel"]).T)
                getattr(block, name).bias.copy_(array(src["mlp"][name]["bias"]))
        torch_model.final_norm.weight.copy_(array(p["final_norm"]["scale"]))
        torch_model.head.weight.copy_(array(p["head"]["kernel"]).T)
        torch_model.head.bias.copy_(array(p["head"]["bias"]))
