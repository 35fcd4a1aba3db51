"""Sweeps: grids of full training runs on Ray Tune and their report."""
