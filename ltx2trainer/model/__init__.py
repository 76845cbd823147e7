"""LTX-2 model presets, components, LoRA and sampling helpers (torch lives here and in the pipeline only)."""
