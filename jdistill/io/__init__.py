"""Files a run writes: strict JSON (`strict_json`), paths that may be `gs://` URLs (`fs`), JSON lines that survive
a kill (`jsonl`), TensorBoard event files on any of those paths (`events`), and a local stand-in for `gs://` in
tests (`fake_gcs`)."""
