"""The model: which architectures run (registry), how checkpoint tensors map onto lmforge's
fused layers (weights), the layers with their kernel choice (layers), the decoder (transformer)."""
