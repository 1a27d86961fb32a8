"""What the shipped model is made of: the networks whose graphs a release exports (the transformer, its
sampler, the base super-resolver, the JPEG restorer) and the export itself."""
