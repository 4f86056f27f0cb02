"""Run a teacher over LM windows once and store its top-k log-probs (`jdistill cache-teacher`; the job's
`cached_topk` recipe). Format and lookup: `jdistill.data.teacher_cache`.

    jdistill cache-teacher --config cached_topk [--run-dir RUN] [--out DIR] [--top-k K] [--split train]

The teacher is RUN/teacher's newest checkpoint when there is one, else `teacher.init_from`, else it is trained
(as the job's teacher stage, into RUN). The cache is written at the recipe's temperature T (log_softmax(t / T),
top-k), k and log-prob dtype (`distill.options` of a `cached_topk` config; else k = 32, float16, `distill.temperature`).
In a job (`jdistill train` with recipe `cached_topk`) the cache holds just the windows the student stage reads,
in RUN/teacher_cache, unless `distill.options.cache_dir` names a cache written beforehand.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from jdistill import data
from jdistill.data import teacher_cache as cache_format
from jdistill.data.packing import PackedWindows
from jdistill.data.pipeline import padded_batch
from jdistill.errors import ConfigError, RunDirError
from jdistill.eval.batch import LM_KWARGS, lm_kwargs
from jdistill.io import fs
from jdistill.train.distributed import barrier

DEFAULT_TOP_K = 32
BATCH_WINDOWS = 64


@dataclasses.dataclass(frozen=True)
class CacheSettings:
    top_k: int
    temperature: float
    logprob_dtype: str


def settings_for(config, top_k: int | None = None) -> CacheSettings:
    """k, T and dtype of the cache: the `cached_topk` recipe's, else the defaults; `top_k` overrides k."""
    if config.distill.recipe == "cached_topk":
        from jdistill.recipes.registry import build_recipe

        recipe = build_recipe(config.distill)
        base = CacheSettings(recipe.top_k, recipe.temperature, recipe.logprob_dtype)
    else:
        temperature = config.distill.temperature if config.distill.temperature is not None else 1.0
        base = CacheSettings(DEFAULT_TOP_K, temperature, "float16")
    if top_k is not None:
        vocab = config.teacher.model.vocab_size
        if not 1 <= top_k <= vocab:
            raise ConfigError(f"--top-k {top_k}: expected 1..{vocab} (the teacher's vocabulary)")
        base = dataclasses.replace(base, top_k=top_k)
    return base


def train_windows(data_config, split: str = "train") -> PackedWindows:
    return data.lm_windows(data_config, split)


def write_cache(
    graphdef,
    params,
    windows: PackedWindows,
    window_ids,
    out_dir,
    settings: CacheSettings,
    *,
    split: str,
    metadata: dict,
    progress: bool = False,
) -> dict:
    """Run the teacher over `windows[window_ids]` in batches and write the cache; returns its metadata.
    `progress`: a bar over the windows on stderr."""
    from jdistill.progress import step_bar

    config = nnx.merge(graphdef, params).config
    if config.kind != "lm":
        raise ConfigError("cache-teacher: the teacher must be a language model (teacher.model.kind: lm)")

    @jax.jit
    def top_k(params, batch):
        logits = nnx.merge(graphdef, params)(batch["inputs"], **lm_kwargs(batch)).logits
        log_probs = jax.nn.log_softmax(logits.astype(np.float32) / settings.temperature, axis=-1)
        values, ids = jax.lax.top_k(log_probs, settings.top_k)
        return ids, values

    seq_len = windows.seq_len

    def records():
        bar = step_bar(len(window_ids), "teacher cache (windows)", enabled=progress, unit="window")
        for start in range(0, len(window_ids), BATCH_WINDOWS):
            chunk = window_ids[start : start + BATCH_WINDOWS]
            tokens = np.stack([windows.tokens(w) for w in chunk])
            batch = padded_batch([windows[w] for w in chunk], BATCH_WINDOWS)
            ids, values = jax.device_get(top_k(params, {key: batch[key] for key in ("inputs", *LM_KWARGS)}))
            yield from zip(tokens, ids[: len(chunk)], values[: len(chunk)], strict=True)
            bar.update(len(chunk))
        bar.close()

    return cache_format.write_teacher_cache(
        out_dir,
        records(),
        window_ids,
        seq_len=seq_len,
        top_k=settings.top_k,
        vocab_size=config.vocab_size,
        split=split,
        logprob_dtype=settings.logprob_dtype,
        extra_metadata=dict(metadata, temperature=settings.temperature, teacher={"model": dataclasses.asdict(config)}),
    )


def describe(metadata: dict, out_dir) -> str:
    return (
        f"cached {metadata['num_windows']} windows ({metadata['num_tokens']} tokens) of "
        f"{metadata.get('dataset')}/{metadata['split']}, top-{metadata['top_k']} log-probs at "
        f"T={metadata['temperature']} ({metadata['logprob_dtype']}): {metadata['bytes_per_token']:.1f} bytes per "
        f"token on disk ({metadata['payload_bytes_per_token']:.1f} payload) -> {out_dir}"
    )


def check_cache(metadata: dict, config, recipe, where) -> None:
    """One-line errors when a cache does not fit the run (dataset, split, seq_len, T, k, vocabulary)."""
    expected = {
        "dataset": config.data.name,
        "split": "train",
        "seq_len": config.data.seq_len,
        "temperature": recipe.temperature,
        "vocab_size": config.student.model.vocab_size,
    }
    for key, value in expected.items():
        if metadata.get(key) != value:
            raise ConfigError(f"teacher cache {where}: {key} is {metadata.get(key)!r}, the run needs {value!r}")
    if metadata["top_k"] < recipe.top_k:
        raise ConfigError(
            f"teacher cache {where}: holds the top {metadata['top_k']}, distill.options.top_k is {recipe.top_k}"
        )


def job_dataset_fn(config, recipe, teacher, run_dir):
    """The student stage's `dataset_fn` for a `cached_topk` job: the cache (written now from the trained `teacher`
    for the windows the student reads, reused when it already fits, or `recipe.cache_dir`) attached by window."""
    train = config.student.train
    windows = train_windows(config.data)
    if recipe.cache_dir:
        out = Path(recipe.cache_dir)
    else:
        out = Path(run_dir) / "teacher_cache"
        key = {
            "dataset": config.data.name,
            "seq_len": config.data.seq_len,
            "seed": config.seed,
            "steps": train.steps,
            "batch_size": train.batch_size,
            "num_split_windows": len(windows),
        }
        settings = CacheSettings(recipe.top_k, recipe.temperature, recipe.logprob_dtype)
        existing = cache_format.read_metadata(out)
        fits = (
            existing is not None
            and existing.get("job") == key
            and existing["top_k"] == recipe.top_k
            and existing.get("temperature") == recipe.temperature
            and existing["logprob_dtype"] == recipe.logprob_dtype
        )
        if not fits and jax.process_index() == 0:
            ids = cache_format.visited_windows(
                len(windows),
                train.steps,
                seed=config.seed,
                batch_size=train.batch_size,
                process_count=jax.process_count(),
            )
            metadata = write_cache(
                teacher.graphdef,
                teacher.params,
                windows,
                ids,
                out,
                settings,
                split="train",
                metadata={"dataset": config.data.name, "job": key},
                progress=config.run.progress,
            )
            print(f"jdistill: {describe(metadata, out)}")
        barrier("teacher_cache")  # other hosts read the cache once process 0 has written it
    cache = cache_format.TeacherCache(out)
    check_cache(cache.metadata, config, recipe, out)
    per_host = train.batch_size // jax.process_count()

    def attach(dataset):
        return cache_format.attach_teacher_cache(
            dataset,
            cache,
            num_windows=len(windows),
            seed=config.seed,
            batch_size=per_host,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
            top_k=recipe.top_k,
        )

    return attach


def _teacher(config, run_dir: Path, progress: bool):
    """(graphdef, params) of the teacher: RUN/teacher's checkpoint, `init_from`, or trained now into RUN."""
    from jdistill.recipes import Supervised
    from jdistill.train.job import TEACHER_INIT
    from jdistill.train.loop import run_stage, stage_key
    from jdistill.train.restore import load_pretrained, load_stage_params
    from jdistill.train.rundir import prepare_run_dir, write_config

    if (run_dir / "teacher" / "checkpoints").is_dir():
        return load_stage_params(run_dir / "teacher", config.teacher.model)
    if config.teacher.init_from:
        result = load_pretrained(config.teacher)
        return result.graphdef, result.params
    from jdistill.configs import to_dict

    resume = (run_dir / "config.yaml").is_file()
    prepare_run_dir(run_dir, resume=resume)
    if not resume:
        write_config(run_dir, to_dict(config))
    result = run_stage(
        "teacher",
        config.teacher,
        recipe=Supervised(),
        data_config=config.data,
        seed=config.seed,
        init_key=stage_key(config.seed, TEACHER_INIT),
        stage_dir=run_dir / "teacher",
        run_dir=run_dir,
        resume=True,
        progress=progress,
        tensorboard=config.run.tensorboard,
        mesh_config=config.mesh,
    )
    return result.graphdef, result.params


def cmd_cache_teacher(args) -> int:
    """`jdistill cache-teacher`: the teacher over the whole split once; prints the cache's bytes per token."""
    from jdistill.configs import load_config
    from jdistill.data.corpus_tokenizer import with_corpus_tokenizer
    from jdistill.train.rundir import default_run_dir

    for flag, value in (("--run-dir", args.run_dir), ("--out", args.out)):
        if value and fs.is_remote(value):  # the teacher cache is local ArrayRecord files, and so is its teacher here
            raise RunDirError(f"{flag} {value}: cache-teacher writes local folders; give a local path")
    run_dir = Path(args.run_dir) if args.run_dir else default_run_dir()
    if args.config is None and not (run_dir / "config.yaml").is_file():
        raise ConfigError("cache-teacher needs --config NAME|PATH, or --run-dir of a run with a config.yaml")
    config = with_corpus_tokenizer(load_config(args.config or str(run_dir / "config.yaml"), args.overrides))
    if config.teacher.model.kind != "lm":
        raise ConfigError("cache-teacher: the teacher must be a language model (teacher.model.kind: lm)")
    settings = settings_for(config, args.top_k)
    graphdef, params = _teacher(config, run_dir, config.run.progress)
    windows = train_windows(config.data, args.split)
    out = Path(args.out) if args.out else run_dir / "teacher_cache"
    metadata = write_cache(
        graphdef,
        params,
        windows,
        np.arange(len(windows)),
        out,
        settings,
        split=args.split,
        metadata={"dataset": config.data.name},
        progress=config.run.progress,
    )
    print(describe(metadata, out))
    return 0
