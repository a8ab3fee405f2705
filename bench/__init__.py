"""Load benchmark for reactor-chat: see bench/load.py."""
