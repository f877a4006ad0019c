"""A training run: BusiCLI, the fit, checkpoints and resuming, distillation targets, and the finish
(calibrate, test, report, store)."""
