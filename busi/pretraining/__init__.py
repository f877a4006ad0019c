"""Self-supervised pretraining of the backbone on unlabelled training scans (busi-pretrain)."""
