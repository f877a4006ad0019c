"""The BUSI folders, top-down: `catalog` finds and decodes the images (through `cache`, with
`duplicates` grouping them) and `audit` describes them; `splits` assigns them; `dataset` and `module`
(BusiDataModule) serve them to training. Import from the module that does the job."""
