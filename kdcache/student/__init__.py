"""Student training: the loss, timm factories, checkpoints, evaluation and the Trainer loop.

Import from the submodules (``kdcache.student.trainer`` etc.); this package imports nothing heavy
itself, so ``kdcache --help`` stays fast.
"""
