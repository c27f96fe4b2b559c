"""What runs inside a trial: data, transforms, models, losses, optimizers, the epoch loop, metrics, checkpoints.

Nothing here imports `tune/`; only `trainable.py` talks to Ray.
"""
