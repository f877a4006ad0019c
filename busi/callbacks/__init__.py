"""Lightning callbacks busi's runs use: importable and configurable from a recipe's `trainer.callbacks`."""
