"""policyopt.server"""
