"""Local tfds builders for the embedded offline datasets.

Each builder needs nothing from the network and no TensorFlow; `jdistill.data.sources.load_source`
builds them into the data dir on first use (array_record format).
"""
