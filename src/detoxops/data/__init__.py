"""detoxops.data"""
