"""Benchmarks: `python -m bench` runs tlstrace against HAProxy and a direct baseline."""
