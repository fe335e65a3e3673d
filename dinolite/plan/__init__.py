"""Plan a cluster run before submitting it (``dinolite-plan``): one training step of the real code on fake
tensors and a fake process group at the real world size, measured (memory by category, collectives,
FLOPs) and turned into a prediction for a GPU type (:mod:`dinolite.plan.estimate`)."""
