"""Tiny job overrides shared by the family-A recipe tests (self-distillation: teacher == student architecture)."""

from tests.train.conftest import TINY


def tiny_job(*extra: str, steps: int = 4) -> list[str]:
    """TINY with the teacher shrunk to the student's size, no baseline stage, no plot or tensorboard."""
    return [o for o in TINY if not o.startswith("teacher.model")] + [
        "teacher.model.d_model=8",
        "teacher.model.num_heads=2",
        "teacher.model.mlp_dim=16",
        "teacher.model.num_layers=1",
        "run.plot=false",
        "run.tensorboard=false",
        "run.baseline=false",
        f"teacher.train.steps={steps}",
        f"student.train.steps={steps}",
        *extra,
    ]


def train_log(run_dir, stage: str, key: str) -> list[float]:
    """The logged training values of `key` for `stage` (one per `log_every` window), from RUN_DIR/metrics.jsonl."""
    import json
    from pathlib import Path

    records = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return [r[key] for r in records if r["split"] == "train" and r["stage"] == stage]
