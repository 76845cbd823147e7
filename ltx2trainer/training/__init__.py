"""LoRA training on encoded latents: sigma sampling, flow-matching steps, the loop, checkpoints."""
