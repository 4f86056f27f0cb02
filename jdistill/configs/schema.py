"""The run configuration as frozen dataclasses. YAML presets and `key.sub=value` overrides are validated
into these by `jdistill.configs.parsing`; every field's meaning follows `docs/conventions.md`."""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
from typing import Literal

from jdistill.losses.divergences import DIVERGENCES
from jdistill.models.config import ModelConfig

Problems = list[tuple[str, str]]


def _positive(obj, *names) -> Problems:
    return [(n, "a positive integer") for n in names if getattr(obj, n) < 1]


# `data.name`: the embedded datasets (`jdistill.data.sources.EMBEDDED` and the functions corpus built from
# pystdlib_text) and the prefixes of the other sources (docs/data.md).
DATASET_NAMES = ("digits", "pystdlib_text", "pystdlib_functions")
DATASET_PREFIXES = ("tfds:", "files:", "tokenized:")


def _dataset_problem(name: str) -> str | None:
    """What `data.name` should be when `name` is neither an embedded dataset nor a known prefix with a rest."""
    prefix = next((p for p in DATASET_PREFIXES if name.startswith(p)), None)
    if name in DATASET_NAMES or (prefix and name[len(prefix) :].strip()):
        return None
    close = difflib.get_close_matches(name, DATASET_NAMES, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return f"one of {', '.join(DATASET_NAMES)} or tfds:NAME, files:GLOB, tokenized:DIR{hint}"


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """name: "digits", "pystdlib_text", "pystdlib_functions" (embedded, built on first use), "tfds:NAME" (prepared in
    `dir`), "files:GLOB" (local .txt / .jsonl / .parquet) or "tokenized:DIR" (written by `jdistill tokenize`).
    dir: tfds data directory (None: $JDISTILL_DATA_DIR, else ~/.cache/jdistill/tensorflow_datasets); raw LM sources
    are tokenised once into its `tokenized/` folder.
    tokenizer: LM tokenizer, "bytes" or "hf:DIR" / DIR (`jdistill.text.load_tokenizer`).
    text_key: the text field of `tfds:` and `files:` records (docs/data.md).
    seq_len: tokens per LM training window. max_prompt_len: prompt width P of prompt/completion batches (recipes with
    `batch_layout = "prompt_completion"`; null: seq_len // 2); long_prompts: a longer prompt is an error, or "skip"
    leaves its document out of those batches. eval_batch_size / eval_max_batches bound evaluation."""

    name: str = "digits"
    dir: str | None = None
    tokenizer: str = "bytes"
    text_key: str = "text"
    seq_len: int = 128
    max_prompt_len: int | None = None
    long_prompts: Literal["error", "skip"] = "error"
    eval_batch_size: int = 256
    eval_max_batches: int | None = None

    @property
    def prompt_len(self) -> int:
        """P: the prompt width of prompt/completion batches."""
        return self.max_prompt_len if self.max_prompt_len is not None else self.seq_len // 2

    def validate(self) -> Problems:
        problems = _positive(self, "seq_len", "eval_batch_size")
        if expected := _dataset_problem(self.name):
            problems.append(("name", expected))
        if self.max_prompt_len is not None and not 1 <= self.max_prompt_len < self.seq_len:
            problems.append(("max_prompt_len", f"an integer in [1, seq_len={self.seq_len}) or null"))
        if self.eval_max_batches is not None and self.eval_max_batches < 1:
            problems.append(("eval_max_batches", "a positive integer or null"))
        return problems


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimisation of one stage: AdamW with linear warm-up then cosine decay to `final_lr_fraction * lr`.

    warmup_steps: the warm-up's length, an integer number of steps or a fraction of `steps` written as a number in
    [0, 1] (0.1: the first 10% of the steps), so a preset's warm-up scales with a changed step budget; a fraction
    is resolved to `round(fraction * steps)` steps when the config is built (`config.yaml` records the count).

    augment: training-batch augmentation for images, "none" or "shift" (random +-1 pixel translation; Hinton
    et al. 2015 trained their MNIST teacher with such jitter and the student without).
    skip_nonfinite_steps: how many steps with a non-finite loss or gradient norm a stage may skip (the update is
    not applied, counted as `skipped_steps` in the metrics) before it halts; 0 halts at the first (docs/reliability.md).
    """

    steps: int = 1000
    augment: Literal["none", "shift"] = "none"
    batch_size: int = 64
    learning_rate: float = 1e-3
    warmup_steps: int | float = 0.1
    final_lr_fraction: float = 0.0
    weight_decay: float = 0.05
    b1: float = 0.9
    b2: float = 0.999
    grad_clip_norm: float | None = 1.0
    eval_every: int = 250
    log_every: int = 25
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    grad_accum_steps: int = 1
    skip_nonfinite_steps: int = 0

    def __post_init__(self):
        if isinstance(self.warmup_steps, float) and 0.0 <= self.warmup_steps <= 1.0:  # a fraction of `steps`
            object.__setattr__(self, "warmup_steps", math.floor(self.warmup_steps * self.steps + 0.5))

    def validate(self) -> Problems:
        problems = _positive(
            self,
            "steps",
            "batch_size",
            "eval_every",
            "log_every",
            "checkpoint_every",
            "keep_checkpoints",
            "grad_accum_steps",
        )
        if self.grad_accum_steps >= 1 and self.batch_size % self.grad_accum_steps:
            problems.append(("batch_size", f"a multiple of grad_accum_steps={self.grad_accum_steps}"))
        if self.learning_rate <= 0:
            problems.append(("learning_rate", "a positive number"))
        if isinstance(self.warmup_steps, float) or not 0 <= self.warmup_steps <= self.steps:
            fraction = "a fraction of the steps in [0, 1] (0.1: the first 10%)"
            problems.append(("warmup_steps", f"an integer in [0, steps={self.steps}] or {fraction}"))
        if not 0.0 <= self.final_lr_fraction <= 1.0:
            problems.append(("final_lr_fraction", "a number in [0, 1]"))
        if self.weight_decay < 0:
            problems.append(("weight_decay", "a number >= 0"))
        for name in ("b1", "b2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                problems.append((name, "a number in [0, 1)"))
        if self.grad_clip_norm is not None and self.grad_clip_norm <= 0:
            problems.append(("grad_clip_norm", "a positive number or null"))
        if self.skip_nonfinite_steps < 0:
            problems.append(("skip_nonfinite_steps", "an integer >= 0"))
        return problems


@dataclasses.dataclass(frozen=True)
class StageConfig:
    """One model and how it is trained. `init_from`: a pretrained model ("hf:DIR" a Hugging Face checkpoint folder,
    or a run's stage folder RUN_DIR/STAGE) whose architecture the stage takes (`jdistill.hf.init_from`): a teacher
    with `init_from` is not trained; the student stages (baseline and recipe) start from its weights."""

    model: ModelConfig = ModelConfig()  # noqa: RUF009 (frozen, immutable)
    train: TrainConfig = TrainConfig()
    init_from: str | None = None


PRUNE_METHODS = ("block_influence", "every_other", "first")  # jdistill.hf.prune.layers_to_keep


@dataclasses.dataclass(frozen=True)
class PruneConfig:
    """`student.prune` (docs/llm.md#a-student-pruned-from-the-teacher): the student is the job's teacher with `layers`
    of its blocks, kept by `method` (`jdistill.hf.prune.layers_to_keep`; block_influence scores the teacher on
    `calibration_batches` training batches). `layers: null` (the default): no pruning."""

    layers: int | None = None
    method: Literal["block_influence", "every_other", "first"] = "block_influence"
    calibration_batches: int = 8

    def validate(self) -> Problems:
        problems = _positive(self, "calibration_batches")
        if self.layers is not None and self.layers < 1:
            problems.append(("layers", "a positive integer or null"))
        return problems


@dataclasses.dataclass(frozen=True)
class StudentConfig(StageConfig):
    """The student's stage, plus `prune`: start from the teacher depth-pruned to `prune.layers` blocks."""

    prune: PruneConfig = PruneConfig()


@dataclasses.dataclass(frozen=True)
class DistillConfig:
    """The student's objective: `distill_weight * D(p_t || p_s at temperature) + label_weight * CE(y, s)`.

    recipe: which recipe trains the student (`jdistill recipes` lists them); `options` holds that recipe's own
    parameters by their paper names (e.g. `alpha_T` for PS-KD), checked against the recipe when it is built.
    The shared fields below reach every recipe that has them; unset (null) means the recipe's own default.
    objective: the divergence D, a name of `jdistill.losses.DIVERGENCES` (direction in the name,
    docs/conventions.md).
    scale_by_temperature_squared: multiply D by T^2 (Hinton) so gradient size does not shrink with T; null takes the
    divergence's default (T^2 for forward_kl only, none for the GKD-style reverse_kl, generalized_jsd, tvd).
    beta: generalized_jsd interpolation (0: forward KL, 1: reverse KL).
    vocab (LMs; docs/checkpoints.md#vocabulary-policy): "shared" compares teacher and student over the real
    vocabulary, the first V rows with V the data tokenizer's vocab size, so padded embedding rows carry no
    probability and the two vocab sizes may differ; "full" compares every row (vocab sizes must be equal).
    """

    recipe: str = "kd"
    objective: str | None = None
    temperature: float | None = None
    distill_weight: float | None = None
    label_weight: float | None = None
    beta: float | None = None
    scale_by_temperature_squared: bool | None = None
    vocab: Literal["shared", "full"] = "shared"
    options: dict = dataclasses.field(default_factory=dict)

    def validate(self) -> Problems:
        problems = []
        if self.objective is not None and self.objective not in DIVERGENCES:
            problems.append(("objective", "one of " + ", ".join(DIVERGENCES)))
        if self.temperature is not None and self.temperature <= 0:
            problems.append(("temperature", "a positive number"))
        for name in ("distill_weight", "label_weight"):
            if getattr(self, name) is not None and getattr(self, name) < 0:
                problems.append((name, "a number >= 0"))
        if self.beta is not None and not 0.0 <= self.beta <= 1.0:
            problems.append(("beta", "a number in [0, 1]"))
        return problems


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Output and logging of a run. `baseline`: also train the student on labels alone (same init, data and
    budget) so the summary compares the recipe against it. LM stages end with `samples.jsonl`: greedy completions
    of `sample_tokens` tokens (0: none) of `sample_prompts` (empty: the first documents of the held-out split).
    `export`: a local folder that receives the final recipe student stage as a Hugging Face checkpoint when the job
    ends (`jdistill.train.export_step`; null: no export)."""

    progress: bool = True
    tensorboard: bool = True
    plot: bool = True
    baseline: bool = True
    sample_tokens: int = 48
    sample_prompts: tuple[str, ...] = ()
    export: str | None = None
    compare: dict = dataclasses.field(default_factory=dict)

    def compare_distill(self, name: str, distill: DistillConfig) -> DistillConfig:
        """The objective of comparison stage `student_<name>`: `distill` with the fields of `compare[name]`
        replaced; its `options` are added to `distill.options` when the recipe stays the same, else replace them."""
        from jdistill.configs.parsing import build

        fields = dict(self.compare[name])
        same_recipe = fields.get("recipe", distill.recipe) == distill.recipe
        options = {**(distill.options if same_recipe else {}), **(fields.pop("options", None) or {})}
        values = {**dataclasses.asdict(distill), **fields, "options": options}
        return build(DistillConfig, values, "config", f"run.compare.{name}.")

    def compare_problems(self, distill: DistillConfig) -> Problems:
        """Names and objectives of `compare` (each built, so a bad field is a one-line error naming it)."""
        problems: Problems = []
        for name, fields in self.compare.items():
            if not isinstance(name, str) or not re.fullmatch(r"[a-z][a-z0-9_]*", name):
                problems.append(("run.compare", f"stage names of lowercase letters, digits and _ (got {name!r})"))
            elif not isinstance(fields, dict):
                problems.append((f"run.compare.{name}", "a mapping of distill fields (recipe, objective, options...)"))
            else:
                self.compare_distill(name, distill)
        return problems

    def validate(self) -> Problems:
        problems: Problems = []
        if self.export is not None and (not self.export.strip() or "://" in self.export):
            problems.append(
                (
                    "export",
                    "a local folder path or null (remote URLs such as gs:// are not written: "
                    "export to a mounted path and copy it)",
                )
            )
        if self.sample_tokens < 0:
            problems.append(("sample_tokens", "a non-negative integer"))
        if "" in self.sample_prompts:
            problems.append(("sample_prompts", "a list of non-empty strings"))
        return problems


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """The device mesh: axes `data` (batch), `fsdp` (batch and parameter shards), `tensor` (heads / mlp /
    vocabulary), `expert` (expert parallelism: each mixture-of-experts layer's experts split over it, and the batch
    with them; the expert count of every MoE model must be a multiple of it), and `dcn_data` (data parallel across
    slices over the data-centre network; 1 on one slice). `data: -1` takes whatever devices the other axes leave.
    `rules` override the logical-axis -> mesh-axes table of `jdistill.train.sharding.DEFAULT_RULES` (e.g.
    `{mlp: tensor, embed: null}`)."""

    data: int = -1
    fsdp: int = 1
    tensor: int = 1
    expert: int = 1
    dcn_data: int = 1
    rules: dict = dataclasses.field(default_factory=dict)

    def validate(self) -> Problems:
        problems = _positive(self, "fsdp", "tensor", "expert", "dcn_data")
        if self.data < 1 and self.data != -1:
            problems.append(("data", "a positive integer or -1 (all remaining devices)"))
        return problems


@dataclasses.dataclass(frozen=True)
class ClusterConfig:
    """Where the job runs. `topology`: e.g. "v5e:4x4" / "v5p-128" / "h100:4x8" (None: this machine).
    `distributed`: "auto" calls `jax.distributed.initialize()` when the environment describes a multi-host job
    (TPU pod, Slurm, `JDISTILL_COORDINATOR`), "on" always, "off" never; `coordinator_address`, `num_processes`,
    `process_id` pass through when set. The launch fields are read by `jdistill launch`."""

    topology: str | None = None
    num_slices: int = 1
    distributed: Literal["auto", "on", "off"] = "auto"
    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    launcher: Literal["gcloud", "xpk", "slurm", "kubernetes"] = "gcloud"
    name: str = "jdistill"
    project: str | None = None
    zone: str | None = None
    runtime_version: str | None = None
    options: dict = dataclasses.field(default_factory=dict)

    def validate(self) -> Problems:
        problems = _positive(self, "num_slices")
        if self.num_processes is not None and self.num_processes < 1:
            problems.append(("num_processes", "a positive integer or null"))
        if self.process_id is not None and not 0 <= self.process_id < (self.num_processes or self.process_id + 1):
            problems.append(("process_id", "an integer in [0, num_processes) or null"))
        return problems


@dataclasses.dataclass(frozen=True)
class Config:
    """A teacher -> student distillation job: the teacher is trained, then the same student is trained
    from scratch (labels only) and with the distillation objective, at the same budget."""

    seed: int = 0
    data: DataConfig = DataConfig()
    teacher: StageConfig = StageConfig()
    student: StudentConfig = StudentConfig()
    distill: DistillConfig = DistillConfig()
    run: RunConfig = RunConfig()
    mesh: MeshConfig = MeshConfig()
    cluster: ClusterConfig = ClusterConfig()

    def validate(self) -> Problems:
        problems = []
        if self.seed < 0:
            problems.append(("seed", "an integer >= 0"))
        problems += self.run.compare_problems(self.distill)
        student_model = self.student.model
        if self.student.prune.layers is not None:
            student_model, prune_problems = pruned_student_model(self)
            problems += prune_problems
        problems += expert_axis_problems(self.mesh, {"teacher": self.teacher.model, "student": student_model})
        kind = self.teacher.model.kind
        if student_model.kind != kind:
            problems.append(("student.model.kind", f"the teacher's kind ({kind!r})"))
        out = "num_classes" if kind == "classifier" else "vocab_size"
        padded = kind == "lm" and self.distill.vocab == "shared"  # rows past the tokenizer's vocabulary are padding
        if getattr(student_model, out) != getattr(self.teacher.model, out) and not padded:
            expected = f"equal to teacher.model.{out} (vocabularies must match"
            problems.append(
                (f"student.model.{out}", expected + (" under distill.vocab=full)" if kind == "lm" else ")"))
            )
        return problems

    def window_problems(self) -> Problems:
        """An LM window longer than a model's `max_seq_len`. Checked when a job starts (`jdistill.train.job`), not
        here in `validate`: a finished run's config is read back (init_from, export, generate) as it was written."""
        if self.teacher.model.kind != "lm":
            return []
        return [
            ("data.seq_len", f"at most {role}.model.max_seq_len={model.max_seq_len} (or raise that)")
            for role, model in (("teacher", self.teacher.model), ("student", self.student.model))
            if self.data.seq_len > model.max_seq_len
        ]


def expert_axis_problems(mesh: MeshConfig, models: dict[str, ModelConfig]) -> Problems:
    """Each mixture-of-experts model's `num_experts` must be a multiple of `mesh.expert`: every device of the expert
    axis holds the same number of whole experts (a dense model, `num_experts: 0`, is not split over it)."""
    return [
        (f"{role}.model.num_experts", f"a multiple of mesh.expert={mesh.expert} (experts split evenly over the axis)")
        for role, model in models.items()
        if model.num_experts > 0 and mesh.expert >= 1 and model.num_experts % mesh.expert
    ]


# Fields of a pruned student that are not its architecture: how it runs, taken from `student.model`.
PRUNE_RUNTIME_FIELDS = ("dtype", "remat", "attention_impl", "delta_rule_impl", "max_seq_len")


def pruned_student_model(config: Config) -> tuple[ModelConfig, Problems]:
    """(the student model of `student.prune`: the teacher's with `prune.layers` blocks and the student's runtime
    fields, the problems). A `student.model` field set to neither its default nor the pruned teacher's value is a
    problem (the architecture is derived, not chosen); so are a prune that keeps no fewer blocks than the teacher
    has, a teacher that is not an LM or mixes layer types, and `student.init_from` (two initialisations)."""
    teacher, student, layers = config.teacher.model, config.student.model, config.student.prune.layers
    problems: Problems = []
    if layers is None:
        return student, problems
    if teacher.kind != "lm":
        problems.append(("student.prune.layers", "null (depth pruning needs an LM teacher, teacher.model.kind: lm)"))
    if not 1 <= layers < teacher.num_layers:
        problems.append(("student.prune.layers", f"an integer in [1, {teacher.num_layers}) (the teacher's blocks)"))
    if len(set(teacher.layer_pattern)) > 1 or teacher.exit_layers:
        problems.append(("student.prune.layers", "null for a teacher with mixed layer_pattern or exit_layers"))
    if config.student.init_from:
        problems.append(("student.init_from", "null when student.prune is set (the student is the pruned teacher)"))
    default = ModelConfig()
    derived = dataclasses.replace(
        teacher, num_layers=layers, **{name: getattr(student, name) for name in PRUNE_RUNTIME_FIELDS}
    )
    for field in dataclasses.fields(ModelConfig):
        mine, wanted = getattr(student, field.name), getattr(derived, field.name)
        if field.name not in PRUNE_RUNTIME_FIELDS and mine != wanted and mine != getattr(default, field.name):
            problems.append(
                (f"student.model.{field.name}", f"{wanted!r} (student.prune: the teacher's architecture) or unset")
            )
    return derived, problems
