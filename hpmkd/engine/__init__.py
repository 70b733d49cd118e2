"""Training engine: the LightningModule, fitting, evaluation; knows methods only by contract."""
