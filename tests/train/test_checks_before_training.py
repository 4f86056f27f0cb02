"""Every recipe's option and compatibility errors come before any stage trains: `run_job` (and `jdistill compile`)
raise the one-line ConfigError while building a stage would still fail the test. Each recipe has a bad case here;
a recipe added without one fails `test_every_recipe_has_a_bad_case`."""

import pytest

from jdistill.configs import load_config
from jdistill.errors import ConfigError
from jdistill.recipes.registry import recipe_classes
from jdistill.scale import compile as aot_compile
from jdistill.train import loop
from jdistill.train.job import run_job

CLASSIFIER_AS_LM = ["student.model.kind=lm", "teacher.model.kind=lm"]

# recipe -> (preset, overrides, the error's text)
BAD = {
    "adr": ("adr", CLASSIFIER_AS_LM, "trains classifiers only"),
    "born_again": ("born_again", ["teacher.model.d_model=32"], "teacher.model equal to student.model"),
    "cached_topk": ("default", ["distill.recipe=cached_topk"], "trains language models only"),
    "dcs": ("lm_kd", ["distill.recipe=dcs"], "trains classifiers only"),
    "defensive": (
        "defensive",
        ["student.model.classifier_input=tokens", "teacher.model.classifier_input=tokens"],
        "transforms images",
    ),
    "diffusion_consistency": ("diffusion_cd", ["distill.options.teacher_run=/nonexistent/edm"], "not a run directory"),
    "diffusion_edm": (
        "diffusion_edm",
        ["student.model.classifier_input=tokens", "teacher.model.classifier_input=tokens"],
        "denoises images",
    ),
    "diffusion_flow": ("diffusion_flow", ["distill.options.label_dropout=1.0"], "label_dropout must be in"),
    "diffusion_guidance": (
        "diffusion_guidance",
        ["distill.options.teacher_run=/nonexistent/edm"],
        "not a run directory",
    ),
    "diffusion_progressive": (
        "diffusion_progressive",
        ["distill.options.teacher_run=/nonexistent"],
        "not a run directory",
    ),
    "diffusion_rectified": ("diffusion_reflow", ["distill.options.variant=flow"], "variant must be one of"),
    "diffusion_dmd": ("diffusion_dmd", ["distill.options.variant=dmd3"], "variant must be one of"),
    "diffusion_sid": ("diffusion_sid", ["distill.options.teacher_run=/nonexistent/edm"], "not a run directory"),
    "diffusion_phased_dmd": ("diffusion_phased_dmd", ["distill.options.generator_steps=1"], "generator_steps >= 2"),
    "diffusion_emd": ("diffusion_emd", ["distill.options.mcmc_steps=-1"], "mcmc_steps and mcmc_step_size"),
    "diffusion_disback": ("diffusion_disback", ["distill.options.backtrack_fraction=0"], "backtrack_fraction"),
    "diffusion_causvid": (
        "diffusion_causvid",
        ["distill.options.teacher_run=/nonexistent/video"],
        "not a run directory",
    ),
    "diffusion_video_edm": ("diffusion_video_edm", ["distill.options.frames=0"], "frames must be >= 1"),
    "diffusion_ladd": ("diffusion_ladd", ["distill.options.time_std=0"], "time_std must be > 0"),
    "diffusion_solvers": ("diffusion_sfd", ["distill.options.teacher_run=/nonexistent/edm"], "not a run directory"),
    "diffusion_vp": ("diffusion_edm", ["distill.recipe=diffusion_vp", "distill.options.ema_decay=2"], "ema_decay"),
    "dino": (
        "dino",
        ["student.model.classifier_input=tokens", "teacher.model.classifier_input=tokens"],
        "transforms images",
    ),
    "feature_kd": ("feature_kd", ['distill.options.layer_map="9:1"'], "layer 9 does not exist"),
    "gkd": ("gkd", ["distill.options.prompt_len=4096"], "prompt_len=4096 exceeds data.seq_len"),
    "layerskip": ("llm_layerskip", ["distill.options.curriculum=spiral"], "curriculum must be one of"),
    "kd": ("default", ["distill.options.objective=kl"], "unknown divergence .kl.; expected one of"),
    "multi_exit": ("multi_exit", ["distill.options.exit_weights=[1,1]"], "2 weights for 3 exits"),
    "mutual": ("lm_kd", ["distill.recipe=mutual"], "trains classifiers only"),
    "pskd": ("lm_kd", ["distill.recipe=pskd"], "trains classifiers only"),
    "quantized": ("quantized", ["distill.options.bits=0"], "bits must be"),
    "random_teacher": ("random_teacher", ["teacher.model.d_model=32"], "student.model must equal teacher.model"),
    "sekd": ("sekd", ["distill.options.gamma_max=1.5"], "gamma_max must be"),
    "sla_sd": ("sla_sd", CLASSIFIER_AS_LM, "trains classifiers only"),
    "snapshot_kd": ("snapshot_kd", ["distill.options.method=median"], "method must be"),
    "supervised": (
        "default",
        ["distill.recipe=supervised", "distill.options.smoothing=0.1"],
        "not a parameter of recipe 'supervised'",
    ),
    "teacher_guidance": ("teacher_guidance", ["teacher.model.num_layers=3"], "teacher.model equal to student.model"),
    "xi_sd": ("xi_sd", ["teacher.model.mlp_dim=8"], "teacher.model equal to student.model"),
}

MORE_BAD = [  # further compatibility errors of recipes with several
    ("gkd", ["student.model.kind=classifier", "teacher.model.kind=classifier"], "trains language models only"),
    ("multi_exit", ["student.model.exit_layers=[]"], "student has no exits"),
    ("feature_kd", ['distill.options.layer_map="blocks.7.mlp:1"'], "layer_map"),
    ("feature_kd", ["teacher.model.d_model=24", "distill.options.teacher_width=null"], "teacher_width=24"),
    (
        "teacher_guidance",
        [
            "data.name=pystdlib_text",
            "student.model.kind=lm",
            "teacher.model.kind=lm",
            "student.model.vocab_size=256",
            "teacher.model.vocab_size=256",
        ],
        "alpha for classifiers",
    ),
]


def test_every_recipe_has_a_bad_case():
    assert set(recipe_classes()) <= set(BAD)


@pytest.fixture
def no_stage(monkeypatch):
    """Building any stage (the first thing before a train step) fails the test."""

    def fail(*args, **kwargs):
        raise AssertionError("a stage was built before the config error")

    monkeypatch.setattr(loop, "build_stage", fail)


@pytest.mark.parametrize(
    "preset, overrides, message",
    list(BAD.values()) + MORE_BAD,
    ids=list(BAD) + [f"{case[0]}-{i}" for i, case in enumerate(MORE_BAD)],
)
def test_bad_recipe_config_fails_before_any_stage(preset, overrides, message, no_stage, tmp_path, data_dir):
    with pytest.raises(ConfigError, match=message):
        run_job(load_config(preset, overrides), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()  # nothing written either


def test_compile_checks_the_recipe_before_compiling(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("compiled before the config error")

    monkeypatch.setattr(aot_compile, "run_aot", fail)
    with pytest.raises(ConfigError, match="trains classifiers only"):
        aot_compile.compile_config("tpu_configs/v4-8.yaml", ["distill.recipe=dcs", "distill.options={}"])
