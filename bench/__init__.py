"""Benchmarks of fastconv against PyTorch; `python -m bench.cpu` is the CPU one."""
