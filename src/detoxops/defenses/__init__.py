"""detoxops.defenses"""
