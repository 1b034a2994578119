"""Loading models: the embedded default and hub models (models), the bounded cache (model_cache), the project's
trained drafters and VocabTrim heads, the KV-cached model wrapper (causal_lm) and the linear kernels chosen
by a calibration on this machine (linear_kernels)."""
