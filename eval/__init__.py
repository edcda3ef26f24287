"""Evaluation suite: GLUE linear probes and embedding geometry for any Hugging Face encoder.

config (every default, once; the protocols and ReferenceSwitches) ; tasks (task specs + loading) -> embed (frozen
encoder, token-state cache) -> pooling -> probes, geometry -> stats (bootstrap CIs, within-pair tests over dev
examples, seed-level tests between arms) -> suite (the engine: protocol "harness" or "reference") -> report, plots;
quick: the in-training quick probe (scored on held-out train rows); CLIs: `python -m eval.run`,
`python -m eval.compare`.
eval returns tables and writes folders; it imports no harness, Ray or MLflow: whoever runs it logs the results.
"""
