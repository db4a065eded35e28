"""Text-to-3D benchmark: procedural scenes, a tiny latent-diffusion teacher, NeRF + SDS."""
