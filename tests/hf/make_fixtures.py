"""Generate the Hugging Face parity fixtures in tests/hf/fixtures/ (needs torch and transformers).

    python -m venv /tmp/hf && /tmp/hf/bin/pip install torch transformers safetensors numpy
    /tmp/hf/bin/python tests/hf/make_fixtures.py

For each architecture: a small random-weight model with grouped-query attention, saved with
`save_pretrained` (config.json + model.safetensors; MoE experts in the released per-expert layout, except the
fixtures in PACKED, saved in transformers 5's packed layout), and `expected.safetensors` holding the prompt ids, the
float32 logits transformers computes for them, and transformers' greedy continuations of the prompts and of
the second prompt cut to 7 tokens (for batches with per-row lengths). The tests read these
files only, so they need neither PyTorch nor transformers.
"""

from pathlib import Path

import numpy as np
import torch
import transformers
from safetensors.numpy import save_file

FIXTURES = Path(__file__).parent / "fixtures"
COMMON = dict(
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=96,
    vocab_size=128,
    max_position_embeddings=64,
    hidden_act="silu",
)
ARCHITECTURES = {
    "llama": (
        transformers.LlamaConfig,
        transformers.LlamaForCausalLM,
        dict(head_dim=16, rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False),
    ),
    "qwen3": (
        transformers.Qwen3Config,
        transformers.Qwen3ForCausalLM,
        dict(head_dim=32, rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=True),
    ),
    # 3 Gated DeltaNet : 1 gated attention, dense MLPs (mlp_only_layers), more value than key heads.
    "qwen3_next": (
        transformers.Qwen3NextConfig,
        transformers.Qwen3NextForCausalLM,
        dict(
            num_hidden_layers=4,
            head_dim=16,
            partial_rotary_factor=0.25,
            rms_norm_eps=1e-6,
            rope_theta=10000.0,
            tie_word_embeddings=False,
            layer_types=["linear_attention"] * 3 + ["full_attention"],
            linear_num_key_heads=2,
            linear_num_value_heads=4,
            linear_key_head_dim=16,
            linear_value_head_dim=8,
            linear_conv_kernel_dim=4,
            mlp_only_layers=[0, 1, 2, 3],
            num_experts=4,
            num_experts_per_tok=2,
            moe_intermediate_size=32,
            shared_expert_intermediate_size=32,
        ),
    ),
}
# Mixture-of-experts fixtures (smaller width: the experts dominate the size).
MOE_COMMON = dict(hidden_size=32, intermediate_size=48, num_experts=8, num_experts_per_tok=2, moe_intermediate_size=16)
ARCHITECTURES.update(
    {
        # Qwen3-MoE as released (norm_topk_prob true), with a dense first layer (mlp_only_layers).
        "qwen3_moe": (
            transformers.Qwen3MoeConfig,
            transformers.Qwen3MoeForCausalLM,
            dict(
                MOE_COMMON,
                num_hidden_layers=3,
                head_dim=16,
                rms_norm_eps=1e-6,
                rope_theta=1000000.0,
                tie_word_embeddings=False,
                norm_topk_prob=True,
                decoder_sparse_step=1,
                mlp_only_layers=[0],
            ),
        ),
        # Qwen3-Next with MoE blocks on every second layer (decoder_sparse_step 2), the gated shared expert, raw
        # top-k probabilities (norm_topk_prob false); saved in transformers' packed expert layout.
        "qwen3_next_moe": (
            transformers.Qwen3NextConfig,
            transformers.Qwen3NextForCausalLM,
            dict(
                MOE_COMMON,
                num_hidden_layers=4,
                head_dim=16,
                partial_rotary_factor=0.25,
                rms_norm_eps=1e-6,
                rope_theta=10000.0,
                tie_word_embeddings=True,
                layer_types=["linear_attention", "full_attention"] * 2,
                linear_num_key_heads=2,
                linear_num_value_heads=4,
                linear_key_head_dim=8,
                linear_value_head_dim=8,
                linear_conv_kernel_dim=4,
                mlp_only_layers=[],
                decoder_sparse_step=2,
                norm_topk_prob=False,
                shared_expert_intermediate_size=24,
            ),
        ),
    }
)
PACKED = {"qwen3_next_moe"}  # written with save_original_format=False: mlp.experts.gate_up_proj / down_proj
PROMPT_LENGTH, NEW_TOKENS, BATCH, SHORT_LENGTH = 11, 8, 2, 7


def perturb(model: torch.nn.Module, generator: torch.Generator) -> None:
    """Random weights large enough that the logits are far from uniform (init std 0.02 would hide errors)."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):  # Qwen3-Next's zero-centred norms store w - 1
                centre = (
                    0.0 if isinstance(model, transformers.Qwen3NextForCausalLM) and "linear_attn" not in name else 1.0
                )
                param.copy_(centre + 0.2 * torch.randn(param.shape, generator=generator))
            elif name.endswith("A_log"):
                param.copy_(torch.log(torch.empty(param.shape).uniform_(0.5, 4.0, generator=generator)))
            else:
                param.copy_(0.15 * torch.randn(param.shape, generator=generator))


def make(name: str, seed: int) -> None:
    config_class, model_class, extra = ARCHITECTURES[name]
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    config = config_class(**{**COMMON, **extra}, attn_implementation="eager")
    model = model_class(config).eval().to(torch.float32)
    perturb(model, generator)
    directory = FIXTURES / name
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory, safe_serialization=True, save_original_format=name not in PACKED)
    ids = torch.randint(0, config.vocab_size, (BATCH, PROMPT_LENGTH), generator=generator)
    short = ids[1:, :SHORT_LENGTH]
    with torch.no_grad():
        logits = model(ids).logits.float()
        # An explicit all-ones attention mask: no prompt token is mistaken for padding.
        greedy = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=NEW_TOKENS,
            do_sample=False,
            pad_token_id=config.vocab_size - 1,
        )
        greedy_short = model.generate(
            short,
            attention_mask=torch.ones_like(short),
            max_new_tokens=NEW_TOKENS,
            do_sample=False,
            pad_token_id=config.vocab_size - 1,
        )
    save_file(
        {
            "input_ids": ids.numpy().astype(np.int32),
            "logits": logits.numpy(),
            "greedy": greedy.numpy().astype(np.int32),
            "greedy_short": greedy_short.numpy().astype(np.int32),
        },
        str(directory / "expected.safetensors"),
        metadata={"transformers": transformers.__version__, "torch": torch.__version__},
    )
    print(name, {p.name: p.stat().st_size for p in directory.iterdir()})


if __name__ == "__main__":
    import sys

    chosen = sys.argv[1:] or list(ARCHITECTURES)  # e.g. `make_fixtures.py qwen3_moe` rewrites that one only
    for index, architecture in enumerate(ARCHITECTURES):
        if architecture in chosen:
            make(architecture, seed=index)
