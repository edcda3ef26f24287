"""Evaluation suite: GLUE linear probes and embedding geometry for any Hugging Face encoder.

tasks (task specs + loading) -> embed (frozen encoder, token-state cache) -> pooling -> probes,
geometry -> stats (bootstrap CIs, paired tests) -> suite (the engine) -> report, plots;
CLIs: `python -m eval.run`, `python -m eval.compare`.
"""
