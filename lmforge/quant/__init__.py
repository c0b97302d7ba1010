"""Quantization: the number mapping (rtn) first; methods and packed layers build on it."""
