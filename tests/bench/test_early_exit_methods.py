"""`jdistill bench early-exit --methods`: the operating point within the quality budget, the FLOP share that turns
ACM learners and ablated neurons into block-equivalents, bad `--parts` / `--methods` as one-line errors."""

import pytest

from jdistill.bench.early_exit import check_parts
from jdistill.bench.early_exit_methods import attention_share, cheapest_within
from jdistill.errors import UserError
from jdistill.models import ModelConfig


def test_the_operating_point_is_the_cheapest_within_the_budget():
    curve = [
        {"accuracy": 0.200, "mean_blocks": 8.0},
        {"accuracy": 0.199, "mean_blocks": 6.0},
        {"accuracy": 0.197, "mean_blocks": 5.0},  # 1.5 % below: outside a 1 % budget
        {"accuracy": 0.1985, "mean_blocks": 7.0},
    ]
    assert cheapest_within(curve, 0.2, 0.01)["mean_blocks"] == 6.0
    assert cheapest_within(curve, 0.2, 0.02)["mean_blocks"] == 5.0
    assert cheapest_within(curve, 0.3, 0.01) is None


def test_attention_share_counts_the_projections_against_the_mlp():
    config = ModelConfig(kind="lm", num_layers=8, d_model=128, num_heads=4, num_kv_heads=2, head_dim=32, mlp_dim=384,
                         mlp="glu", vocab_size=2048)  # fmt: skip
    # q 128x128, k and v 128x64 each, output 128x128 = 49152 against the GLU's 3 x 128 x 384 = 147456.
    assert attention_share(config) == pytest.approx(49152 / (49152 + 147456))


def test_unknown_parts_and_methods_are_one_line_errors():
    with pytest.raises(UserError, match="--methods: unknown entry 'calm'"):
        check_parts(["methods"], ["jei", "calm"])
    with pytest.raises(UserError, match="--parts: unknown entry 'draft'"):
        check_parts(["draft"], [])
