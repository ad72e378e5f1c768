"""Scoring refam on benchmarks: the LightningModule behind `refam test`, records and the result store, writers, ablation tables, `refam score`."""
