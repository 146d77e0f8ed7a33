//! model-soup: validate, merge and evaluate safetensors checkpoints.
