"""Operating qlane: metrics, logs, warm-up, the demo and helper commands."""
