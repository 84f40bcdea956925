"""Metrics: representation probes, caption metrics, generation scores."""
