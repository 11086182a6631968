"""detoxops.models"""
