"""Errors, atomic outputs, strict input reading and plots: what every layer uses."""
