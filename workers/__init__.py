"""policyopt.workers"""
