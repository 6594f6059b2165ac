"""Evaluation: features of a frozen backbone, and the protocols that score them (NN and kNN, linear probes,
cluster assignment, teacher agreement), plus the figures."""
