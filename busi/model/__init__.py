"""The network, its LightningModule (BusiClassifier), how it answers (predict_step, fold ensembles) and
how checkpoints load."""
