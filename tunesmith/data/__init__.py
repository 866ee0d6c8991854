"""Training data: the open corpus builder, manifests, clip datasets, shards and frame caches."""
