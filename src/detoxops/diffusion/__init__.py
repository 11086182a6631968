"""detoxops.diffusion"""
