"""policyopt.cli"""
