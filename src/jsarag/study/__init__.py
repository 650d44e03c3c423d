"""Studies: the estimator comparison and the gradient-variance diagnostic."""
