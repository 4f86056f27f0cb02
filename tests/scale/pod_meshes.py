"""The scaled 8-device mesh of each pod config (`tests/scale/pod_configs_worker.py`), importable without starting
JAX (the worker sets `jax_num_cpu_devices` at import)."""

# Each config's mesh on 8 devices: every axis that is > 1 in the config stays > 1, except 2x-v5e-256's `data`
# (dcn_data x data x fsdp x tensor would need 16 devices; dcn_data 2 keeps the cross-slice data parallelism).
MESHES = {
    "v4-8": dict(data=1, fsdp=4, tensor=1),
    "v4-32": dict(data=1, fsdp=8, tensor=1),
    "v5e-16": dict(data=1, fsdp=8, tensor=1),
    "v5e-256": dict(data=2, fsdp=2, tensor=2),
    "v5p-128": dict(data=2, fsdp=2, tensor=2),
    "2x-v5e-256": dict(data=1, fsdp=2, tensor=2, dcn_data=2),
    "h100-1x8": dict(data=1, fsdp=8, tensor=1),
    "h100-4x8": dict(data=2, fsdp=4, tensor=1),
    "v4-32-moe": dict(data=1, fsdp=2, tensor=1, expert=4),
}
