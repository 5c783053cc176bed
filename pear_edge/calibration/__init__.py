"""Calibration: proxies, detection, training, recipes and the settings that drive them."""
