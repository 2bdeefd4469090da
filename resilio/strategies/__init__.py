"""Resilience strategies: each usable alone (in a one-strategy Pipeline) or composed."""
