"""Every parameter of every model kind declares its logical axes where it is made, and every name has a rule.

A parameter created without an annotation (a new layer, a renamed attribute built with a bare `nnx.Param` /
`nnx.Linear`) fails here instead of being replicated silently; a swapped pair of axes fails the pinned layout of
the reference LM and classifier. The shardings that follow from the names are tested in
tests/train/test_state_shardings.py.
"""

from __future__ import annotations

import dataclasses

import jax
import pytest
from flax import nnx

from jdistill.models import ModelConfig, Transformer
from jdistill.nn import HeadGates
from jdistill.partitioning import DEFAULT_RULES, logical_axes
from jdistill.recipes.registry import recipe_classes

LM = ModelConfig(
    kind="lm",
    num_layers=3,
    d_model=16,
    num_heads=2,
    mlp_dim=32,
    vocab_size=32,
    max_seq_len=16,
    layer_pattern="ADR",
    linear_key_heads=1,
    linear_value_heads=2,
    linear_key_head_dim=8,
    linear_value_head_dim=8,
)
CLASSIFIER = ModelConfig(
    kind="classifier", num_layers=1, d_model=16, num_heads=2, mlp_dim=32, image_size=4, patch_size=2
)

# Every architectural switch of ModelConfig that adds, removes or reshapes parameters.
MODEL_KINDS = {
    "classifier_patches": CLASSIFIER,
    "classifier_tokens": dataclasses.replace(CLASSIFIER, classifier_input="tokens", vocab_size=32, max_seq_len=8),
    "lm_hybrid_attention_deltanet_regla": LM,
    "lm_tied_embeddings": dataclasses.replace(LM, layer_pattern="A", tie_embeddings=True),
    "gate_none": dataclasses.replace(CLASSIFIER, gate="none"),
    "gate_headwise_value": dataclasses.replace(LM, layer_pattern="A", gate="headwise", gate_position="value"),
    "gate_elementwise_gqa_qk_norm": dataclasses.replace(
        LM, layer_pattern="A", gate="elementwise", num_kv_heads=1, qk_norm=True, norm_zero_centered=True
    ),
    "glu_order1_no_bias": dataclasses.replace(LM, mlp="glu", glu_order=1, mlp_bias=False),
    "swiglu_expanded_activation": dataclasses.replace(LM, mlp="glu", activation="xsilu"),
    "dense_expanded_activation": dataclasses.replace(CLASSIFIER, activation="xgelu"),
    "gateskip_exits": dataclasses.replace(LM, residual_gates=True, exit_layers=(1, 3)),
    "classifier_exits": dataclasses.replace(CLASSIFIER, num_layers=2, exit_layers=(1, 2), residual_gates=True),
    "moe_shared_expert_dense_layer": dataclasses.replace(
        LM, mlp="glu", activation="silu", mlp_bias=False, num_experts=4, shared_expert_dim=8, dense_layers=(1,)
    ),
}

# Options that make a recipe's wrapper add parameters of its own (feature_kd projects only across widths).
WRAPPER_OPTIONS = {"feature_kd": {"teacher_width": 24}}


def _variables(module):
    """(path string, Variable) for every Variable of a module, whatever its type."""
    state = nnx.state(module)
    leaves = jax.tree_util.tree_leaves_with_path(state, is_leaf=lambda x: isinstance(x, nnx.Variable))
    return [(jax.tree_util.keystr(path), leaf) for path, leaf in leaves]


def _abstract(build):
    """The module `build()` makes, with shapes and metadata only (nothing is initialised)."""
    return nnx.eval_shape(build)


def _modules():
    """(name, module) for every model kind, every recipe wrapper around both model kinds, and head gates."""
    modules = [
        (name, _abstract(lambda config=config: Transformer(config, rngs=nnx.Rngs(0))))
        for name, config in MODEL_KINDS.items()
    ]
    for name, cls in recipe_classes().items():
        if name in TEACHER_RUN_RECIPES:
            continue
        factory = cls(**WRAPPER_OPTIONS.get(name, {})).wraps_student()
        if factory is None:
            continue
        for kind, config in (("lm", LM), ("classifier", CLASSIFIER)):
            if name == "sla_sd" and kind == "lm":  # rotates images
                continue
            modules.append(
                (f"{name}_{kind}", _abstract(lambda factory=factory, config=config: factory(config, nnx.Rngs(0))))
            )
    modules.append(("head_gates", _abstract(lambda: HeadGates(3, 2))))
    modules += _diffusion_student_wrappers()
    return modules


# Diffusion distillation recipes build their student from a trained teacher run (`distill.options.teacher_run`):
# the denoiser itself is covered by the teacher recipes' wrappers above, the modules they add around it here.
TEACHER_RUN_RECIPES = {
    "diffusion_consistency",
    "diffusion_dmd",
    "diffusion_sid",
    "diffusion_ladd",
    "diffusion_causvid",
    "diffusion_disback",
    "diffusion_emd",
    "diffusion_phased_dmd",
    "diffusion_guidance",
    "diffusion_progressive",
    "diffusion_rectified",
    "diffusion_solvers",
}


def _diffusion_student_wrappers():
    from jdistill.diffusion.methods.wrappers import DODEDenoiser, LoRADenoiser, PlugAndPlayDenoiser

    def base(guidance=False):
        return recipe_classes()["diffusion_edm"](guidance_conditioning=guidance).wraps_student()(
            CLASSIFIER, nnx.Rngs(0)
        )

    return [
        ("lora_denoiser", _abstract(lambda: LoRADenoiser(base(), rank=2, rngs=nnx.Rngs(1)))),
        ("plug_and_play_denoiser", _abstract(lambda: PlugAndPlayDenoiser(base(), base(guidance=True)))),
        ("dode_denoiser", _abstract(lambda: DODEDenoiser(base(), steps=4))),
    ]


@pytest.fixture(scope="module")
def modules():
    return _modules()


def test_the_wrappers_are_in_the_list(modules):
    names = {name for name, _ in modules}
    assert {"mutual_lm", "sla_sd_classifier", "feature_kd_lm", "diffusion_edm_classifier", "lora_denoiser"} <= names
    assert set(recipe_classes()) >= TEACHER_RUN_RECIPES


def test_every_parameter_names_each_dimension_with_a_ruled_logical_axis(modules):
    checked = 0
    for name, module in modules:
        for path, variable in _variables(module):
            axes = logical_axes(variable)
            assert axes is not None, f"{name}: {path} has no logical axes"
            assert len(axes) == variable.ndim, f"{name}: {path} {variable.shape} has axes {axes}"
            for axis in axes:
                assert axis in DEFAULT_RULES, f"{name}: {path} uses {axis!r}, which has no rule"
            checked += 1
    assert checked > 500


def test_every_rule_is_used(modules):
    used = {axis for _, module in modules for _, variable in _variables(module) for axis in logical_axes(variable)}
    assert used | {"batch"} == set(DEFAULT_RULES)


def _axes_by_path(module):
    return {path: logical_axes(variable) for path, variable in _variables(module)}


def _block(index, mixer):
    prefix = f"['blocks'][{index}]"
    into, out_of = ("embed", "heads"), ("heads", "embed")
    mixers = {
        "attention": {
            "['attention']['query_and_gate']['kernel']": into,
            "['attention']['key_value']['kernel']": into,
            "['attention']['output']['kernel']": out_of,
        },
        "deltanet": {
            "['linear_attention']['in_proj_qkvz']['kernel']": into,
            "['linear_attention']['in_proj_ba']['kernel']": into,
            "['linear_attention']['conv_weight']": ("conv", "heads"),
            "['linear_attention']['dt_bias']": ("heads",),
            "['linear_attention']['A_log']": ("heads",),
            "['linear_attention']['norm']['scale']": ("norm",),
            "['linear_attention']['out_proj']['kernel']": out_of,
        },
        "regla": {
            **{
                f"['linear_attention']['{name}']['kernel']": into
                for name in ("query", "key", "value", "forget_gate", "refine_gate")
            },
            "['linear_attention']['forget_gate']['bias']": ("heads",),
            "['linear_attention']['refine_gate']['bias']": ("heads",),
            "['linear_attention']['output_norm']['scale']": ("norm",),
            "['linear_attention']['output']['kernel']": out_of,
        },
    }[mixer]
    common = {
        "['attention_norm']['scale']": ("norm",),
        "['mlp_norm']['scale']": ("norm",),
        "['mlp']['up']['kernel']": ("embed", "mlp"),
        "['mlp']['up']['bias']": ("mlp",),
        "['mlp']['down']['kernel']": ("mlp", "embed"),
        "['mlp']['down']['bias']": ("embed",),
    }
    return {prefix + key: axes for key, axes in {**mixers, **common}.items()}


def test_the_reference_lm_layout_is_pinned():
    """Catches a swapped or wrong name on any parameter of the hybrid LM (attention, Gated DeltaNet, ReGLA)."""
    expected = {
        "['embed']['embedding']": ("vocab", "embed"),
        "['final_norm']['scale']": ("norm",),
        "['head']['kernel']": ("embed", "vocab"),
        "['head']['bias']": ("vocab",),
    }
    for index, mixer in enumerate(("attention", "deltanet", "regla")):
        expected.update(_block(index, mixer))
    assert _axes_by_path(_abstract(lambda: Transformer(LM, rngs=nnx.Rngs(0)))) == expected


def test_the_reference_classifier_layout_with_gates_and_exits_is_pinned():
    config = dataclasses.replace(CLASSIFIER, residual_gates=True, exit_layers=(1,), activation="xgelu")
    expected = {
        "['embed']['kernel']": ("patch", "embed"),
        "['embed']['bias']": ("embed",),
        "['position']": ("position", "embed"),
        "['final_norm']['scale']": ("norm",),
        "['head']['kernel']": ("embed", "vocab"),
        "['head']['bias']": ("vocab",),
        "['exits']['norm']['scale']": ("norm",),
        "['exits']['layer_embedding']['embedding']": ("layers", "layer_embed"),
        "['exits']['head']['kernel']": ("embed", "vocab"),
        "['exits']['head']['bias']": ("vocab",),
        "['blocks'][0]['mlp']['activation']['alpha']": (),
    }
    expected.update(_block(0, "attention"))
    for gate in ("attention_gate", "mlp_gate"):
        expected[f"['blocks'][0]['{gate}']['projection']['kernel']"] = ("embed", "gate")
        expected[f"['blocks'][0]['{gate}']['projection']['bias']"] = ("gate",)
    assert _axes_by_path(_abstract(lambda: Transformer(config, rngs=nnx.Rngs(0)))) == expected
