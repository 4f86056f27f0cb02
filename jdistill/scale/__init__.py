"""Pod scale: accelerator topologies, ahead-of-time compilation of the sharded train step (`jdistill compile`)
and launching on TPU pod slices, xpk, Slurm and Kubernetes (`jdistill launch`)."""
