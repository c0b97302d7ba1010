"""Post-training quantization: recipes, methods, integer layers, saving and loading."""

from lmforge.quant.recipe import QuantRecipe
from lmforge.quant.workflow import quantize_loaded, quantize_to_folder

__all__ = ["QuantRecipe", "quantize_loaded", "quantize_to_folder"]
