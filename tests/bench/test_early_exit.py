"""`jdistill bench early-exit` on a tiny `llm_layerskip` run: every contender's tokens equal plain greedy decoding's,
the JSON has the documented keys, and the exit-quality curve covers both stages."""

import json

import pytest

from jdistill.cli import main
from jdistill.configs import load_config
from jdistill.train import job
from tests.train.llm_tiny import TINY_LLM

TINY_MODEL = [
    f"{side}.model.{key}={value}"
    for side in ("teacher", "student")
    for key, value in (
        ("num_layers", 3),
        ("d_model", 16),
        ("num_heads", 2),
        ("num_kv_heads", 1),
        ("head_dim", 8),
        ("mlp_dim", 32),
        ("vocab_size", 320),
    )
]
TINY = [o for o in TINY_LLM if not o.startswith(("teacher.", "student.prune"))] + TINY_MODEL


@pytest.mark.slow  # a job, 5 compiled decoders and 4 fitted methods: ~90 s on a quiet 2-core machine
def test_bench_early_exit_on_a_layerskip_run(tmp_path, data_dir, capsys):
    run_dir = tmp_path / "run"
    summary = job.run_job(load_config("llm_layerskip", TINY), run_dir)
    assert {"student_scratch", "student_layerskip"} <= set(summary)
    out = tmp_path / "bench.json"
    args = ["bench", "early-exit", "--checkpoint", str(run_dir / "student_layerskip"), "--exits", "1,2"]
    args += ["--draft-lens", "2", "--prompts", "2", "--prompt-len", "8", "--new-tokens", "6", "--repeats", "1"]
    args += ["--method-steps", "2", "--draft-loops", "scan,unrolled", "--parts", "speculative,cap,confidence,methods"]
    args += ["--cap-widths", "32"]
    assert main([*args, "--json", str(out)]) == 0
    figures = json.loads(out.read_text())
    assert set(figures["contenders"]) == {
        f"exit{e}_d2_{c}_{loop}" for e in (1, 2) for c in ("fixed", "thompson") for loop in ("scan", "unrolled")
    }
    assert figures["contenders"]["exit1_d2_fixed_unrolled"]["draft_loop"] == "unrolled"
    for row in figures["contenders"].values():
        assert row["exact_match"] == 1.0  # greedy self-speculative decoding changes nothing but the speed
        assert 1.0 <= row["tokens_per_round"] <= 3.0 and row["speedup"] > 0
    assert figures["speedup"] == figures["contenders"][figures["best"]]["speedup"]
    for exit_layer in (1, 2):  # every draft accepted: the blocks above the exit are the identity
        cap = figures["all_accepted"][f"exit{exit_layer}"]["contenders"]
        assert set(cap) == {f"exit{exit_layer}_d2_fixed_{loop}" for loop in ("scan", "unrolled")}
        assert all(row["acceptance_rate"] == 1.0 and row["exact_match"] == 1.0 for row in cap.values())
    by_width = figures["all_accepted_by_width"]["32"]  # the same ceiling on a wider random copy
    assert by_width["params"] > 0 and set(by_width) == {"params", "exit1", "exit2"}
    assert all(
        r["acceptance_rate"] == 1.0 and r["exact_match"] == 1.0 for r in by_width["exit2"]["contenders"].values()
    )
    curves = figures["exit_perplexity"]
    assert set(curves) == {"student_layerskip", "student_scratch"} and all(len(c) == 3 for c in curves.values())
    exits = figures["confidence_exits"]  # default exits L/4, L/2, 3L/4 of 3 blocks
    assert exits["exit_layers"] == [1, 2] and 1.0 <= exits["decode_mean_blocks"] <= 3.0
    assert exits["heldout_accuracy"] >= 0.99 * exits["heldout_accuracy_full"] - 1e-12
    methods = figures["methods"]  # every learned method fitted, with a curve and (within budget) a speed-up
    assert set(methods) >= {"jei", "middle_skip", "acm", "self_ablation", "heldout_accuracy_full"}
    for name in ("jei", "middle_skip", "acm", "self_ablation"):
        assert all(0.0 <= p["mean_blocks"] <= 3.0 + 1e-9 for p in methods[name]["curve"])
        assert methods[name]["chosen"] is None or methods[name]["speedup"] > 0
    assert out.with_suffix(".png").read_bytes().startswith(b"\x89PNG")
    assert "plain greedy" in capsys.readouterr().out


def test_unknown_draft_loop_is_a_one_line_error():
    from jdistill.bench.early_exit import check_parts
    from jdistill.errors import ConfigError

    with pytest.raises(ConfigError, match="--draft-loops: unknown entry 'unroll'"):
        check_parts(["speculative"], [], ("scan", "unroll"))


def test_widened_keeps_the_architecture_and_scales_heads_and_mlp():
    from jdistill.bench.early_exit_width import parameter_count, widened
    from jdistill.models import Transformer
    from jdistill.models.config import ModelConfig

    base = ModelConfig(kind="lm", num_layers=2, d_model=16, num_heads=2, num_kv_heads=1, head_dim=8, mlp_dim=48)
    wide = widened(base, 64)
    assert (wide.d_model, wide.num_heads, wide.num_kv_heads, wide.head_dim, wide.mlp_dim) == (64, 8, 4, 8, 192)
    assert (wide.num_layers, wide.kind, wide.vocab_size) == (base.num_layers, base.kind, base.vocab_size)
    from flax import nnx

    small, big = (parameter_count(Transformer(c, rngs=nnx.Rngs(0))) for c in (base, wide))
    assert big > 4 * small


@pytest.mark.parametrize("width", [0, 12, 24])  # not whole heads / not whole key-value groups (2 heads per group)
def test_a_width_without_whole_heads_is_a_one_line_error(width):
    from jdistill.bench.early_exit_width import widened
    from jdistill.errors import ConfigError
    from jdistill.models.config import ModelConfig

    base = ModelConfig(kind="lm", num_layers=2, d_model=16, num_heads=2, num_kv_heads=1, head_dim=8, mlp_dim=48)
    with pytest.raises(ConfigError, match=f"--cap-widths: {width} is not a positive multiple of 16"):
        widened(base, width)
