"""Post-training quantization: recipes, methods, integer layers, saving and loading."""
