"""Benchmarks of fastconv against PyTorch, installed as fastconv.bench: `fastconv bench`
runs the CPU one (cpu.py), `fastconv bench --gpu` the GPU one (gpu.py)."""
