"""Evaluation: generation (EM, F1, BLEU, ROUGE) and retrieval (recall@k, MRR) metrics."""
