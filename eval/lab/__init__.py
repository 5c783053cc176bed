"""The lab: variant search and sweeps, calibration and speed benchmarks, the cost/gain trade-off."""
