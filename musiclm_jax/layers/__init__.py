"""Reusable layers: attention, transformer/conformer/conv blocks, residual vector quantizer."""
