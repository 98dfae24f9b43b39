"""policyopt.workers.train"""
