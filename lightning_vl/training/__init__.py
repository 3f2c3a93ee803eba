"""Training: ``module.py`` is ``VLModule``, the LightningModule every command fits (any task, masks,
rewinding points), and ``adversarial.py`` VILLA's adversarial training inside its step."""
