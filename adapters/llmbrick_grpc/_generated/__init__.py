"""Code generated from protos/llmbrick/v1 by scripts/gen_protos.py; do not edit."""
