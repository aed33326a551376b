"""Fault-injection and adversarial-input suite (issue 7): ``scripts/chaos.sh``."""
