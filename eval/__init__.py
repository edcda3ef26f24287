"""Evaluation suite: GLUE linear probes and embedding geometry for any Hugging Face encoder.

config (every default, once) ; tasks (task specs + loading) -> embed (frozen encoder, token-state cache)
-> pooling -> probes, geometry -> stats (bootstrap CIs, paired tests) -> suite (the engine) -> report, plots;
quick: the in-training quick probe; CLIs: `python -m eval.run`, `python -m eval.compare`.
eval returns tables and writes folders; it imports no harness, Ray or MLflow: whoever runs it logs the results.
"""
