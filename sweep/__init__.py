"""Sweeps: a sweep file expands into trials, each a treadle-train run; tables and plots."""
