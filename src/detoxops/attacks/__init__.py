"""detoxops.attacks"""
