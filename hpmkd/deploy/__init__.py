"""Deploying a run's student: its input contract, export, cost, latency, quantisation, card."""
