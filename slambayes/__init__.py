"""slambayes"""
