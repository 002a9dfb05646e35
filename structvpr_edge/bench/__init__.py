"""The lab, above everything (docs/architecture.md): timing rigs, the method table, kill, soak and
GPU harnesses behind the scripts of benchmarks/. Nothing in the package imports it."""
