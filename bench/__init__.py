"""Benchmarks and the chaos run. `python -m bench` runs every benchmark; `python -m bench.chaos`
runs the chaos run. Benchmarks print tables and write JSON under bench/results/;
they never assert."""
