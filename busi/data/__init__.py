"""The BUSI folders, top-down: catalog (found, decoded through the cache, grouped by duplicates) →
audit → splits → dataset → module (BusiDataModule). Import from the module that does the job."""
