"""Benchmarks of the recorder: what a poll and a report cost as the history grows."""
