"""busi's training recipes, installed as the package `busi.configs` (see pyproject.toml): a wheel
trains exactly like a checkout. `--config NAME` picks NAME.yaml from here."""
