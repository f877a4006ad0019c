"""What a model's answers are worth: calibration, reports, plots, Grad-CAM localisation, cross-validation
summaries, and their copies in the loggers."""
